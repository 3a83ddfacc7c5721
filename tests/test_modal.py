"""The Modal executor without Modal access: real App/Image/Volume/function objects built offline,
the dispatch loop run against in-process stand-ins for the network primitives."""

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from embedft import ModalConfig, OptunaSearch, SearchConfig

from test_search import search_config, trials

pytest.importorskip("modal", reason="the Modal executor needs embedft[modal]")

from embedft.executors import RemoteTrialError, run_once
from embedft.executors.modal import ModalExecutor

from modal_standins import LocalVolume, OfflineModal


def test_import_works_without_modal_and_the_executor_names_the_install(tmp_path):
    code = (
        "import sys; sys.modules['modal'] = None\n"
        "import embedft\n"
        "from embedft import OptunaSearch, SearchConfig, MissingDependencyError\n"
        "cfg = SearchConfig.from_dict({'executor': 'modal', 'output_dir': sys.argv[1]})\n"
        "try:\n"
        "    OptunaSearch(cfg).run()\n"
        "except MissingDependencyError as exc:\n"
        "    print('ERR', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'ERR modal is not installed. install it with: pip install "embedft[modal]"' in out.stdout
    assert not (tmp_path / "s").exists()  # refused before writing anything


def test_executor_objects_carry_the_config():
    import modal

    cfg = ModalConfig(gpu=["L4", "A10G"], timeout=900, max_containers=3, retries=2, volume="my-vol", secrets=["huggingface"], pip=["einops==0.8.1"], python_version="3.11")
    backend = ModalExecutor(cfg)
    opts = backend.function_options
    assert opts["gpu"] == ["L4", "A10G"] and opts["timeout"] == 900 and opts["max_containers"] == 3
    assert isinstance(opts["retries"], modal.Retries)
    assert list(opts["volumes"]) == ["/vol"] and isinstance(opts["volumes"]["/vol"], modal.Volume)
    assert len(opts["secrets"]) == 1 and isinstance(opts["secrets"][0], modal.Secret)
    assert isinstance(backend.app, modal.App) and backend.app.name == "embedft"
    assert isinstance(backend.trial_function, modal.Function)
    spec = backend.trial_function._spec_  # what Modal itself recorded for the function
    assert spec.gpus == ["L4", "A10G"] and list(spec.volumes) == ["/vol"] and len(spec.secrets) == 2  # the named one, and the trial env (Modal sends env as a secret)
    assert len(backend.prefetch_function._spec_.secrets) == 1  # the prefetch is online: no HF_HUB_OFFLINE
    # The image takes torch from the CUDA wheel index and pins everything else to what is installed here.
    torch_version = metadata.version("torch").split("+")[0]
    assert backend.torch == f"torch=={torch_version}" and backend.torch_index == "https://download.pytorch.org/whl/cu128"
    assert f"sentence-transformers=={metadata.version('sentence-transformers')}" in backend.requirements
    assert backend.requirements[-1] == "einops==0.8.1"
    assert all("+" not in r for r in backend.requirements)
    assert ModalExecutor(ModalConfig(retries=0)).function_options["retries"] is None
    assert backend.max_parallel == 3 and backend.trial_dir("0007") == "/vol/runs/embedft/trials/0007"
    with pytest.raises(RemoteTrialError, match="not running"):  # before start(): a clear error, not an AttributeError
        backend.wait(lambda *_: False)


def test_modal_config_errors_name_the_field():
    with pytest.raises(Exception, match="mount"):
        SearchConfig.from_dict({"modal": {"mount": "vol"}})
    with pytest.raises(Exception, match=r"modal\.max_containers"):
        SearchConfig.from_dict({"modal": {"max_containers": 0}})
    with pytest.raises(Exception, match=r"modal\.gpuu"):
        SearchConfig.from_dict({"modal": {"gpuu": "L4"}})


def remote(tmp_path, **kw):
    mount = tmp_path / "vol"
    return OfflineModal(ModalConfig(mount=str(mount), max_containers=kw.pop("max_containers", 1), poll_seconds=0.01), LocalVolume(mount), **kw)


def modal_search(tiny_model_path, tmp_path, **kw):
    return search_config(tiny_model_path, tmp_path, executor="modal", **kw)


@pytest.mark.parametrize("executor", ["inprocess", "process", "modal"])
def test_every_executor_gives_the_same_trials(tiny_model_path, tmp_path, executor):
    # The in-process run is the reference: same seeded sampler, same data, same seeds -> same results.
    ref = OptunaSearch(search_config(tiny_model_path, tmp_path / "ref", n_trials=2)).run()
    ref_rows = trials(ref.output_dir)
    if executor == "modal":
        result = OptunaSearch(modal_search(tiny_model_path, tmp_path / "x", n_trials=2), executor=remote(tmp_path)).run()
    else:
        result = OptunaSearch(search_config(tiny_model_path, tmp_path / "x", n_trials=2, executor=executor)).run()
    rows = trials(result.output_dir)
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    for a, b in zip(ref_rows, rows, strict=True):
        assert {k: v for k, v in a.items() if k.startswith("param:")} == {k: v for k, v in b.items() if k.startswith("param:")}
        assert b["value"] == pytest.approx(a["value"], abs=1e-5)
    assert result.best_test["cosine_ap"] == pytest.approx(ref.best_test["cosine_ap"], abs=1e-5)
    assert (Path(result.output_dir) / "best" / "model" / "modules.json").is_file()


def test_remote_search_uploads_once_keeps_only_the_best_on_the_volume(tiny_model_path, tmp_path):
    backend = remote(tmp_path, max_containers=2)
    cfg = modal_search(tiny_model_path, tmp_path, n_trials=3)
    result = OptunaSearch(cfg, executor=backend).run()
    assert result.n_complete == 3 and result.n_failed == 0 and result.gpu_seconds > 0
    assert max(len(c) for c in backend.in_flight) == 2  # the driver kept two calls out at once
    # The splits and the local base model went to the volume once each; trials loaded the copy.
    assert sorted(u.split("/")[1] for u in backend.volume.uploads) == ["data", "models"]
    assert all(r["state"] == "COMPLETE" for r in trials(result.output_dir))
    trial_cfg = yaml.safe_load((tmp_path / "vol" / "runs" / "embedft" / "trials" / f"{result.best_number:04d}" / "config.yaml").read_text())
    assert trial_cfg["model"]["base_model"].startswith(str(tmp_path / "vol" / "models") + "/")
    assert yaml.safe_load(result.best_config_path.read_text())["model"]["base_model"] == tiny_model_path  # exported as the user wrote it
    kept = sorted(p.name for p in (tmp_path / "vol" / "runs" / "embedft" / "trials").iterdir())
    assert kept == [f"{result.best_number:04d}"]
    assert backend.volume.commits == 3 and backend.volume.reloads == 3
    # A second search on the same data does not upload again.
    again = remote(tmp_path)
    OptunaSearch(modal_search(tiny_model_path, tmp_path, n_trials=4), executor=again).run()
    assert again.volume.uploads == []


def test_pruning_stops_a_remote_trial(tiny_model_path, tmp_path):
    import optuna

    backend = remote(tmp_path)
    result = OptunaSearch(modal_search(tiny_model_path, tmp_path, n_trials=2), executor=backend, pruner=optuna.pruners.ThresholdPruner(lower=1.01)).run()
    assert result.n_pruned == 2
    assert all(r["last_step"] == 1 and r["train_steps"] == 1 for r in trials(result.output_dir))  # of 2 steps
    assert backend.reports.puts == 2
    assert [v for k, v in backend.decisions._d.items() if k.startswith("0:1:")] == [True]


def test_remote_exceptions_and_timeouts_become_fail(tiny_model_path, tmp_path):
    backend = remote(tmp_path, fail_calls={0})
    cfg = modal_search(tiny_model_path, tmp_path, n_trials=2)
    cfg.base.model.base_model = str(tmp_path / "no-such-model")  # every trial raises inside the function
    cfg = SearchConfig.from_dict({**cfg.model_dump(mode="json"), "max_failures": 2})
    result = OptunaSearch(cfg, executor=backend).run()
    rows = trials(result.output_dir)
    assert rows[0]["state"] == "FAIL" and "remote trial failed: FunctionTimeoutError: Function timeout" in rows[0]["error"]
    assert rows[1]["state"] == "FAIL" and "ModelError" in rows[1]["error"]
    assert result.n_complete == 0 and result.n_failed == 3


def test_a_retried_preemption_loses_nothing(tiny_model_path, tmp_path):
    backend = remote(tmp_path, preempt={0})
    result = OptunaSearch(modal_search(tiny_model_path, tmp_path, n_trials=2), executor=backend).run()
    assert result.n_complete == 2 and result.n_failed == 0
    assert backend.calls[0].attempts == 2 and backend.calls[1].attempts == 1
    # The lost attempt's report was answered under its own key; the retry got fresh answers.
    assert "0:1:lost" in backend.decisions._d and sum(k.startswith("0:1:") for k in backend.decisions._d) == 2
    assert [r["number"] for r in trials(result.output_dir)] == [0, 1]


def test_pull_copies_a_folder_atomically(tmp_path):
    volume = LocalVolume(tmp_path / "vol")
    (tmp_path / "vol" / "runs" / "a" / "model").mkdir(parents=True)
    (tmp_path / "vol" / "runs" / "a" / "model" / "weights.bin").write_bytes(b"x" * 200_000)
    (tmp_path / "vol" / "runs" / "a" / "metrics.json").write_text("{}")
    volume._durable()  # committed by the container that wrote them
    backend = ModalExecutor(ModalConfig(mount="/vol"), volume=volume)
    out = backend.pull("/vol/runs/a", tmp_path / "local" / "a")
    assert (out / "model" / "weights.bin").stat().st_size == 200_000 and (out / "metrics.json").read_text() == "{}"
    with pytest.raises(RemoteTrialError, match="nothing to pull"):
        backend.pull("/vol/runs/missing", tmp_path / "local" / "b")
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == ["a"]  # no half-written folder


def test_remote_training_run(tiny_model_path, tmp_path):
    from embedft import RunConfig, TrainResult

    from test_search import base

    run = RunConfig.from_dict({**base(tiny_model_path), "output_dir": str(tmp_path / "local-run")})
    result = run_once(run, remote(tmp_path, trials_dir="runs/train"), local_output=tmp_path / "local-run")
    train = TrainResult.model_validate(result.train_result)
    assert train.before is not None and "cosine_ap" in train.after.test
    assert (tmp_path / "local-run" / "model" / "modules.json").is_file()
    assert json.loads((tmp_path / "local-run" / "metrics.json").read_text())


def test_cli_train_on_modal_and_pull(tiny_model_path, tmp_path, monkeypatch, capsys):
    import yaml
    from test_cli import write_config

    import embedft.executors.modal as em
    from embedft.cli import main

    made = []

    def offline(config, **kwargs):
        backend = OfflineModal(config.model_copy(update={"mount": str(tmp_path / "vol"), "poll_seconds": 0.01}), LocalVolume(tmp_path / "vol"), **kwargs)
        made.append(backend)
        return backend

    monkeypatch.setattr(em, "ModalExecutor", offline)
    cfg = write_config(tmp_path / "c.yaml", tiny_model_path, tmp_path / "out")
    assert main(["-q", "train", str(cfg), "--executor", "modal", "--gpu", "A10G"]) == 0
    out = capsys.readouterr().out
    assert "training on Modal GPU A10G" in out and "cosine_ap" in out and "in-trial time only" in out and "modal.com/settings/usage" in out
    assert made[0].config.gpu == "A10G"
    assert (tmp_path / "out" / "model" / "modules.json").is_file()
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["output_dir"] == str(tmp_path / "out")
    # The run folder on the volume can be pulled again by path.
    (remote,) = (tmp_path / "vol" / "runs" / "train").iterdir()
    assert main(["-q", "pull", str(remote), str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "model" / "modules.json").is_file()
    # An existing output folder is refused before any GPU is asked for (--backend: the old spelling).
    assert main(["-q", "train", str(cfg), "--backend", "modal"]) == 2
    assert len(made) == 2  # the pull made one; the refused run made none


def test_without_a_token_the_search_stops_with_one_clear_error(tiny_model_path, tmp_path, monkeypatch):
    import os

    if os.environ.get("MODAL_TOKEN_ID") or (Path.home() / ".modal.toml").exists():
        pytest.skip("a Modal token is configured here; this test must not reach a real account")
    cfg = modal_search(tiny_model_path, tmp_path, n_trials=1)
    with pytest.raises(RemoteTrialError) as err:
        OptunaSearch(cfg).run()
    assert err.value.field == "modal.volume" and "modal setup" in str(err.value)
    with pytest.raises(RemoteTrialError, match="cannot start the Modal app"):
        ModalExecutor(ModalConfig()).connect()


def test_a_search_removes_only_its_own_trial_folders_on_the_volume(tiny_model_path, tmp_path):
    from embedft.executors import make_executor

    # Each study gets its own Volume folder, stable across reruns (storage and study name).
    def folder(**kw):
        return make_executor(SearchConfig(executor="modal", output_dir=str(tmp_path / "s"), **kw)).trials_dir

    assert folder() == folder() != folder(study_name="other") and folder() != folder(storage="sqlite:///x.db")
    assert folder().as_posix().startswith("runs/embedft-") and folder().name == "trials"
    # Within one folder, the sweep drops only this study's finished trials that lost.
    backend = remote(tmp_path)
    trials_dir = tmp_path / "vol" / "runs" / "embedft" / "trials"
    for name in ("0042", "notes"):  # another search's best model; something of the user's
        (trials_dir / name / "model").mkdir(parents=True)
    result = OptunaSearch(modal_search(tiny_model_path, tmp_path, n_trials=2), executor=backend).run()
    assert sorted(p.name for p in trials_dir.iterdir()) == sorted(["0042", "notes", f"{result.best_number:04d}"])
    # A missing folder does not stop the others from going.
    (trials_dir / "0007").mkdir()
    (trials_dir / "0007" / "metrics.json").write_text("{}")
    backend.volume._durable()  # committed by the trial that wrote it
    backend.remove_trials([5, 7, 6])
    assert not (trials_dir / "0007").exists()


def test_a_remote_systemexit_or_interrupt_is_a_failed_trial(tiny_model_path, tmp_path):
    backend = remote(tmp_path, fail_calls={0: SystemExit(3), 1: KeyboardInterrupt("container stopped")})
    cfg = SearchConfig.from_dict({**modal_search(tiny_model_path, tmp_path, n_trials=2).model_dump(mode="json"), "max_failures": 1})
    result = OptunaSearch(cfg, executor=backend).run()  # the driver lives on
    rows = trials(result.output_dir)
    assert [r["state"] for r in rows] == ["FAIL", "FAIL"] and result.n_failed == 2
    assert "remote trial failed: SystemExit: 3" in rows[0]["error"] and "KeyboardInterrupt: container stopped" in rows[1]["error"]


def test_run_once_checks_the_local_folder_first_and_says_why_a_fetch_failed(tiny_model_path, tmp_path):
    from embedft import ConfigError, OutputExistsError, RunConfig
    from embedft.files import mark

    from test_search import base

    user = tmp_path / "mine"
    (user / "notes.txt").parent.mkdir()
    (user / "notes.txt").write_text("mine")
    earlier = mark(tmp_path / "earlier", "run", complete=True)
    for local, overwrite in ((user, True), (earlier, False)):  # a folder embedft did not write; a run without overwrite
        backend = remote(tmp_path, trials_dir="runs/train")
        run = RunConfig.from_dict({**base(tiny_model_path), "output_dir": str(local), "overwrite": overwrite})
        with pytest.raises((ConfigError, OutputExistsError)):
            run_once(run, backend, local_output=local)
        assert backend.calls == {} and backend.volume.uploads == []  # refused before any remote call
    assert (user / "notes.txt").read_text() == "mine" and (earlier / ".embedft-output").is_file()
    # The run completes but its folder cannot be read back: the reason reaches the caller.
    backend = remote(tmp_path, trials_dir="runs/train")

    def lost(path):
        raise ConnectionResetError("the volume went away")
        yield

    backend.volume.read_file = lost
    run = RunConfig.from_dict({**base(tiny_model_path), "output_dir": str(tmp_path / "out")})
    with pytest.raises(ConnectionResetError, match="the volume went away"):
        run_once(run, backend, local_output=tmp_path / "out")
    assert not (tmp_path / "out").exists()
