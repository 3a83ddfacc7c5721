"""What a first real Modal run meets (issue 18), against stand-ins as strict as the service (tests/modal_standins.py)."""

import contextlib
import json
import logging
import time
from importlib import metadata
from pathlib import Path

import pytest

pytest.importorskip("modal", reason="the Modal executor needs embedft[modal]")

import modal

from embedft import ConfigError, ModalConfig, OptunaSearch, RunConfig, SearchConfig
from embedft.executors import RemoteTrialError, run_once, study_key
from embedft.executors.modal import CUDA_TORCH, ModalExecutor, cuda_tags_for, gpu_words, hub_ids, hub_ignore_patterns, torch_requirement

from modal_standins import LocalVolume, OfflineModal
from test_search import base, search_config, trials


def remote(tmp_path, **kw):
    mount = tmp_path / "vol"
    options = {k: kw.pop(k) for k in ("max_containers", "retries", "timeout", "torch", "cuda", "gpu") if k in kw}
    cfg = ModalConfig(mount=str(mount), poll_seconds=0.01, **{"max_containers": 1, **options})
    return OfflineModal(cfg, LocalVolume(mount), **kw)


def modal_search(tiny_model_path, tmp_path, **kw):
    return search_config(tiny_model_path, tmp_path, executor="modal", **kw)


def cli_modal_search(tiny_model_path, tmp_path, monkeypatch, capsys):
    """``embedft -q search`` of a one-trial Modal search on the stand-in: (the config as a dict, what it printed)."""
    import yaml

    import embedft.executors.modal as em
    from embedft.cli import main

    monkeypatch.setattr(em, "ModalExecutor", lambda config, **kw: OfflineModal(config.model_copy(update={"mount": str(tmp_path / "vol"), "poll_seconds": 0.01}), LocalVolume(tmp_path / "vol"), **kw))
    cfg = modal_search(tiny_model_path, tmp_path, n_trials=1).model_dump(mode="json")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["-q", "search", str(tmp_path / "s.yaml")]) == 0
    return cfg, capsys.readouterr().out


# 1. warm containers, the hub cache on the volume, volume sync failures, one download per model
def test_a_warm_container_runs_later_trials(tiny_model_path, tmp_path):
    backend = remote(tmp_path)  # one container: every trial after the first runs on it warm
    result = OptunaSearch(modal_search(tiny_model_path, tmp_path, n_trials=3), executor=backend).run()
    assert result.n_complete == 3 and result.n_failed == 0
    assert len(backend.containers) == 1 and backend.containers[0].inputs == 3
    assert backend.volume.reloads == 3  # each trial saw the volume as committed when it started
    # Only the hub cache is on the volume: the rest of HF_HOME (files held open) stays off it.
    assert backend.container_env["HF_HUB_CACHE"] == f"{tmp_path / 'vol'}/hf/hub" and "HF_HOME" not in backend.container_env


def test_the_stand_in_fails_a_reload_while_a_file_is_open_on_the_volume(tiny_model_path, tmp_path):
    # HF_HOME on the volume (embedft before issue 18): the xet log stays open and the next reload raises.
    backend = remote(tmp_path)
    backend.container_env = {"HF_HOME": f"{tmp_path / 'vol'}/hf"}
    backend.start(_splits(tiny_model_path, tmp_path), [tiny_model_path])
    run = RunConfig.from_dict(base(tiny_model_path))
    for number in (0, 1):
        backend.submit(backend.trial(number, {}, run))
    done = _wait_all(backend, 2)
    backend.close()
    assert [r.state for r in done] == ["complete", "complete"]  # the reload failure was logged, the trial went on
    assert backend.volume.reloads == 1


def test_volume_sync_failures_are_logged_and_survived(tiny_model_path, tmp_path, monkeypatch, caplog):
    backend = remote(tmp_path)

    def refused():
        raise RuntimeError("there are open files preventing the operation")

    monkeypatch.setattr(backend.volume, "reload", refused)
    with caplog.at_level(logging.WARNING, logger="embedft.executors.modal"):
        result = OptunaSearch(modal_search(tiny_model_path, tmp_path, n_trials=2), executor=backend).run()
    assert result.n_complete == 2 and result.n_failed == 0
    assert "volume reload failed (trial 0): RuntimeError: there are open files" in caplog.text
    # A commit that fails is logged too; the trial's result stands (Modal commits at container exit).
    backend = remote(tmp_path / "b")
    monkeypatch.setattr(backend.volume, "commit", refused)
    backend.start(_splits(tiny_model_path, tmp_path / "b"), [tiny_model_path])
    backend.submit(backend.trial(0, {}, RunConfig.from_dict(base(tiny_model_path))))
    (done,) = _wait_all(backend, 1)
    backend.close()
    assert done.state == "complete" and "volume commit failed (trial 0)" in caplog.text


def test_hub_models_are_downloaded_once_before_trials_fan_out(tiny_model_path, tmp_path, monkeypatch):
    import huggingface_hub

    downloaded = []
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda name, **kw: ["config.json", "model.safetensors", "pytorch_model.bin", "onnx/model.onnx"])
    patterns = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda name, **kw: downloaded.append(name) or patterns.append(kw["ignore_patterns"]))
    backend = remote(tmp_path)
    backend.start(_splits(tiny_model_path, tmp_path), ["org/tiny-model", tiny_model_path])
    assert downloaded == ["org/tiny-model"] and backend.prefetched == [["org/tiny-model"]] and backend.calls == {}
    assert backend.volume.commits == 1  # the cache became durable before any trial
    run = RunConfig.from_dict({**base(tiny_model_path), "model": {"base_model": "org/tiny-model"}, "training": {**base(tiny_model_path)["training"], "guide_model": "org/guide"}})
    backend.trial(0, {}, run)
    backend.trial(1, {}, run)
    assert downloaded == ["org/tiny-model", "org/guide"]  # a model first named by a trial: once
    assert "pytorch_model*.bin" in patterns[0] and "onnx/*" in patterns[0]  # only what sentence-transformers loads
    backend.close()
    assert hub_ids(["org/x", "x", str(tmp_path), "/abs/path", "./rel", "a/b/c"]) == ["org/x", "x"]


def test_a_model_that_cannot_be_downloaded_stops_before_any_trial(tiny_model_path, tmp_path, monkeypatch):
    import huggingface_hub

    def missing(name, **kw):
        raise OSError(f"{name} is not a model on the hub")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", missing)
    backend = remote(tmp_path)
    with pytest.raises(RemoteTrialError, match="cannot download org/typo on Modal: OSError: org/typo is not a model") as err:
        backend.start(_splits(tiny_model_path, tmp_path), ["org/typo"])
    assert err.value.field == "model.base_model" and "modal setup" not in str(err.value)
    assert backend.calls == {}
    backend.close()


# 2. retries mean what modal.Retries means
def test_retries_repeat_only_calls_that_raised_and_default_to_none(tiny_model_path, tmp_path):
    assert ModalConfig().retries == 0 and ModalExecutor(ModalConfig()).function_options["retries"] is None
    # A trial that times out runs once by default (a retry would repeat the whole timeout).
    backend = remote(tmp_path, fail_calls={0})
    cfg = SearchConfig.from_dict({**modal_search(tiny_model_path, tmp_path, n_trials=1).model_dump(mode="json"), "max_failures": 1})
    OptunaSearch(cfg, executor=backend).run()
    assert backend.calls[0].attempts == 1
    # With retries: 1 Modal runs it again, and it still fails.
    backend = remote(tmp_path / "r", retries=1, fail_calls={0})
    cfg = SearchConfig.from_dict({**modal_search(tiny_model_path, tmp_path / "r", n_trials=1).model_dump(mode="json"), "max_failures": 1})
    result = OptunaSearch(cfg, executor=backend).run()
    assert backend.calls[0].attempts == 2 and trials(result.output_dir)[0]["state"] == "FAIL"
    # A trial that fails inside (a result, not an exception) is never retried.
    backend = remote(tmp_path / "m", retries=2)
    cfg = modal_search(tiny_model_path, tmp_path / "m", n_trials=1)
    cfg.base.model.base_model = str(tmp_path / "no-such-model")
    cfg = SearchConfig.from_dict({**cfg.model_dump(mode="json"), "max_failures": 1})
    OptunaSearch(cfg, executor=backend).run()
    assert backend.calls[0].attempts == 1
    # A preempted container is rescheduled by Modal whatever the retries say.
    backend = remote(tmp_path / "p", preempt={0})
    result = OptunaSearch(modal_search(tiny_model_path, tmp_path / "p", n_trials=1), executor=backend).run()
    assert result.n_complete == 1 and backend.calls[0].attempts == 2


# 3. Modal's own output, and the token blamed only on an authentication error
@pytest.mark.parametrize(("output", "seen"), [("quiet", {"build": False, "run": False}), ("build", {"build": True, "run": False}), ("all", {"build": True, "run": True})])
def test_modal_output_shows_as_asked(tmp_path, output, seen):
    backend = remote(tmp_path, output=output)
    backend.connect()
    backend.close()
    assert backend.output_seen == seen and backend.build_seconds is not None


def test_only_an_authentication_error_blames_the_token(tmp_path):
    backend = remote(tmp_path, build_error=modal.exception.AuthError("Token missing. Could not authenticate client."))
    with pytest.raises(RemoteTrialError) as err:
        backend.connect()
    assert "Modal refused the credentials" in str(err.value) and "modal setup" in str(err.value)
    for exc in (modal.exception.ConnectionError("Could not connect to the Modal server"), RuntimeError("Image build for im-123 failed with the exception: uv pip install exited 1")):
        backend = remote(tmp_path, run_error=exc)
        with pytest.raises(RemoteTrialError) as err:
            backend.connect()
        assert f"cannot start the Modal app: {type(exc).__name__}: {exc}" in str(err.value) and "modal setup" not in str(err.value)


@pytest.mark.parametrize(("flags", "output"), [(["-q"], "quiet"), ([], "build"), (["-v"], "all")])
def test_the_cli_shows_modal_output_by_its_verbosity(tiny_model_path, tmp_path, monkeypatch, flags, output):
    from test_cli import write_config

    import embedft.executors.modal as em
    from embedft.cli import main

    made = []

    def offline(config, **kwargs):
        made.append(kwargs.get("output"))
        raise RemoteTrialError("stop here", field="executor", expected="-", found="-")

    monkeypatch.setattr(em, "ModalExecutor", offline)
    cfg = write_config(tmp_path / "c.yaml", tiny_model_path, tmp_path / "out")
    assert main([*flags, "train", str(cfg), "--executor", "modal"]) == 2
    assert made == [output]


# 4. the image: torch from the CUDA wheel index, everything else locked to here
def test_the_image_takes_torch_from_the_cuda_index(monkeypatch):
    assert torch_requirement(ModalConfig(torch="2.6.0", cuda="12.4")) == ("torch==2.6.0", "https://download.pytorch.org/whl/cu124")
    assert torch_requirement(ModalConfig(torch="2.5.1")) == ("torch==2.5.1", "https://download.pytorch.org/whl/cu124")  # the newest tag that has it
    backend = ModalExecutor(ModalConfig(pip=["einops==0.8.1"]))
    assert backend.requirements[0] == backend.torch and not any(r.startswith("torch") for r in backend.requirements[1:])
    for name in ("huggingface-hub", "tokenizers", "transformers", "numpy"):
        assert f"{name}=={metadata.version(name)}" in backend.requirements
    real = metadata.version
    for installed, pin in (("2.5.1+cpu", "torch==2.5.1"), ("2.5.1+cu121", "torch==2.5.1"), ("2.5.1", "torch==2.5.1")):
        monkeypatch.setattr(metadata, "version", lambda n, v=installed: v if n == "torch" else real(n))
        assert torch_requirement(ModalConfig())[0] == pin
    for dev in ("2.6.0.dev20250101+cu124", "2.6.0a0+git1234abc", "2.6.0rc1"):
        monkeypatch.setattr(metadata, "version", lambda n, v=dev: v if n == "torch" else real(n))
        with pytest.raises(ConfigError) as err:
            ModalExecutor(ModalConfig()).plan()
        assert err.value.field == "modal.torch" and dev in str(err.value)
        assert ModalExecutor(ModalConfig(torch="2.5.1")).torch == "torch==2.5.1"  # the setting is the way out


def test_the_cuda_tag_must_have_the_torch_release(tiny_model_path, tmp_path):
    # The PyTorch index per CUDA tag holds only some releases: a pair it lacks is refused, naming the tags that fit.
    with pytest.raises(ConfigError) as err:
        torch_requirement(ModalConfig(torch="2.5.1", cuda="12.8"))
    assert err.value.field == "modal.cuda" and err.value.found == "12.8" and "one of 11.8, 12.1, 12.4 for torch 2.5.1" in str(err.value)
    with pytest.raises(ConfigError) as err:
        torch_requirement(ModalConfig(torch="2.8.0", cuda="12.1"))
    assert err.value.field == "modal.cuda" and "one of 12.6, 12.8, 12.9 for torch 2.8.0" in str(err.value)
    # Unset, the tag follows the torch release: the newest that has it, up to 12.8 (Modal's driver).
    for torch, tag in (("2.0.1", "118"), ("2.3.1", "121"), ("2.6.0", "126"), ("2.7.1", "128"), ("2.9.0", "128"), ("2.13.0", "128")):
        assert torch_requirement(ModalConfig(torch=torch)) == (f"torch=={torch}", f"https://download.pytorch.org/whl/cu{tag}")
    assert torch_requirement(ModalConfig(torch="2.9.0", cuda="13.0"))[1].endswith("/cu130")  # a newer tag when asked for
    with pytest.raises(ConfigError) as err:
        torch_requirement(ModalConfig(torch="1.13.1"))
    assert err.value.field == "modal.torch" and "cu118: 2.0-2.8 (excluded)" in str(err.value)
    assert cuda_tags_for("2.4.0") == ["11.8", "12.1", "12.4"] and set(cuda_tags_for("2.7.0")) <= set(CUDA_TORCH)
    # Checked before anything is uploaded or built.
    backend = remote(tmp_path, torch="2.5.1", cuda="12.8")
    with pytest.raises(ConfigError):
        backend.start(_splits(tiny_model_path, tmp_path), [tiny_model_path])
    assert backend.volume.uploads == [] and backend.output_seen == {}


def test_pull_works_whatever_torch_is_installed_here(tmp_path, monkeypatch):
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda n: "2.6.0a0+git1234abc" if n == "torch" else real(n))
    volume = LocalVolume(tmp_path / "vol")
    with volume.batch_upload() as batch:
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "config.json").write_text("{}")
        batch.put_directory(str(tmp_path / "m"), "/runs/s/trials/0003")
    backend = ModalExecutor(ModalConfig(mount=str(tmp_path / "vol")), volume=volume)  # no image, no pin: nothing needs them
    assert (backend.pull("/runs/s/trials/0003", tmp_path / "out") / "config.json").read_text() == "{}"
    with pytest.raises(ConfigError, match="development build"):
        backend.plan()  # the image needs the pin: then the dev build is refused


# 5. in-trial seconds and the GPU each trial ran on
def test_each_trial_records_the_gpu_it_ran_on(tiny_model_path, tmp_path, monkeypatch, capsys):
    import embedft.trial

    monkeypatch.setattr(embedft.trial, "accelerator", lambda: {"gpu": "NVIDIA L4", "cuda": "12.8"})
    backend = remote(tmp_path, trials_dir="runs/train")
    run = RunConfig.from_dict({**base(tiny_model_path), "output_dir": str(tmp_path / "local-run")})
    result = run_once(run, backend, local_output=tmp_path / "local-run")
    assert (result.gpu, result.cuda) == ("NVIDIA L4", "12.8") and backend.devices == {0: ("NVIDIA L4", "12.8")}
    assert backend.gpu_seconds == pytest.approx(result.seconds)  # in-trial seconds, nothing else
    # A trial that never ran records no GPU.
    backend = remote(tmp_path / "f", fail_calls={0})
    cfg = SearchConfig.from_dict({**modal_search(tiny_model_path, tmp_path / "f", n_trials=1).model_dump(mode="json"), "max_failures": 1})
    OptunaSearch(cfg, executor=backend).run()
    assert 0 not in backend.devices and backend.calls[0]._error is not None


def test_a_searchs_trials_table_names_the_gpu_each_trial_ran_on(tiny_model_path, tmp_path, monkeypatch):
    import embedft.trial

    monkeypatch.setattr(embedft.trial, "accelerator", lambda: {"gpu": "NVIDIA L4", "cuda": "12.8"})
    result = OptunaSearch(modal_search(tiny_model_path, tmp_path, n_trials=1), executor=remote(tmp_path)).run()
    (row,) = [r for r in json.loads(result.trials_json.read_text()) if r.get("state") != "REFERENCE"]
    assert (row["gpu"], row["cuda"]) == ("NVIDIA L4", "12.8")
    assert "NVIDIA L4" in result.trials_csv.read_text()


def test_a_resumed_search_finds_its_volume_folder_from_another_machine(tiny_model_path, tmp_path):
    # The key of a file storage holds the machine's name (a new Colab or Kubernetes container has
    # another): the study remembers its first folder, so a resume sweeps and fetches the same trials.
    first = remote(tmp_path, trials_dir="runs/embedft-aaaa1111/trials")
    OptunaSearch(modal_search(tiny_model_path, tmp_path, n_trials=1), executor=first).run()
    later = remote(tmp_path, trials_dir="runs/embedft-bbbb2222/trials")
    result = OptunaSearch(modal_search(tiny_model_path, tmp_path, n_trials=2), executor=later).run()
    assert later.trials_dir == first.trials_dir and result.n_complete == 2
    assert not (tmp_path / "vol" / "runs" / "embedft-bbbb2222").exists()
    # A remembered folder of another layout (a storage others can write) is not where a sweep deletes.
    study = OptunaSearch(modal_search(tiny_model_path, tmp_path, n_trials=2)).load_study()
    study.set_user_attr("trials_dir", "/")
    other = remote(tmp_path, trials_dir="runs/embedft-cccc3333/trials")
    OptunaSearch(modal_search(tiny_model_path, tmp_path, n_trials=2), executor=other).run()
    assert other.trials_dir.as_posix() == "runs/embedft-cccc3333/trials"


# 6. two searches never share a volume folder
def test_two_searches_get_their_own_volume_folders(tmp_path, monkeypatch):
    def key(where, **kw):
        (tmp_path / where).mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path / where)
        return study_key(SearchConfig(executor="modal", **kw))

    # The same config (relative output folder, relative SQLite file, default study name) from two folders.
    assert key("alice", output_dir="runs/s") != key("bob", output_dir="runs/s")
    assert key("alice", storage="sqlite:///s.db") != key("bob", storage="sqlite:///s.db")
    assert key("alice", storage="sqlite:///s.db") == key("alice", storage="sqlite:///s.db")
    # A server storage is one study from every machine (and the password is not part of it).
    assert key("alice", storage="postgresql://u:one@db/s") == key("bob", storage="postgresql://u:two@db/s") != key("bob", storage="postgresql://u:two@db/t")
    assert key("alice", storage="postgresql://u:p@db/s", study_name="a") != key("alice", storage="postgresql://u:p@db/s", study_name="b")


# 7. every local model a trial needs reaches the volume; where the final evaluation runs is said
def test_a_local_guide_model_is_uploaded(tiny_model_path, tmp_path):
    backend = remote(tmp_path)
    backend.start(_splits(tiny_model_path, tmp_path), [tiny_model_path])
    guide = tmp_path / "guide"
    import shutil

    shutil.copytree(tiny_model_path, guide)
    run = RunConfig.from_dict({**base(tiny_model_path), "training": {**base(tiny_model_path)["training"], "guide_model": str(guide)}})
    config = backend.trial(0, {}, run)
    mount = str(tmp_path / "vol")
    assert config.run.training.guide_model.startswith(f"{mount}/models/guide-") and config.run.model.base_model.startswith(f"{mount}/models/")
    backend.submit(config)
    (done,) = _wait_all(backend, 1)
    backend.close()
    assert done.state == "complete"  # it loaded both from its view of the volume


def test_the_cli_says_where_the_final_evaluation_runs(tiny_model_path, tmp_path, monkeypatch, capsys):
    _, out = cli_modal_search(tiny_model_path, tmp_path, monkeypatch, capsys)
    assert "the best model's test evaluation run on this machine" in out and "in-trial time only" in out


# 8. the stand-ins are as strict as Modal
def test_cancel_raises_input_cancellation_inside_the_running_input(tiny_model_path, tmp_path):
    backend = remote(tmp_path)
    backend.start(_splits(tiny_model_path, tmp_path), [tiny_model_path])
    run = RunConfig.from_dict({**base(tiny_model_path), "training": {**base(tiny_model_path)["training"], "epochs": 20}})
    backend.submit(backend.trial(0, {}, run))
    call = backend.calls[0]
    deadline = time.monotonic() + 60
    while backend.reports.puts == 0 and time.monotonic() < deadline:  # training: its first dev report is out
        time.sleep(0.05)
    backend.close()  # the search ends: running trials are cancelled
    call.join()
    assert isinstance(call._error, modal.exception.InputCancellation) and not isinstance(call._error, Exception)
    assert call.attempts == 1  # a cancelled input is not retried
    assert not any(p.startswith("runs/") for p in backend.volume.committed)  # nothing of it became durable


def test_a_container_sees_later_uploads_only_after_a_reload(tiny_model_path, tmp_path, monkeypatch):
    import embedft.executors.modal as em

    backend = remote(tmp_path)
    backend.start(_splits(tiny_model_path, tmp_path), [tiny_model_path])
    run = RunConfig.from_dict(base(tiny_model_path))
    backend.submit(backend.trial(0, {}, run))
    _wait_all(backend, 1)
    # New splits arrive while the container is warm; a trial that skipped reload() would not see them.
    real = em._sync
    monkeypatch.setattr(em, "_sync", lambda volume, action, what: action != "reload" and real(volume, action, what))
    other = _splits(tiny_model_path, tmp_path / "other", max_train_pairs=32)
    backend.data_dir = backend.upload_data(other, "other")
    backend.submit(backend.trial(1, {}, run))
    (done,) = _wait_all(backend, 1)
    backend.close()
    assert done.state == "fail" and "not in this container's view of the volume" in done.error
    assert backend.containers[0].inputs == 2


def test_the_driver_sees_only_committed_files(tmp_path):
    volume = LocalVolume(tmp_path / "vol")
    (tmp_path / "vol" / "runs" / "x").mkdir(parents=True)
    (tmp_path / "vol" / "runs" / "x" / "w.bin").write_bytes(b"1")
    with pytest.raises(modal.exception.NotFoundError):
        volume.listdir("/runs/x")
    with pytest.raises(RuntimeError, match="inside a container"):
        volume.commit()


def _splits(tiny_model_path, where, **data):
    from embedft.training import Trainer

    cfg = base(tiny_model_path)
    run = RunConfig.from_dict({**cfg, "data": {**cfg["data"], **data}})
    built = Trainer(run).build_data()
    return built.save(Path(where) / "splits" / built.report.fingerprint)


def _wait_all(backend, n):
    done = []
    deadline = time.monotonic() + 120
    while len(done) < n and time.monotonic() < deadline:
        done += backend.wait(lambda *_: False, timeout=1.0)
    assert len(done) == n, f"{len(done)} of {n} trials ended"
    return done


# embedft modal check
def test_modal_check_without_a_token_says_what_it_would_do(monkeypatch, capsys):
    import embedft.executors.modal as em
    from embedft.cli import main

    monkeypatch.setattr(em, "has_token", lambda: False)
    started = []
    monkeypatch.setattr(em.ModalExecutor, "connect", lambda self: started.append(self))
    assert main(["modal", "check", "--gpu", "A10G"]) == 2
    out, err = capsys.readouterr()
    assert "start one container on GPU A10G" in out and "https://download.pytorch.org/whl/cu128" in out and "retries 0" in out
    assert err.count("\n") == 1 and "embedft: error: no Modal token here, so nothing was started" in err and "modal setup" in err
    assert started == []  # nothing touched the network


def test_modal_check_reports_what_happened(tiny_model_path, tmp_path, monkeypatch, capsys):
    import embedft.executors.modal as em
    from embedft.cli import main

    made = []

    def offline(config, **kw):
        made.append(OfflineModal(config.model_copy(update={"mount": str(tmp_path / "vol"), "poll_seconds": 0.01}), LocalVolume(tmp_path / "vol"), **kw))
        return made[-1]

    monkeypatch.setattr(em, "has_token", lambda: True)
    monkeypatch.setattr(em, "ModalExecutor", offline)
    assert main(["-q", "modal", "check", "--model", tiny_model_path]) == 0
    out = capsys.readouterr().out
    assert "image ready and app started in" in out and "GPU: none (the trial saw no CUDA GPU); CUDA -; torch " in out and "bf16 -" in out
    assert "2-step trial: complete" in out and " s/step" in out and "volume embedft: data, models" in out
    backend = made[0]
    assert backend.output == "quiet" and backend.trials_dir.as_posix() == "runs/check"
    assert not (tmp_path / "vol" / "runs" / "check").exists() or not any((tmp_path / "vol" / "runs" / "check").iterdir())  # its trial folder is gone


# review of issue 18: what a first real run still met
def test_the_prefetch_downloads_only_what_sentence_transformers_loads():
    from huggingface_hub.utils import filter_repo_objects

    files = [
        "config.json", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "README.md",
        "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "1_Pooling/config.json",
        "model.safetensors", "pytorch_model.bin", "tf_model.h5", "rust_model.ot", "flax_model.msgpack",
        "onnx/model.onnx", "onnx/model_O4.onnx", "openvino/openvino_model.bin", "openvino/openvino_model.xml",
        "2_Dense/config.json", "2_Dense/pytorch_model.bin", "3_Dense/config.json", "3_Dense/model.safetensors", "3_Dense/pytorch_model.bin",
    ]  # fmt: skip
    kept = set(filter_repo_objects(files, ignore_patterns=hub_ignore_patterns(files)))  # as snapshot_download filters
    assert kept == {
        "config.json", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "README.md",
        "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "1_Pooling/config.json",
        "model.safetensors", "2_Dense/config.json", "2_Dense/pytorch_model.bin", "3_Dense/config.json", "3_Dense/model.safetensors",
    }  # fmt: skip
    # A model with PyTorch .bin weights only keeps them.
    assert set(filter_repo_objects(["config.json", "pytorch_model.bin"], ignore_patterns=hub_ignore_patterns(["config.json", "pytorch_model.bin"]))) == {"config.json", "pytorch_model.bin"}


def _hub_backend(tmp_path, monkeypatch):
    """A backend whose (fake) prefetch writes a hub model into the volume's hub cache."""
    import huggingface_hub

    backend = remote(tmp_path)
    cache = Path(backend.container_env["HF_HUB_CACHE"])

    def download(name, **kw):
        folder = cache / f"models--{name.replace('/', '--')}" / "snapshots" / "abc"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text("{}")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda name, **kw: ["config.json"])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    return backend


def test_trials_read_hub_models_offline_from_the_prefetched_cache(tiny_model_path, tmp_path, monkeypatch):
    assert ModalExecutor(ModalConfig()).function_options["env"] == {"HF_HUB_OFFLINE": "1"}
    run = RunConfig.from_dict({**base(tiny_model_path), "model": {"base_model": "org/tiny-model"}})
    backend = _hub_backend(tmp_path, monkeypatch)
    backend.start(_splits(tiny_model_path, tmp_path), ["org/tiny-model"])
    backend.submit(backend.trial(0, {}, run))
    (done,) = _wait_all(backend, 1)
    backend.close()
    assert backend.prefetched == [["org/tiny-model"]] and backend.hub_contacts == []  # no trial asked the hub
    assert "hub cache" not in (done.error or "")  # it found the model in its view (the fake model itself cannot load)
    # Online trials (embedft before the review) each ask the hub, from every container.
    backend = _hub_backend(tmp_path / "online", monkeypatch)
    backend.trial_env = {}
    backend.start(_splits(tiny_model_path, tmp_path / "online"), ["org/tiny-model"])
    backend.submit(backend.trial(0, {}, run))
    _wait_all(backend, 1)
    backend.close()
    assert backend.hub_contacts == [(0, "org/tiny-model")]
    # Offline, a model the prefetch did not put in the cache fails the trial with the reason.
    backend = _hub_backend(tmp_path / "skipped", monkeypatch)
    monkeypatch.setattr(backend, "prefetch", lambda models: None)
    backend.start(_splits(tiny_model_path, tmp_path / "skipped"), ["org/tiny-model"])
    backend.submit(backend.trial(0, {}, run))
    (done,) = _wait_all(backend, 1)
    backend.close()
    assert done.state == "fail" and "not in this container's view of the hub cache" in done.error


def test_a_cancel_inside_training_ends_the_input_and_the_container_runs_the_next(tiny_model_path, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformerTrainer

    backend = remote(tmp_path)
    backend.start(_splits(tiny_model_path, tmp_path), [tiny_model_path])
    real = SentenceTransformerTrainer.compute_loss
    steps = []

    def compute_loss(self, *args, **kwargs):  # Modal's signal arrives in the middle of a training step
        steps.append(1)
        if len(steps) == 1 and 0 in backend.calls:  # the first training step
            backend.calls[0].cancel()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformerTrainer, "compute_loss", compute_loss)
    run = RunConfig.from_dict(base(tiny_model_path))
    backend.submit(backend.trial(0, {}, run))
    call = backend.calls[0]
    call.join()
    assert isinstance(call._error, modal.exception.InputCancellation) and call.attempts == 1
    import traceback

    frames = [f.name for f in traceback.extract_tb(call._error.__traceback__)]
    assert "compute_loss" in frames or "training_step" in frames or "_inner_training_loop" in frames  # raised inside training
    (done,) = _wait_all(backend, 1)
    assert done.state == "fail" and done.error.startswith("remote trial cancelled") and done.seconds == 0.0
    assert not any(p.startswith("runs/") for p in backend.volume.committed)
    steps.append(1)  # no more cancels
    backend.submit(backend.trial(1, {}, run))  # the same warm container: nothing of the cancelled input is left in the way
    (done,) = _wait_all(backend, 1)
    backend.close()
    assert done.state == "complete" and backend.containers[0].inputs == 2 and backend.gpu_seconds == pytest.approx(done.seconds)


def test_gpu_lists_failed_calls_and_checks_are_worded_as_they_are(tiny_model_path, tmp_path, monkeypatch, capsys):
    assert gpu_words(["L4", "A10G"]) == "L4 or A10G (Modal picks)" and gpu_words(["L4", "A10G", "A100"]) == "L4, A10G or A100 (Modal picks)" and gpu_words("L4") == "L4"
    assert any("GPU L4 or A10G (Modal picks)," in line for line in ModalExecutor(ModalConfig(gpu=["L4", "A10G"])).plan())
    # A call that timed out: its queue and start time is not counted as in-trial time, and its error says what the time was.
    backend = remote(tmp_path, fail_calls={0})
    backend.start(_splits(tiny_model_path, tmp_path), [tiny_model_path])
    backend.submit(backend.trial(0, {}, RunConfig.from_dict(base(tiny_model_path))))
    time.sleep(0.3)
    (done,) = _wait_all(backend, 1)
    backend.close()
    assert backend.gpu_seconds == 0.0 and done.seconds == 0.0 and done.error.startswith("remote trial failed: FunctionTimeoutError")
    assert "after it was spawned: queue, container start and run, not in-trial time)" in done.error
    # embedft modal check, a trial that never ran: its GPU is unknown, not "none".
    import embedft.executors.modal as em
    from embedft.cli import main

    monkeypatch.setattr(em, "has_token", lambda: True)
    vol = tmp_path / "check-vol"
    monkeypatch.setattr(em, "ModalExecutor", lambda config, **kw: OfflineModal(config.model_copy(update={"mount": str(vol), "poll_seconds": 0.01}), LocalVolume(vol), fail_calls={0}, **kw))
    assert main(["-q", "modal", "check", "--model", tiny_model_path, "--gpu", "L4"]) == 1
    out = capsys.readouterr().out
    assert "GPU: unknown (the trial did not run)" in out and "GPU: none" not in out


def test_the_app_run_builds_the_image_and_output_shows_as_asked(tmp_path, monkeypatch):
    import modal.runner
    from modal._output.manager import OutputManager

    built, runs = [], []
    monkeypatch.setattr(modal.Image, "build", lambda self, app=None: built.append(app))  # a separate build: an extra ephemeral app

    @contextlib.contextmanager
    def run_app(app, *, stream_output=True, **kw):
        runs.append((app, stream_output, bool(getattr(OutputManager.get(), "is_enabled", False))))
        yield app

    monkeypatch.setattr(modal.runner, "run_app", run_app)
    monkeypatch.setattr(modal.Queue, "ephemeral", lambda *a, **k: contextlib.nullcontext(object()))
    monkeypatch.setattr(modal.Dict, "ephemeral", lambda *a, **k: contextlib.nullcontext(object()))
    for output, stream, enabled in (("quiet", True, False), ("build", False, True), ("all", True, True)):
        backend = ModalExecutor(ModalConfig(), output=output)
        backend.connect()
        backend.close()
        assert runs[-1] == (backend.app, stream, enabled) and backend.build_seconds is not None
    assert built == [] and len(runs) == 3  # one app run each, the image built within it


def test_the_cli_shows_the_volume_folder_and_upload_errors_do_not_point_at_missing_output(tiny_model_path, tmp_path, monkeypatch, capsys):
    cfg, out = cli_modal_search(tiny_model_path, tmp_path, monkeypatch, capsys)
    search = SearchConfig.from_dict(cfg)
    folder = f"/runs/{search.study_name}-{study_key(search)}/trials"
    assert f"trial folders: volume embedft:{folder} (copy one here with `embedft pull {folder}/<number:04d> DIR`)" in out
    backend = remote(tmp_path / "u")

    @contextlib.contextmanager
    def refused(force=False):
        raise modal.exception.ConnectionError("Could not connect to the Modal server")
        yield

    monkeypatch.setattr(backend.volume, "batch_upload", refused)
    with pytest.raises(RemoteTrialError) as err:
        backend.start(_splits(tiny_model_path, tmp_path / "u"), [tiny_model_path])
    assert "cannot upload to the Modal volume: ConnectionError" in str(err.value) and "output above" not in str(err.value)
