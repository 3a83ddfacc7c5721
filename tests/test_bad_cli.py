"""The command-line bad-input corpus (tests/bad_inputs/cli/*.yaml): one line, exit 2, nothing touched.

Each case runs ``embedft`` in-process in a fresh folder of its own and asserts:

- the exit status (2 unless the case says otherwise);
- exactly one ``embedft: error:`` line on stderr, naming the case's ``field`` (and ``message``);
- no traceback anywhere in the output;
- no file or folder outside the case's output folder was created, changed or removed.

Case keys (every file under ``tests/bad_inputs/cli/`` is a mapping of case name -> case):

``argv``
    the command line after ``embedft``; ``{tiny_model}``, ``{demo_data}``, ``{corpus}`` (the
    ``tests/bad_inputs`` folder) and ``{case}`` (the case's own folder) are substituted.
``files``
    ``relative path -> content`` written before the run. Content is a string (text), or
    ``{copy: NAME}`` (a file or folder of ``tests/bad_inputs``), or ``{eval: EXPR}``: a Python
    expression giving ``str`` or ``bytes`` (names: ``demo_lines``, the demo TSV's lines with its
    header first; ``tiny_model``; ``demo_data``). Strings are formatted with the placeholders above.
``dirs``
    folders to create (empty).
``marks`` / ``after_marks``
    ``relative folder -> kind``: marked as embedft's own (after ``files``, with their file list);
    then ``relative path -> content`` written into them as a user would.
``links`` / ``chmod``
    ``relative path -> target`` symlinks; ``relative path -> octal mode`` (use with ``non_root_only``).
``output``
    the folder the command may write (default ``out``); everything else must stay byte for byte.
``field`` / ``message``
    pieces the error line must contain (``field: FIELD``).
``exit``
    the expected status (default 2).
``root_only`` / ``non_root_only``
    run only as (not as) root; permission cases differ.
``secrets``
    strings (canary passwords) that must appear in no output and in no file the run wrote.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from embedft.cli import main

from conftest import DEMO_DATA

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
CLI = CORPUS / "cli"


def _load_cases() -> dict[str, dict]:
    cases: dict[str, dict] = {}
    for path in sorted(CLI.glob("*.yaml")):
        for name, case in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).items():
            assert name not in cases, f"case {name} defined twice ({path.name})"
            cases[name] = {**case, "_file": path.name}
    return cases


CASES = _load_cases()


def _snapshot(root: Path, skip: Path) -> dict[str, str]:
    seen: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if here == skip or skip in here.parents:
            dirnames[:] = []
            continue
        for d in dirnames:
            p = here / d
            if p != skip:
                seen[str(p.relative_to(root))] = "dir" if not p.is_symlink() else "link:" + os.readlink(p)
        for f in filenames:
            p = here / f
            if p.is_symlink():
                seen[str(p.relative_to(root))] = "link:" + os.readlink(p)
            else:
                seen[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return seen


def test_the_cli_corpus_is_large():
    assert len(CASES) >= 60, len(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_cli_input_is_one_line_and_touches_nothing(name, tmp_path, tiny_model_path, monkeypatch, capsys):
    import shutil

    case = CASES[name]
    if case.get("root_only") and os.geteuid() != 0:
        pytest.skip("a root-only case")
    if case.get("non_root_only") and os.geteuid() == 0:
        pytest.skip("permissions do not bind root")
    work = tmp_path / "case"
    work.mkdir()
    subs = {"tiny_model": tiny_model_path, "demo_data": str(DEMO_DATA), "corpus": str(CORPUS), "case": str(work)}
    demo_lines = DEMO_DATA.read_text(encoding="utf-8").splitlines()

    def fmt(text: str) -> str:
        for key, value in subs.items():
            text = text.replace("{" + key + "}", value)
        return text

    for rel in case.get("dirs", []):
        (work / fmt(rel)).mkdir(parents=True, exist_ok=True)
    for rel, content in (case.get("files") or {}).items():
        target = work / fmt(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict) and "copy" in content:
            src = CORPUS / content["copy"]
            shutil.copytree(src, target) if src.is_dir() else shutil.copyfile(src, target)
        elif isinstance(content, dict) and "eval" in content:
            value = eval(content["eval"], {"demo_lines": demo_lines, "tiny_model": tiny_model_path, "demo_data": str(DEMO_DATA)})  # noqa: S307 - test data
            target.write_bytes(value if isinstance(value, bytes) else fmt(value).encode("utf-8"))
        else:
            target.write_text(fmt(str(content)), encoding="utf-8")
    from embedft.files import mark

    for rel, kind in (case.get("marks") or {}).items():  # folders embedft wrote (the marker records the folder's path)
        mark(work / fmt(rel), kind, complete=True)
    for src, dst in (case.get("copy_marker") or {}).items():  # a user copying embedft's marker into their own folder
        shutil.copyfile(work / fmt(src) / ".embedft-output", work / fmt(dst) / ".embedft-output")
    for rel, content in (case.get("after_marks") or {}).items():  # files a user added afterwards
        (work / fmt(rel)).parent.mkdir(parents=True, exist_ok=True)
        (work / fmt(rel)).write_text(fmt(str(content)), encoding="utf-8")
    for rel, target in (case.get("links") or {}).items():
        (work / fmt(rel)).symlink_to(fmt(str(target)))
    for rel, mode in (case.get("chmod") or {}).items():
        (work / fmt(rel)).chmod(int(str(mode), 8))
    output = work / fmt(case.get("output", "out"))
    before = _snapshot(work, output)
    monkeypatch.chdir(work)
    monkeypatch.setenv("EMBEDFT_CACHE_DIR", str(tmp_path / "embedft-cache"))
    for key, value in (case.get("env") or {}).items():
        monkeypatch.setenv(key, fmt(str(value)))
    code = main([fmt(str(a)) for a in case["argv"]])
    out, err = capsys.readouterr()
    after = _snapshot(work, output)
    assert code == case.get("exit", 2), f"exit {code}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    assert "Traceback" not in out + err, err
    lines = [line for line in err.splitlines() if line.startswith("embedft: error:")]
    assert len(lines) == 1, err
    line = lines[0]
    if "field" in case:
        assert f"field: {case['field']}" in line, line
    if "message" in case:
        assert str(case["message"]) in line, line
    assert len(line) <= 1200, f"error line of {len(line)} characters"
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"changed outside the output folder: {changed[:10]}"
    for secret in case.get("secrets", []):
        assert secret not in out + err, f"secret {secret!r} shown:\n{out}\n{err}"
        given = {work / fmt(rel) for rel in case.get("files") or {}}  # the case's own inputs may hold it
        leaks = [p for p in work.rglob("*") if p.is_file() and not p.is_symlink() and p not in given and secret.encode() in p.read_bytes()]
        assert not leaks, f"secret {secret!r} written to {leaks}"
