import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedft import ConfigError, OptunaSearch, RunConfig, SearchConfig, SearchProgress, Trainer, TrialConfig, run_trial

import search_helpers
from conftest import DEMO_DATA


def base(tiny_model_path, **training):
    return {
        "data": {"source": str(DEMO_DATA), "cache": False, "max_train_pairs": 64},
        "model": {"base_model": tiny_model_path},
        "training": {"epochs": 1, "batch_size": 32, "learning_rate": 5e-4, "eval_steps": 1, "progress": False, **training},
    }


def search_config(tiny_model_path, tmp_path, **kw):
    cfg = {
        "base": base(tiny_model_path),
        "space": {
            "training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
            "training.loss": {"type": "categorical", "choices": ["OnlineContrastiveLoss", "CoSENTLoss"]},
            "model.dense.out_features": {"type": "categorical", "choices": [None, 8]},
        },
        "n_trials": 3,
        "sampler": {"type": "random", "seed": 1},
        "pruner": {"type": "none"},
        "output_dir": str(tmp_path / "search"),
    }
    cfg.update(kw)
    return SearchConfig.from_dict(cfg)


def fresh_database(server_url: str, name: str) -> str:
    import re

    import psycopg

    db = re.sub(r"[^a-z0-9_]", "_", name.lower())[:50]
    with psycopg.connect(server_url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db}")
        conn.execute(f"CREATE DATABASE {db}")
    return server_url.rsplit("/", 1)[0] + f"/{db}"


def trials(output_dir):
    return json.loads((Path(output_dir) / "trials.json").read_text())


def test_search_completes_and_exports_a_trainable_best_config(tiny_model_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    cfg = search_config(
        tiny_model_path,
        tmp_path,
        space={
            "training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
            "data.max_train_pairs": {"type": "int", "low": 32, "high": 64, "step": 32},
        },
    )
    result = OptunaSearch(cfg).run()
    assert result.n_complete == 3 and result.n_failed == 0
    rows = trials(cfg.output_dir)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    assert result.best_value == max(r["value"] for r in rows)
    assert (Path(cfg.output_dir) / "trials.csv").read_text().count("\n") == 4
    # The exported config trains unchanged.
    best_cfg = RunConfig.from_file(result.best_config_path)
    assert best_cfg.training.learning_rate == pytest.approx(result.best_params["training.learning_rate"])
    retrained = Trainer(best_cfg.model_copy(update={"output_dir": str(tmp_path / "retrained")})).fit()
    assert retrained.after.dev_score == pytest.approx(result.best_value, abs=1e-6)  # same seed, same data
    # Best model kept, others removed; test metrics of best vs base.
    assert SentenceTransformer(str(result.best_model_path), device="cpu") is not None
    assert sorted(p.name for p in (Path(cfg.output_dir) / "trials").iterdir()) == [f"{result.best_number:04d}"]
    assert set(result.best_test) >= {"cosine_ap", "cosine_f1"} and set(result.base_test) >= {"cosine_ap"}
    names = {p.name for p in result.plots}
    assert {"optimization_history.png", "intermediate_values.png", "learning_curve.png"} <= names
    assert all(p.stat().st_size > 1000 for p in result.plots)


def test_pruning_stops_trials_early(tiny_model_path, tmp_path):
    import optuna

    cfg = search_config(tiny_model_path, tmp_path, n_trials=2)
    result = OptunaSearch(cfg, pruner=optuna.pruners.ThresholdPruner(lower=1.01)).run()
    assert result.n_pruned == 2 and result.n_complete == 0
    rows = trials(cfg.output_dir)
    assert all(r["last_step"] == 1 for r in rows)  # stopped at the first evaluation of 2 steps
    assert not (Path(cfg.output_dir) / "trials").exists() or not any((Path(cfg.output_dir) / "trials").iterdir())


def test_median_pruner_prunes_a_worse_trial(tmp_path, tiny_model_path):
    cfg = search_config(
        tiny_model_path,
        tmp_path,
        n_trials=4,
        space={"training.learning_rate": {"type": "categorical", "choices": [0.5, 0.1]}},
        sampler={"type": "grid"},
        pruner={"type": "median", "n_startup_trials": 1},
    )
    study_search = OptunaSearch(cfg, trial_fn=search_helpers.fake_scores)
    study = study_search.load_study()
    for lr in (0.5, 0.1, 0.5, 0.1):
        study.enqueue_trial({"training.learning_rate": lr})
    result = study_search.run()
    states = {r["param:training.learning_rate"]: r["state"] for r in trials(cfg.output_dir)}
    rows = trials(cfg.output_dir)
    assert rows[0]["state"] == "COMPLETE"
    assert {r["state"] for r in rows if r["param:training.learning_rate"] == 0.1} == {"PRUNED"}
    assert result.n_complete + result.n_pruned == 4 and states


def test_failures_are_recorded_and_the_search_goes_on(tiny_model_path, tmp_path):
    cfg = search_config(tiny_model_path, tmp_path, n_trials=2)
    result = OptunaSearch(cfg, trial_fn=search_helpers.raise_on_first).run()
    rows = trials(cfg.output_dir)
    assert rows[0]["state"] == "FAIL" and "RuntimeError: boom" in rows[0]["error"]
    assert result.n_complete == 2 and result.n_failed == 1


def test_trial_errors_and_nan_loss_become_fail(tiny_model_path, tmp_path):
    run = RunConfig.from_dict({**base(tiny_model_path, loss="CoSENTLoss", loss_kwargs={"scale": 1.0e39}), "output_dir": str(tmp_path / "t")})
    from embedft import DatasetBuilder

    data_dir = DatasetBuilder(run.data).build().save(tmp_path / "data")
    nan = run_trial(TrialConfig(number=0, params={}, run=run, data_dir=str(data_dir)))
    assert nan.state == "fail" and "nan" in nan.error.lower()
    missing = run.model_copy(update={"model": run.model.model_copy(update={"base_model": str(tmp_path / "none")})})
    bad = run_trial(TrialConfig(number=1, params={}, run=missing, data_dir=str(data_dir)))
    assert bad.state == "fail" and "ModelError" in bad.error and "model.base_model" in bad.error
    assert not (tmp_path / "t").exists()


def test_progress_hears_every_trial_and_the_end(tiny_model_path, tmp_path):
    seen = []

    class Recorder(SearchProgress):
        def update(self, done, total, best, result=None):
            seen.append((done, total, best is not None, result.number if result else None))

        def close(self):
            seen.append("closed")

    OptunaSearch(search_config(tiny_model_path, tmp_path, n_trials=2, space=LR_SPACE), trial_fn=search_helpers.fake_scores, progress=Recorder()).run()
    assert seen == [(0, 2, False, None), (1, 2, True, 0), (2, 2, True, 1), "closed"]


def test_the_old_backend_setting_is_read_as_executor(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="embedft.search"):
        assert SearchConfig.from_dict({"backend": "modal"}).executor == "modal"
        assert SearchConfig.from_dict({"backend": "local", "executor": "process", "workers": 2}).executor == "process"
    assert "backend: modal is deprecated; write executor: modal" in caplog.text
    assert "backend" not in SearchConfig.from_dict({"backend": "modal"}).to_dict()
    with pytest.raises(ConfigError, match="spelled executor"):
        SearchConfig.from_dict({"backend": "gpu"})


def test_every_old_backend_config_is_still_read_as_embedft_0_1_did():
    # 0.1 ran backend: modal on Modal whatever executor said (workers did not limit it); the
    # CLI's --backend local turns executor: modal into auto, and --set backend=... does the same.
    for data, executor in (
        ({"backend": "modal", "executor": "process", "workers": 3}, "modal"),
        ({"backend": "modal", "executor": "inprocess", "workers": 3}, "modal"),
        ({"backend": "local", "executor": "modal"}, "auto"),
        ({"backend": "local", "executor": "inprocess"}, "inprocess"),
    ):
        assert SearchConfig.from_dict(data).executor == executor, data
    on_modal = SearchConfig(executor="modal", workers=3)
    assert on_modal.with_overrides(["backend=local"]).executor == "auto" and on_modal.with_overrides({"backend": "local"}).workers == 3
    assert SearchConfig(executor="process", workers=2).with_overrides(["backend=modal"]).executor == "modal"


def test_the_cli_gives_back_optuna_verbosity(tmp_path):
    import optuna

    from embedft.cli import main

    before = optuna.logging.get_verbosity()
    try:
        optuna.logging.set_verbosity(optuna.logging.DEBUG)
        assert main(["-q", "search", str(tmp_path / "missing.yaml")]) == 2
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
    finally:
        optuna.logging.set_verbosity(before)


def test_older_executor_calls_and_any_executor_shaped_object_work(tmp_path):
    from embedft.executors import InProcessExecutor, ProcessExecutor, is_executor

    class Shaped:  # not an Executor subclass: its interface is enough
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

    cfg = search_config("unused", tmp_path, n_trials=2, space=LR_SPACE)
    old = InProcessExecutor(search_helpers.fake_scores)  # the 0.1 positional form: no trials folder yet
    assert old.trials_dir is None and ProcessExecutor(2, search_helpers.fake_scores).max_parallel == 2
    with pytest.raises(ConfigError, match="no trials_dir"):  # a clear error before a search gives it a folder, not a TypeError
        old.remove_trials([0])
    assert OptunaSearch(cfg, executor=old).run().n_complete == 2 and old.trials_dir == tmp_path / "search" / "trials"
    shaped = Shaped(InProcessExecutor(search_helpers.fake_scores, trials_dir=tmp_path / "t"))
    assert is_executor(shaped) and not is_executor(object())
    cfg = search_config("unused", tmp_path / "b", n_trials=2, space=LR_SPACE)
    assert OptunaSearch(cfg, executor=shaped).run().n_complete == 2
    with pytest.raises(ConfigError, match="executor must be"):
        OptunaSearch(cfg, executor=object())


def test_the_sweep_removes_only_this_studys_finished_trials(tmp_path):
    from embedft.files import mark

    trials_dir = mark(tmp_path / "search", "search") / "trials"  # a search folder resumed
    other_run = mark(trials_dir / "0099", "run")  # another search's run left here: embedft's, but not this study's
    (trials_dir / "0042").mkdir()
    (trials_dir / "0042" / "notes.txt").write_text("mine")  # the user's
    cfg = search_config("unused", tmp_path, n_trials=3, space=LR_SPACE)
    result = OptunaSearch(cfg, trial_fn=search_helpers.marked_scores).run()
    assert sorted(p.name for p in trials_dir.iterdir()) == sorted(["0042", "0099", f"{result.best_number:04d}"])
    assert other_run.is_dir() and (trials_dir / "0042" / "notes.txt").read_text() == "mine"
    assert result.best_model_path is None  # the best trial's folder holds no model: a warning, not a crash


def test_workers_take_the_gpus_this_process_was_given(tmp_path, monkeypatch):
    import embedft.executors.local as local
    from embedft.executors import ProcessExecutor

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")  # the user gave this search GPUs 5 and 7
    monkeypatch.setattr(local, "_gpu_count", lambda: 2)  # what torch counts under that setting
    executor = ProcessExecutor(2, search_helpers.visible_gpu, trials_dir=tmp_path / "trials")
    executor.start(tmp_path)
    try:
        for number in range(3):
            executor.submit(executor.trial(number, {}, RunConfig()))
        seen = []
        while len(seen) < 3:
            seen += executor.wait(lambda *_: False, timeout=30)
    finally:
        executor.close()
    assert {r.error for r in seen} == {"5", "7"}  # not the first two GPUs of the machine


def test_one_factory_builds_the_executor_the_config_names(tmp_path):
    from embedft.executors import InProcessExecutor, ProcessExecutor, make_executor

    one = make_executor(SearchConfig(output_dir=str(tmp_path / "s")))
    assert isinstance(one, InProcessExecutor) and one.trials_dir == tmp_path / "s" / "trials"
    two = make_executor(SearchConfig(workers=2, output_dir=str(tmp_path / "s")))
    assert isinstance(two, ProcessExecutor) and two.max_parallel == 2 and not two._workers  # nothing started yet
    assert isinstance(make_executor(SearchConfig(executor="process")), ProcessExecutor)


CANARY = "canary-pw-7f3a"


@pytest.fixture(params=["journal", "sqlite", "postgresql"])
def storage_url(request, tmp_path):
    """Every storage the contract runs on: the journal default, sqlite and PostgreSQL."""
    if request.param == "journal":
        return None
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    # A fresh database per test on the session's server; trust auth ignores the password,
    # which is there to prove it never reaches a file.
    url = fresh_database(request.getfixturevalue("postgres_url"), tmp_path.name)
    return url.replace("postgres@", f"postgres:{CANARY}@")


def assert_no_canary(output_dir):
    for path in Path(output_dir).rglob("*"):
        if path.is_file() and path.suffix in {".yaml", ".json", ".csv", ".journal", ".txt"}:
            assert CANARY not in path.read_text(errors="replace"), path


def test_storages_share_one_contract(tiny_model_path, tmp_path, storage_url):
    url = storage_url
    cfg = search_config(tiny_model_path, tmp_path, n_trials=2, storage=url)
    first = OptunaSearch(cfg, trial_fn=search_helpers.fake_scores).run()
    assert first.n_complete == 2
    again = OptunaSearch(cfg.model_copy(update={"n_trials": 3}), trial_fn=search_helpers.fake_scores).run()
    assert again.n_complete == 3  # the same study continued: one more trial, not three
    numbers = [r["number"] for r in trials(cfg.output_dir)]
    assert numbers == [0, 1, 2]
    assert_no_canary(cfg.output_dir)


def test_process_workers_run_distinct_trials(tiny_model_path, tmp_path, storage_url):
    cfg = search_config(tiny_model_path, tmp_path, n_trials=4, workers=2, storage=storage_url)
    result = OptunaSearch(cfg, trial_fn=search_helpers.fake_scores).run()
    rows = trials(cfg.output_dir)
    assert result.n_complete == 4 and sorted(r["number"] for r in rows) == [0, 1, 2, 3]
    params = {tuple(sorted((k, str(v)) for k, v in r.items() if k.startswith("param:"))) for r in rows}
    assert len(params) == 4


def test_a_dying_worker_fails_only_its_trial(tiny_model_path, tmp_path):
    cfg = search_config(tiny_model_path, tmp_path, n_trials=2, workers=2)
    result = OptunaSearch(cfg, trial_fn=search_helpers.die_on_first).run()
    rows = trials(cfg.output_dir)
    assert rows[0]["state"] == "FAIL" and "died" in rows[0]["error"]
    assert result.n_complete == 2


def test_timeout_cancels_running_trials(tiny_model_path, tmp_path):
    cfg = search_config(tiny_model_path, tmp_path, n_trials=4, workers=2, timeout=3)
    t0 = time.monotonic()
    result = OptunaSearch(cfg, trial_fn=search_helpers.slow).run()
    assert time.monotonic() - t0 < 45  # two trials of a minute each were stopped, not waited for
    rows = trials(cfg.output_dir)
    assert [r["state"] for r in rows] == ["FAIL", "FAIL"] and result.n_failed == 2
    assert all("search timeout (3s)" in r["error"] for r in rows)


def test_resume_after_sigkill_loses_nothing(tiny_model_path, tmp_path, storage_url):
    cfg = search_config(tiny_model_path, tmp_path, n_trials=4, storage=storage_url)
    path = cfg.save(tmp_path / "search.yaml")
    script = "import sys; from embedft import OptunaSearch, SearchConfig; OptunaSearch(SearchConfig.from_file(sys.argv[1])).run()"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], env=env)
    csv_path = Path(cfg.output_dir) / "trials.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        if csv_path.exists() and any(r["state"] == "COMPLETE" for r in json.loads(csv_path.read_text() or "[]")):
            break
        time.sleep(0.2)
    time.sleep(1.0)  # into the next trial
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # With an RDB storage the killed driver's trial is stale once its heartbeat is grace_period old.
    resume_and_check(path, 4, **({"heartbeat_interval": 1, "grace_period": 5} if storage_url else {}))
    assert_no_canary(cfg.output_dir)


def resume_and_check(path, n_trials, **search_kwargs):
    """Rerun a killed search to the end: exactly n_trials finished, no trial twice, none left RUNNING."""
    result = OptunaSearch(SearchConfig.from_file(path), **search_kwargs).run()
    rows = trials(result.output_dir)
    numbers = [r["number"] for r in rows]
    assert len(numbers) == len(set(numbers))
    assert result.n_complete + result.n_pruned == n_trials
    assert "RUNNING" not in {r["state"] for r in rows}
    assert all("interrupted" in r["error"] for r in rows if r["state"] == "FAIL")
    return result


LR_SPACE = {"training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}


def test_a_rerun_of_another_search_on_the_same_study_is_refused(tiny_model_path, tmp_path):
    """The study records task, metric, data and space; a rerun that differs in any is refused
    before a trial runs, naming the field; n_trials, timeout, pruner and sampler may change."""
    from conftest import make_task_rows

    cfg = search_config(tiny_model_path, tmp_path, n_trials=2, space=LR_SPACE)
    OptunaSearch(cfg, trial_fn=search_helpers.fake_scores).run()
    more = cfg.model_copy(update={"n_trials": 3, "timeout": 600.0, "pruner": cfg.pruner.model_copy(update={"type": "median"}), "sampler": cfg.sampler.model_copy(update={"seed": 7})})
    again = OptunaSearch(more, trial_fn=search_helpers.fake_scores).run()
    assert again.n_complete + again.n_pruned == 3
    out = Path(cfg.output_dir)
    before = {p: p.read_bytes() for p in (out / "search.yaml", out / "trials.json", out / "best_config.yaml")}
    data_dirs = sorted((out / "data").iterdir())

    def refused(other: SearchConfig) -> str:
        with pytest.raises(ConfigError) as err:
            OptunaSearch(other, trial_fn=search_helpers.fake_scores).run()
        assert {p: p.read_bytes() for p in before} == before and sorted((out / "data").iterdir()) == data_dirs
        return str(err.value)

    space = {"training.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True}}
    msg = refused(cfg.model_copy(update={"space": SearchConfig.from_dict({"space": space}).space}))
    assert "field: space;" in msg and "training.learning_rate=float" in msg and "study_name or output_dir" in msg and "\n" not in msg
    data = cfg.base.data.model_copy(update={"max_train_pairs": 32})
    msg = refused(cfg.model_copy(update={"base": cfg.base.model_copy(update={"data": data})}))
    assert "field: data;" in msg
    training = cfg.base.training.model_copy(update={"loss": "CoSENTLoss", "learning_rate": 0.5})
    msg = refused(cfg.model_copy(update={"base": cfg.base.model_copy(update={"training": training})}))
    assert "field: base;" in msg and "training.loss='CoSENTLoss'" in msg and "training.loss='OnlineContrastiveLoss'" in msg
    model = cfg.base.model.model_copy(update={"max_seq_length": 32})
    assert "field: base;" in refused(cfg.model_copy(update={"base": cfg.base.model_copy(update={"model": model})}))
    neutral = cfg.base.training.model_copy(update={"eval_batch_size": 8})  # changes no trial: allowed
    kept = OptunaSearch(cfg.model_copy(update={"n_trials": 3, "base": cfg.base.model_copy(update={"training": neutral})}), trial_fn=search_helpers.fake_scores).run()
    assert kept.n_complete + kept.n_pruned == 3
    before.update({p: p.read_bytes() for p in before})
    source = tmp_path / "sts.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in make_task_rows("sts")))
    sts = base(tiny_model_path)
    sts.update(task="sts", data={"source": str(source), "cache": False, "splits": {"train": 0.6, "dev": 0.2, "test": 0.2}})
    msg = refused(SearchConfig.from_dict({**cfg.model_dump(mode="json"), "base": sts, "space": space}))
    assert "field: task, data, space, base;" in msg and "task sts" in msg  # base: the default loss follows the task


def test_surplus_trials_are_ranked_by_number():
    import optuna

    from embedft.search.study import is_surplus

    study = optuna.create_study()
    for _ in range(2):
        study.tell(study.ask(), 1.0)
    first, second = study.ask(), study.ask()  # two drivers asked for the third and last trial at once
    assert not is_surplus(study, first.number, 3)
    assert is_surplus(study, second.number, 3)


@pytest.mark.parametrize("when", ["while it reports", "after its last report"])
def test_a_trial_taken_over_by_another_driver_is_dropped_not_a_crash(tiny_model_path, tmp_path, when):
    """Another driver fails our running trial (its heartbeat looked stale): the driver goes on."""
    import optuna
    from optuna.trial import TrialState

    url = f"sqlite:///{tmp_path / 'study.db'}"

    def take_over_first(config, report):
        if config.number != 0:
            return search_helpers.fake_scores(config, report)
        other = optuna.storages.RDBStorage(url)  # another driver's handle on the study
        trial_id = other.get_trial_id_from_study_id_trial_number(other.get_study_id_from_name("embedft"), 0)
        if when == "after its last report":
            result = search_helpers.fake_scores(config, report)
            other.set_trial_state_values(trial_id, state=TrialState.FAIL)
            return result
        other.set_trial_state_values(trial_id, state=TrialState.FAIL)
        return search_helpers.fake_scores(config, report)

    cfg = search_config(tiny_model_path, tmp_path, n_trials=2, storage=url, space=LR_SPACE)
    result = OptunaSearch(cfg, trial_fn=take_over_first).run()
    rows = trials(cfg.output_dir)
    assert rows[0]["state"] == "FAIL" and result.n_complete == 2 and [r["number"] for r in rows] == [0, 1, 2]


@pytest.mark.parametrize(
    "space, needle",
    [
        ({"training.loss": {"type": "categorical", "choices": []}}, "at least 1"),
        ({"training.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-4}}, "must be <="),
        ({"training.loss": {"type": "categorical", "choices": ["OnlineContrastiveLoss", "TripletLoss"]}}, "does not allow"),
        ({"training.nonsense": {"type": "int", "low": 1, "high": 2}}, "does not name a config field"),
        ({"training.epochs": {"type": "float", "low": 0.5, "high": 2, "log": True, "step": 0.5}}, "step and log"),
    ],
)
def test_invalid_spaces_are_config_errors(space, needle):
    with pytest.raises(ConfigError) as err:
        SearchConfig.from_dict({"space": space})
    assert needle in str(err.value)


def test_rss_does_not_grow_across_trials(tiny_model_path, tmp_path):
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    rss = []
    cfg = search_config(tiny_model_path, tmp_path, n_trials=20, space={"training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3}}, base=base(tiny_model_path), keep_best_model=False)
    cfg.base.data.max_train_pairs = 32
    search = OptunaSearch(cfg)
    search.on_trial_end.append(lambda result, study: rss.append(proc.memory_info().rss))
    result = search.run()
    assert result.n_complete == 20
    growth_mb = (rss[-1] - rss[4]) / 2**20
    assert growth_mb < 120, f"RSS grew {growth_mb:.0f} MB over 15 trials: {[round(r / 2**20) for r in rss]}"


def search_texts(tmp_path):
    """Distinct train + dev texts of the search's saved splits."""
    from embedft.data import BuiltDataset

    (folder,) = (tmp_path / "search" / "data").iterdir()
    built = BuiltDataset.load(folder)
    return {t for name in ("train", "dev") for c in ("text1", "text2") for t in built.split(name)[c]}


@pytest.mark.parametrize("task, losses", [("retrieval", ["MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss"]), ("sts", ["CoSENTLoss", "AnglELoss"])])
def test_search_on_other_tasks(task, losses, tiny_model_path, tmp_path, monkeypatch):
    """Retrieval (its corpus travels with the saved splits) and STS with a frozen backbone,
    whose embedding cache is shared by every trial: each distinct text is encoded once."""
    from embedft.frozen import EmbeddingCache

    from conftest import make_task_rows

    monkeypatch.setenv("EMBEDFT_CACHE_DIR", str(tmp_path / "cache"))
    encoded: list[str] = []
    original = EmbeddingCache._encode

    def counting(self, texts, *args, **kwargs):
        encoded.extend(texts)
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(EmbeddingCache, "_encode", counting)
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in make_task_rows(task)))
    cfg = base(tiny_model_path)
    cfg["task"] = task
    cfg["data"] = {"source": str(source), "cache": False, "splits": {"train": 0.6, "dev": 0.2, "test": 0.2}}
    cfg["training"]["batch_size"] = 8
    if task == "sts":
        cfg["model"]["dense"] = {"out_features": 8}
        cfg["model"]["freeze_backbone"] = True
    search = OptunaSearch(
        SearchConfig.from_dict(
            {
                "base": cfg,
                "n_trials": 3,
                "sampler": {"type": "random", "seed": 0},
                "pruner": {"type": "none"},
                "space": {"training.loss": {"type": "categorical", "choices": losses}, "training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}},
                "output_dir": str(tmp_path / "search"),
            }
        )
    )
    result = search.run()
    primary = search.task.primary_metric
    assert result.n_complete == 3 and primary in result.best_test and primary in result.base_test
    assert RunConfig.from_file(result.best_config_path).task == task
    if task == "sts":  # three trials, one cache: no text was ever encoded twice, and training texts were reused
        assert len(encoded) == len(set(encoded)) and len(set(encoded)) >= len(search_texts(tmp_path))


def test_a_grid_smaller_than_n_trials_stops_cleanly_and_failing_points_are_fail(tiny_model_path, tmp_path, caplog):
    """GridSampler's study.stop() raises outside optimize: an exhausted grid ends the search, a bad point is a FAIL trial."""
    import logging

    cfg = search_config(
        tiny_model_path,
        tmp_path,
        n_trials=6,
        base={**base(tiny_model_path), "model": {"base_model": tiny_model_path, "dense": {"out_features": 8}}},
        space={
            "model.freeze_backbone": {"type": "categorical", "choices": [True, False]},
            "model.dense.out_features": {"type": "categorical", "choices": [None, 8]},  # frozen without a head: impossible
        },
        sampler={"type": "grid", "seed": 3},
    )
    with caplog.at_level(logging.INFO, logger="embedft.search"):
        result = OptunaSearch(cfg, trial_fn=search_helpers.fake_scores).run()
    rows = trials(cfg.output_dir)
    assert len(rows) == 4 and result.n_complete == 3 and result.n_failed == 1
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert failed[0]["param:model.freeze_backbone"] is True and failed[0]["param:model.dense.out_features"] is None
    assert "freeze_backbone" in failed[0]["error"]
    out = Path(cfg.output_dir)
    assert (out / "trials.csv").is_file() and (out / "best_config.yaml").is_file() and (out / "search_result.json").is_file()
    assert any("the grid has 4 point(s), all tried" in r.getMessage() for r in caplog.records)


def test_a_rerun_on_other_weights_at_the_same_model_path_is_refused(tiny_model_path, tmp_path):
    """The study and the cached base-model score know what is in a local model folder, not only its name."""
    import shutil

    model = tmp_path / "mymodel"
    shutil.copytree(tiny_model_path, model)
    cfg = search_config(str(model), tmp_path, n_trials=1, space=LR_SPACE)
    OptunaSearch(cfg, trial_fn=search_helpers.fake_scores).run()
    weights = next(p for p in model.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b"")  # the same bytes, rewritten: the file changed on disk
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(ConfigError, match=r"model\.base_model@files"):
        OptunaSearch(cfg.model_copy(update={"n_trials": 2}), trial_fn=search_helpers.fake_scores).run()


def test_the_base_model_is_a_candidate_and_the_recommendation_when_no_trial_beats_it(tiny_model_path, tmp_path, capsys):
    """Learning rates too small to move the model: no trial beats the base model on dev, and the search says so."""
    from embedft.cli import main
    from embedft.search import format_trials

    cfg = search_config(tiny_model_path, tmp_path, n_trials=2, space={"training.learning_rate": {"type": "float", "low": 1e-12, "high": 1e-11, "log": True}})
    result = OptunaSearch(cfg).run()
    assert result.n_complete == 2 and result.base_value == result.base_dev["cosine_ap"] and set(result.base_test) >= {"cosine_ap"}
    assert result.best_value <= result.base_value, (result.best_value, result.base_value)
    assert result.recommendation == "base model" and "the base model is the recommendation" in result.message
    stored = json.loads((Path(cfg.output_dir) / "search_result.json").read_text())
    assert stored["recommendation"] == "base model" and stored["base_value"] == result.base_value
    rows = trials(cfg.output_dir)
    assert [r["dev_gain"] for r in rows] == pytest.approx([r["value"] - result.base_value for r in rows])
    table = format_trials(rows, best=result.best_number, reference=result.base_value).splitlines()
    assert table[1].split()[:3] == ["base", "REFERENCE", f"{result.base_value:.4f}"] and len(table) == 4
    assert {p.name for p in result.plots} >= {"optimization_history.png"}
    # The command line says it too (the study resumes: no trial runs again, the base model is scored once).
    search_file = tmp_path / "search.yaml"
    search_file.write_text(json.dumps(cfg.to_dict()))
    assert main(["-q", "search", str(search_file)]) == 0
    out = capsys.readouterr().out
    assert "recommendation: no trial beats the base model on dev" in out and "REFERENCE" in out
    assert len(list((Path(cfg.output_dir) / "baselines").iterdir())) == 1


def test_a_trial_that_beats_the_base_model_is_the_recommendation(tiny_model_path, tmp_path):
    cfg = search_config(tiny_model_path, tmp_path, n_trials=2, space={"training.learning_rate": {"type": "categorical", "choices": [0.5, 0.9]}})
    result = OptunaSearch(cfg, trial_fn=search_helpers.fake_scores).run()  # fake dev scores of 500+: far above any real AP
    assert result.recommendation == "best trial" and result.best_value > result.base_value
    assert result.message.startswith(f"best trial #{result.best_number} beats the base model on dev by +")
