"""Guarantees under crashes, kills, faults and shared storage (see docs/reliability.md)."""

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedft import OptunaSearch, Trainer

import search_helpers
from conftest import DEMO_DATA
from test_search import base, fresh_database, resume_and_check, search_config, trials

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def test_four_workers_on_one_postgres_study(tiny_model_path, tmp_path, postgres_url):
    url = fresh_database(postgres_url, "four_workers")
    cfg = search_config(tiny_model_path, tmp_path, n_trials=8, workers=4, storage=url, space={"training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}})
    result = OptunaSearch(cfg, trial_fn=search_helpers.fake_scores).run()
    rows = trials(cfg.output_dir)
    assert sorted(r["number"] for r in rows) == list(range(8))  # none lost, none twice
    assert result.n_complete == 8 and {r["state"] for r in rows} == {"COMPLETE"}
    assert len({r["param:training.learning_rate"] for r in rows}) == 8  # no two trials sampled alike
    import optuna

    study = optuna.load_study(study_name="embedft", storage=url)
    # Every report a worker sent is in the study: 4 steps per trial.
    assert sum(len(t.intermediate_values) for t in study.trials) == 8 * 4


LR_SPACE = {"training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_drivers_share_one_study(tiny_model_path, tmp_path, backend, request):
    """Two drivers started at once on one RDB study (each with its own output folder): both finish,
    together they run exactly n_trials, no trial number twice, none failed as interrupted."""
    import threading

    import optuna
    from optuna.trial import TrialState

    url = f"sqlite:///{tmp_path / 'study.db'}" if backend == "sqlite" else fresh_database(request.getfixturevalue("postgres_url"), tmp_path.name)
    n_trials = 6
    ran: dict[str, list[int]] = {"a": [], "b": []}
    results, errors = {}, []
    start = threading.Barrier(2)

    def drive(name: str) -> None:
        try:
            cfg = search_config(tiny_model_path, tmp_path / name, n_trials=n_trials, storage=url, space=LR_SPACE)
            search = OptunaSearch(cfg, trial_fn=search_helpers.sleepy_scores, heartbeat_interval=1, grace_period=5)
            search.on_trial_end.append(lambda result, study: ran[name].append(result.number))
            start.wait()
            results[name] = search.run()
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(name,)) for name in ran]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    study = optuna.load_study(study_name="embedft", storage=url)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    done = sorted(t.number for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == n_trials and sorted(ran["a"] + ran["b"]) == done
    assert ran["a"] and ran["b"]  # both drivers ran trials
    assert TrialState.RUNNING not in {t.state for t in study.trials}
    assert not [t for t in study.trials if "interrupted" in (t.user_attrs.get("error") or "")]
    # A surplus trial (both asked for the last one at the same moment) is failed before it runs, saying so.
    assert all(t.user_attrs["error"].startswith("not run:") for t in study.trials if t.state == TrialState.FAIL)
    assert {r.n_complete for r in results.values()} == {n_trials}


def test_a_second_driver_on_a_journal_study_is_refused_with_one_line(tiny_model_path, tmp_path, capsys, request):
    """The journal has no heartbeats: one driver per output folder, a second is refused naming the first."""
    import socket
    import threading

    import optuna

    from embedft.cli import main

    # The first driver is a library call in this process: Optuna's own INFO lines ("A new study created")
    # are Optuna's default there, not the CLI's output; silence them as a library user would.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    request.addfinalizer(lambda: optuna.logging.set_verbosity(verbosity))

    cfg = search_config(tiny_model_path, tmp_path, n_trials=3, space=LR_SPACE)
    path = cfg.save(tmp_path / "search.yaml")
    first = threading.Thread(target=lambda: OptunaSearch(cfg, trial_fn=search_helpers.sleepy_scores).run())
    first.start()
    lock = Path(cfg.output_dir) / "search.lock"
    deadline = time.time() + 120
    saved_config = Path(cfg.output_dir) / "search.yaml"  # written once the first driver holds the lock and checked the study
    while time.time() < deadline and not (lock.is_file() and lock.read_text().strip() and saved_config.is_file()):
        time.sleep(0.05)
    saved = (Path(cfg.output_dir) / "search.yaml").read_bytes()
    assert main(["-q", "search", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("embedft: error: another embedft search")
    assert f"{socket.gethostname()}:{os.getpid()}" in err[0] and "output_dir" in err[0]
    first.join(timeout=120)
    assert (Path(cfg.output_dir) / "search.yaml").read_bytes() == saved  # the refused driver wrote nothing
    rows = trials(cfg.output_dir)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    # Once the first driver is done, the folder (and its lock) is free again.
    assert OptunaSearch(cfg, trial_fn=search_helpers.fake_scores).run().n_complete == 3


def test_the_same_seed_gives_the_same_trial_sequence(tiny_model_path, tmp_path):
    params = []
    for run in ("a", "b"):
        cfg = search_config(tiny_model_path, tmp_path / run, n_trials=4, sampler={"type": "tpe", "seed": 3, "n_startup_trials": 2})
        OptunaSearch(cfg, trial_fn=search_helpers.fake_scores).run()
        params.append([{k: v for k, v in r.items() if k.startswith("param:")} for r in trials(cfg.output_dir)])
    assert params[0] == params[1] and len({json.dumps(p, sort_keys=True) for p in params[0]}) == 4


def test_three_sigkills_of_the_driver_lose_nothing(tiny_model_path, tmp_path):
    cfg = search_config(tiny_model_path, tmp_path, n_trials=5)
    path = cfg.save(tmp_path / "search.yaml")
    script = "import sys; from embedft import OptunaSearch, SearchConfig; OptunaSearch(SearchConfig.from_file(sys.argv[1])).run()"
    rng = random.Random(11)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script, str(path)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(6.0, 12.0))  # imports take ~5 s; then somewhere inside a trial
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    result = resume_and_check(path, 5)
    # Only complete model folders exist: the best trial's, and no leftover temporary folders count as one.
    trial_dirs = [p for p in (Path(cfg.output_dir) / "trials").iterdir() if not p.name.startswith(".")]
    assert [p.name for p in trial_dirs] == [f"{result.best_number:04d}"]
    assert (trial_dirs[0] / "model" / "modules.json").is_file() and (trial_dirs[0] / "metrics.json").is_file()
    from sentence_transformers import SentenceTransformer

    SentenceTransformer(str(result.best_model_path), device="cpu")


def test_a_killed_train_leaves_no_model_and_reruns_cleanly(tiny_model_path, tmp_path):
    import yaml

    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**base(tiny_model_path, epochs=2000, eval_steps=None), "output_dir": str(out)}))
    proc = subprocess.Popen([sys.executable, "-m", "embedft.cli", "-q", "train", str(cfg)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".run.tmp-") for p in tmp_path.iterdir()):
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing that looks like a finished run
    cfg.write_text(yaml.safe_dump({**base(tiny_model_path), "output_dir": str(out)}))
    from embedft.cli import main

    assert main(["-q", "train", str(cfg)]) == 0
    assert (out / "model" / "modules.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "run"]  # the killed run's scratch is gone


def test_a_full_disk_fails_one_trial_and_leaves_no_folder(tiny_model_path, tmp_path):
    cfg = search_config(tiny_model_path, tmp_path, n_trials=2)
    result = OptunaSearch(cfg, trial_fn=search_helpers.disk_full_on_first).run()
    rows = trials(cfg.output_dir)
    assert rows[0]["state"] == "FAIL" and "No space left on device" in rows[0]["error"]
    assert result.n_complete == 2 and result.n_failed == 1
    names = sorted(p.name for p in (Path(cfg.output_dir) / "trials").iterdir())
    assert names == [f"{result.best_number:04d}"] and result.best_number != 0


def test_trust_remote_code_is_off_unless_asked_and_then_warned(tiny_model_path, tmp_path, caplog):
    from embedft import RunConfig

    assert RunConfig().model.trust_remote_code is False
    kwargs = dict(data=str(DEMO_DATA), base_model=tiny_model_path, max_train_pairs=32, epochs=1, batch_size=16, progress=False, cache=False)
    with caplog.at_level(logging.WARNING, logger="embedft"):
        Trainer(**kwargs, output_dir=str(tmp_path / "a")).fit(baseline=False)
    assert "trust_remote_code" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="embedft"):
        Trainer(**kwargs, trust_remote_code=True, output_dir=str(tmp_path / "b")).fit(baseline=False)
    assert "trust_remote_code is on" in caplog.text


def test_tokens_never_reach_files_or_errors(tiny_model_path, tmp_path, monkeypatch, capsys):
    canary = "hf_CANARY0123456789"
    monkeypatch.setenv("HF_TOKEN", canary)
    url = f"postgresql+psycopg://user:{canary}@127.0.0.1:1/db"  # nothing listens there
    cfg = search_config(tiny_model_path, tmp_path, n_trials=1, storage=url)
    with pytest.raises(Exception) as err:
        OptunaSearch(cfg, trial_fn=search_helpers.fake_scores).run()
    assert canary not in str(err.value)
    from embedft.cli import main

    cfg.save(tmp_path / "s.yaml")
    assert main(["-q", "search", str(tmp_path / "s.yaml")]) != 0
    captured = capsys.readouterr()
    assert canary not in captured.out + captured.err
    for path in Path(cfg.output_dir).rglob("*"):
        if path.is_file():
            assert canary not in path.read_text(errors="replace"), path
