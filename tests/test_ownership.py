"""embedft deletes only what embedft created (docs/reliability.md): every writing entry point, API and CLI.

Each entry point gets a target folder holding a user's file; the file survives byte for byte and
the call fails with one embedft error (exit 2 and one line on the command line). The command-line
cases with more variants (symlinks, inputs inside the output, the root, home, read-only places)
are in tests/bad_inputs/cli/ownership.yaml.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from embedft import BuiltDataset, DatasetBuilder, EmbedftError, OptunaSearch, Trainer
from embedft.cli import main
from embedft.files import MARKER, check_output_dir, mark, new_scratch, owner, remove_owned, replace_dir

from conftest import DEMO_DATA, make_pairs

USER_FILE = "thesis.tex"
USER_BYTES = b"\x00years of work\n" * 100


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / USER_FILE).write_bytes(USER_BYTES)
    (path / "sub").mkdir(exist_ok=True)
    (path / "sub" / "more.csv").write_text("a,b\n1,2\n")
    return path


def digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def _search_cfg(tiny: str, out: Path) -> dict:
    return {
        "base": {"data": {"source": str(DEMO_DATA), "cache": False}, "model": {"base_model": tiny}, "training": {"progress": False}},
        "space": {"training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3}},
        "n_trials": 1,
        "output_dir": str(out),
    }


def _api(entry: str, target: Path, tiny: str, tmp_path: Path) -> None:
    if entry == "train":
        Trainer(data=str(DEMO_DATA), base_model=tiny, output_dir=str(target), overwrite=True, cache=False, progress=False).fit()
    elif entry == "splits":
        built = DatasetBuilder(cache=False).build(make_pairs())
        built.save(target)
    elif entry == "dataset-cache":
        DatasetBuilder(cache_dir=str(target)).build(make_pairs())
    elif entry == "embedding-cache":
        from sentence_transformers import SentenceTransformer

        from embedft.frozen import EmbeddingCache

        EmbeddingCache(list(SentenceTransformer(tiny, device="cpu")), target)
    elif entry == "search":
        OptunaSearch(_search_cfg(tiny, target)).run()
    elif entry == "pull":
        from embedft.config import ModalConfig
        from embedft.executors.modal import ModalExecutor

        from modal_standins import LocalVolume

        volume = LocalVolume(tmp_path / "vol")
        (tmp_path / "vol" / "runs" / "a").mkdir(parents=True)
        (tmp_path / "vol" / "runs" / "a" / "metrics.json").write_text("{}")
        ModalExecutor(ModalConfig(mount="/vol"), volume=volume).pull("/vol/runs/a", target)
    else:  # pragma: no cover
        raise AssertionError(entry)


API_ENTRIES = ["train", "splits", "dataset-cache", "embedding-cache", "search", "pull"]


@pytest.mark.parametrize("entry", API_ENTRIES)
def test_api_entry_points_never_touch_a_users_folder(entry, tmp_path, tiny_model_path):
    target = user_folder(tmp_path / "mine")
    before = digest(target)
    with pytest.raises(EmbedftError, match="not an embedft output"):
        _api(entry, target, tiny_model_path, tmp_path)
    assert digest(target) == before and not (target / MARKER).exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no scratch left


def _cli(entry: str, target: Path, tiny: str, tmp_path: Path) -> list[str]:
    cfg = tmp_path / "cfg.yaml"
    if entry == "train":
        cfg.write_text(json.dumps({"data": {"source": str(DEMO_DATA), "cache": False}, "model": {"base_model": tiny}, "training": {"progress": False}}))
        return ["train", str(cfg), "--output-dir", str(target), "--overwrite"]
    if entry == "demo":
        return ["demo", "--output-dir", str(target)]
    if entry == "inspect-save":
        return ["data", "inspect", str(DEMO_DATA), "--set", "data.cache=false", "--save", str(target)]
    if entry == "cache":
        return ["data", "inspect", str(DEMO_DATA), "--set", f"data.cache_dir={target}"]
    if entry == "search":
        cfg.write_text(json.dumps(_search_cfg(tiny, target)))
        return ["search", str(cfg)]
    if entry == "pull":
        return ["pull", "/vol/runs/a", str(target)]
    if entry == "init":
        return ["init", str(target)]
    raise AssertionError(entry)  # pragma: no cover


CLI_ENTRIES = ["train", "demo", "inspect-save", "cache", "search", "pull", "init"]


@pytest.mark.parametrize("entry", CLI_ENTRIES)
def test_cli_entry_points_never_touch_a_users_folder(entry, tmp_path, tiny_model_path, capsys, monkeypatch):
    monkeypatch.setenv("EMBEDFT_CACHE_DIR", str(tmp_path / "cache"))
    target = user_folder(tmp_path / "mine")
    before = digest(target)
    code = main(_cli(entry, target, tiny_model_path, tmp_path))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("embedft: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "--overwrite" not in lines[0]  # never a hint to overwrite a folder embedft did not write
    assert digest(target) == before


def test_a_run_replaces_only_its_own_earlier_run(tmp_path, train_kwargs):
    first = Trainer(**{**train_kwargs, "max_train_pairs": 32}).fit()
    assert owner(first.output_dir) == "run"
    with pytest.raises(EmbedftError, match="overwrite"):  # an embedft run: the hint is right here
        Trainer(**train_kwargs).fit()
    second = Trainer(**{**train_kwargs, "overwrite": True}).fit()  # its own earlier run: replaced
    assert (second.model_path / "modules.json").is_file() and owner(second.output_dir) == "run"
    (second.output_dir / "my-notes.txt").write_text("added by the user")  # a file embedft did not write
    with pytest.raises(EmbedftError, match="did not write"):
        Trainer(**{**train_kwargs, "overwrite": True}).fit()
    assert (second.output_dir / "my-notes.txt").read_text() == "added by the user"
    assert [p.name for p in Path(train_kwargs["output_dir"]).parent.iterdir() if p.name.startswith(".")] == []


def test_saved_splits_replace_only_saved_splits(tmp_path):
    built = DatasetBuilder(cache=False).build(make_pairs())
    path = built.save(tmp_path / "splits")
    assert owner(path) == "splits" and BuiltDataset.load(path).report.fingerprint == built.report.fingerprint
    built.save(path)  # its own earlier copy: replaced
    mark(tmp_path / "run", "run")
    (tmp_path / "run" / "x").write_text("x")
    with pytest.raises(EmbedftError, match="holds an embedft run"):
        built.save(tmp_path / "run")


def test_remove_owned_and_replace_dir(tmp_path):
    mine = user_folder(tmp_path / "mine")
    assert remove_owned(mine) is False and (mine / USER_FILE).read_bytes() == USER_BYTES
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / MARKER).write_text("not json")
    assert owner(tmp_path / "fake") is None and remove_owned(tmp_path / "fake") is False
    os.symlink(mine, tmp_path / "link")
    assert remove_owned(tmp_path / "link") is False and mine.is_dir()
    out = tmp_path / "out"
    tmp = new_scratch(out)
    (tmp / "a.txt").write_text("new")
    replace_dir(tmp, out, kind="splits")
    assert (out / "a.txt").read_text() == "new" and owner(out) == "splits" and not tmp.exists()
    with pytest.raises(EmbedftError):
        replace_dir(new_scratch(mine), mine, kind="splits")
    assert digest(mine) == digest(user_folder(tmp_path / "again"))


def test_remove_owned_keeps_a_finished_folder_with_files_added_later(tmp_path):
    # A search sweeps its losing trial folders with remove_owned: a note the user put in one stays.
    trial = tmp_path / "trials" / "0003"
    tmp = new_scratch(trial)
    (tmp / "metrics.json").write_text("{}")
    replace_dir(tmp, trial, kind="run")
    (trial / "my-notes.txt").write_text("keep me")
    assert remove_owned(trial, kinds=("run",)) is False and (trial / "my-notes.txt").read_text() == "keep me"
    (trial / "my-notes.txt").unlink()
    assert remove_owned(trial, kinds=("run",)) is True and not trial.exists()
    scratch = new_scratch(tmp_path / "out")  # scratch folders list no entries: what is in them is embedft's
    (scratch / "partial.bin").write_bytes(b"x")
    assert remove_owned(scratch) is True and not scratch.exists()


def test_replacement_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = new_scratch(out)
    (first / "v").write_text("1")
    replace_dir(first, out, kind="splits")
    second = new_scratch(out)
    (second / "v").write_text("2")
    real = os.replace
    calls = []

    def failing(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new folder cannot be moved into place
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        replace_dir(second, out, kind="splits")
    monkeypatch.setattr(os, "replace", real)
    # The old copy was moved aside, not deleted: it can be found and nothing was lost.
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".out.old-")]
    assert len(aside) == 1 and (aside[0] / "v").read_text() == "1"


def test_stale_scratch_is_removed_only_when_marked(tmp_path):
    out = tmp_path / "run"
    stale = tmp_path / ".run.tmp-deadbeef"
    stale.mkdir()
    mark(stale, "scratch")
    users = tmp_path / ".run.tmp-mine"
    user_folder(users)
    new_scratch(out)
    assert not stale.exists() and (users / USER_FILE).read_bytes() == USER_BYTES


@pytest.mark.parametrize("where", ["/", "~", "."])
def test_protected_places_are_refused(where, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EmbedftError, match="refusing"):
        check_output_dir(where, kind="run", overwrite=True)


def test_search_resumes_in_its_own_folder_and_refuses_others(tmp_path, tiny_model_path):
    import search_helpers

    cfg = _search_cfg(tiny_model_path, tmp_path / "s")
    OptunaSearch(cfg, trial_fn=search_helpers.fake_scores).run()
    assert owner(tmp_path / "s") == "search"
    result = OptunaSearch({**cfg, "n_trials": 2}, trial_fn=search_helpers.fake_scores).run()
    assert result.n_complete == 2


def test_dotdot_after_a_symlink_is_resolved_like_the_os_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    (out / "model" / "pool").mkdir(parents=True)
    mark(out, "run", complete=True)
    (out / "model" / "pairs.tsv").write_text("data")
    os.symlink(out / "model" / "pool", tmp_path / "L")
    # L/../pairs.tsv is out/model/pairs.tsv for the OS (the symlink first, then ".."), not ./pairs.tsv
    with pytest.raises(EmbedftError, match="input"):
        check_output_dir(out, kind="run", overwrite=True, inputs=[("data.source", "L/../pairs.tsv")])


def test_a_file_added_deep_inside_a_finished_run_blocks_its_replacement(tmp_path):
    out = tmp_path / "run"
    tmp = new_scratch(out)
    (tmp / "model" / "1_Pooling").mkdir(parents=True)
    (tmp / "model" / "1_Pooling" / "config.json").write_text("{}")
    replace_dir(tmp, out, kind="run")
    check_output_dir(out, kind="run", overwrite=True)  # as embedft left it: may be replaced
    (out / "model" / "1_Pooling" / "mine.txt").write_text("user")
    with pytest.raises(EmbedftError, match="did not write") as info:
        check_output_dir(out, kind="run", overwrite=True)
    assert "model/1_Pooling/mine.txt" in str(info.value)


def test_a_live_scratch_folder_is_left_alone_and_names_are_not_globs(tmp_path):
    import subprocess
    import sys

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        busy = tmp_path / ".r1.tmp-0000aaaa"
        mark(busy, "scratch")
        data = json.loads((busy / MARKER).read_text())
        (busy / MARKER).write_text(json.dumps({**data, "pid": live.pid}))  # another process is still writing it
        dead = tmp_path / ".r1.tmp-0000bbbb"
        mark(dead, "scratch")
        data = json.loads((dead / MARKER).read_text())
        (dead / MARKER).write_text(json.dumps({**data, "pid": 2**22 + 12345}))  # no such process
        new_scratch(tmp_path / "r?")  # "r?" is a name, not a pattern: r1's scratch is not its business
        assert busy.is_dir() and dead.is_dir()
        new_scratch(tmp_path / "r1")
        assert busy.is_dir() and not dead.exists()
    finally:
        live.kill()


@pytest.mark.parametrize("length", [300, 250])
def test_over_long_names_are_one_line_before_anything_loads(length, tmp_path):
    with pytest.raises(EmbedftError, match="too long") as info:
        check_output_dir(tmp_path / ("a" * length), kind="run")
    assert info.value.field == "output_dir"


def test_a_copied_marker_does_not_make_a_folder_embedfts(tmp_path):
    mark(tmp_path / "real", "search")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "trials.csv").write_text("mine")
    import shutil

    shutil.copyfile(tmp_path / "real" / MARKER, tmp_path / "mine" / MARKER)
    assert owner(tmp_path / "real") == "search" and owner(tmp_path / "mine") is None
    with pytest.raises(EmbedftError, match="not an embedft output"):
        check_output_dir(tmp_path / "mine", kind="search", resume=True)


def test_a_symlinked_output_is_refused_before_any_work(tmp_path):
    (tmp_path / "target").mkdir()
    os.symlink(tmp_path / "target", tmp_path / "run")
    with pytest.raises(EmbedftError, match="symbolic link"):
        check_output_dir(tmp_path / "run", kind="run")
    assert (tmp_path / "run").is_symlink()


def test_search_files_are_replaced_never_rewritten_in_place(tmp_path, tiny_model_path):
    """A hard-linked backup of a search folder (cp -al) keeps its content when the search goes on."""
    import search_helpers

    cfg = _search_cfg(tiny_model_path, tmp_path / "s")
    OptunaSearch(cfg, trial_fn=search_helpers.fake_scores).run()
    backup = tmp_path / "backup"
    backup.mkdir()
    names = [p for p in (tmp_path / "s").rglob("*") if p.is_file() and p.name not in ("study.journal", "search.lock")]
    for p in names:
        target = backup / p.relative_to(tmp_path / "s")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(p, target)
    before = digest(backup)
    OptunaSearch({**cfg, "n_trials": 2}, trial_fn=search_helpers.fake_scores).run()
    assert digest(backup) == before
