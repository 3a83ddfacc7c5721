"""The search driver: ask -> resolve -> execute -> tell, resumable.

The driver owns the study (:mod:`embedft.search.study`) and asks one factory,
:func:`embedft.executors.make_executor`, for the executor its trials run on; it knows nothing
of processes or Modal.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from embedft.errors import ConfigError, EmbedftError
from embedft.executors import Executor, is_executor, make_executor
from embedft.files import atomic_write_text, check_output_dir, mark, owner
from embedft.redact import mask_values
from embedft.search.config import SearchConfig, resolve_params
from embedft.search.plots import draw_plots
from embedft.search.report import SearchResult, base_reference, evaluate_on_test, write_pareto, write_tables
from embedft.search.study import (
    PARETO_RULE,
    Heartbeat,
    StudyStorage,
    best_of,
    check_fingerprint,
    driver_id,
    grid_exhausted,
    is_surplus,
    make_pruner,
    make_sampler,
    pareto_front,
    study_fingerprint,
)
from embedft.search.warm import enqueue_warm_start
from embedft.tasks import get_task
from embedft.trial import TrialResult

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["OptunaSearch", "SearchProgress"]

logger = logging.getLogger(__name__)


class SearchProgress:
    """What the driver tells as trials end; this default logs each finished trial.

    Subclass it to show progress: the CLI's draws one tqdm bar, the best value in its postfix.
    """

    def update(self, done: int, total: int, best: tuple[int, float] | None, result: TrialResult | None = None) -> None:
        """``done`` of ``total`` trials are complete or pruned; ``best`` is ``(number, value)``; ``result`` just ended."""
        if result is not None:
            logger.info("trial %d %s value=%s (%.1fs)", result.number, result.state, result.value, result.seconds)

    def close(self) -> None:
        """The search loop ended."""


class OptunaSearch:
    """Run a :class:`SearchConfig`: ask -> resolve -> execute -> tell, resumable.

    Args:
        config: the search config (or a dict of one).
        executor: an :class:`~embedft.executors.Executor` (or any object with its interface); by default
            the one ``config.executor`` names. One without a ``trials_dir`` gets ``OUTPUT_DIR/trials``.
        sampler: an Optuna sampler that replaces the configured one.
        pruner: an Optuna pruner that replaces the configured one.
        trial_fn: the trial function local executors run (``run_trial``).
        progress: a :class:`SearchProgress` told of every finished trial (default: log lines).
        heartbeat_interval: with an RDB storage (sqlite, PostgreSQL), seconds between the heartbeats
            this driver records for its running trials.
        grace_period: with an RDB storage, seconds without a heartbeat after which any driver on the
            study fails a running trial as interrupted and queues it again (its driver died).

    ``on_trial_end`` holds callbacks ``(result, study)`` called after each trial is told. Several
    drivers may share one study in an RDB storage, each with its own ``output_dir``: together they
    run ``n_trials`` trials. An output folder (and so a journal study) has one driver at a time.
    """

    def __init__(
        self,
        config: SearchConfig | dict[str, Any],
        *,
        executor: Executor | None = None,
        sampler: optuna.samplers.BaseSampler | None = None,
        pruner: optuna.pruners.BasePruner | None = None,
        trial_fn: Callable | None = None,
        progress: SearchProgress | None = None,
        heartbeat_interval: int = 10,
        grace_period: int = 60,
    ) -> None:
        import optuna

        self.config = config if isinstance(config, SearchConfig) else SearchConfig.from_dict(config)
        for name, value, ok, expected in (
            ("sampler", sampler, isinstance(sampler, optuna.samplers.BaseSampler), "an optuna sampler"),
            ("pruner", pruner, isinstance(pruner, optuna.pruners.BasePruner), "an optuna pruner"),
            ("executor", executor, is_executor(executor), "an embedft executor (the interface of embedft.executors.Executor)"),
            ("trial_fn", trial_fn, callable(trial_fn), "a function TrialConfig -> TrialResult"),
            ("progress", progress, isinstance(progress, SearchProgress), "an embedft.search.SearchProgress"),
        ):
            if value is not None and not ok:
                raise ConfigError(f"{name} must be {expected}", field=name, expected=f"{expected} (or None)", found=type(value).__name__)
        for name, seconds in (("heartbeat_interval", heartbeat_interval), ("grace_period", grace_period)):
            if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
                raise ConfigError(f"{name} must be a whole number of seconds", field=name, expected="an int > 0", found=repr(seconds))
        if grace_period <= heartbeat_interval:
            raise ConfigError("grace_period must be longer than heartbeat_interval", field="grace_period", expected=f"> {heartbeat_interval}", found=grace_period)
        self.task = get_task(self.config.base.task)
        self.output_dir = Path(self.config.output_dir).expanduser()
        self.study_storage = StudyStorage(self.config, self.output_dir, heartbeat_interval, grace_period)
        self.progress = progress or SearchProgress()
        self.on_trial_end: list[Callable[[TrialResult, optuna.Study], None]] = []
        self._executor, self._sampler, self._pruner, self._trial_fn = executor, sampler, pruner, trial_fn
        if executor is not None and getattr(executor, "trials_dir", "") is None:  # built without one (the older InProcessExecutor(fn) form)
            executor.trials_dir = self.output_dir / "trials"

    def storage_url(self) -> str:
        """The study's storage: the configured URL, or ``journal:OUTPUT_DIR/study.journal``."""
        return self.config.storage or f"journal:{self.output_dir / 'study.journal'}"

    def inputs(self) -> list[tuple[str, str | None]]:
        """The local paths the search reads (``(field, path)``); the output folder may never hold one."""
        base = self.config.base
        found = [("base.data.source", base.data.source), ("base.model.base_model", base.model.base_model), ("base.training.guide_model", base.training.guide_model)]
        found += [("space.model.base_model", m) for m in self.config.base_models()[1:]]
        return [(field, value) for field, value in found if value]

    def prepare_output(self) -> Path:
        """Check the output folder (new, empty, or this kind of embedft search folder, which resumes) and mark it."""
        check_output_dir(self.output_dir, kind="search", resume=True, inputs=self.inputs())
        if owner(self.output_dir) != "search":
            mark(self.output_dir, "search")
        return self.output_dir

    def load_study(self) -> optuna.Study:
        """Create or reopen the study in the configured storage."""
        self.prepare_output()  # the journal lives there: checked and marked before anything is written
        import optuna

        sampler = self._sampler or make_sampler(self.config.sampler, self.config.space)
        direction: Literal["minimize", "maximize"] = "maximize" if self.task.greater_is_better else "minimize"
        if self.config.second_objective is not None:  # Optuna prunes single-objective studies only
            if self._pruner is not None or self.config.pruner.type != "none":
                logger.warning("the pruner (%s) is not used: a search with a second objective is not pruned (Optuna prunes single-objective studies only)", self.config.pruner.type)
            return self.study_storage.open(sampler, self._pruner or optuna.pruners.NopPruner(), [direction, "minimize"])
        return self.study_storage.open(sampler, self._pruner or make_pruner(self.config.pruner), direction)

    def metric_names(self) -> list[str]:
        """The study's objectives as the dashboard shows them: ``dev cosine_ap`` (and the second objective)."""
        second = {"dimension": "embedding dimension", "latency": "encode ms per text"}
        return [f"dev {self.task.primary_metric}", *([second[self.config.second_objective]] if self.config.second_objective else [])]

    def best(self, study: optuna.Study) -> tuple[int, float] | None:
        """``(number, dev value)`` of the best trial (with a second objective, the recommended one of the Pareto front)."""
        return best_of(study, self.config.pareto_tolerance)

    def study_fingerprint(self, data_fingerprint: str, dev_rows: int | None = None) -> dict[str, Any]:
        """What defines this search's study (see :func:`embedft.search.study.study_fingerprint`)."""
        return study_fingerprint(self.config, self.task, data_fingerprint, dev_rows)

    def run(self) -> SearchResult:
        """Run (or resume) the search until the study holds ``n_trials`` completed or pruned trials.

        Several drivers may share a study in an RDB storage (each with its own ``output_dir``):
        together they end with exactly ``n_trials``. A rerun must describe the same study (task,
        data, search space; see :meth:`study_fingerprint`) or it is refused before any trial runs.
        """
        executor = self._executor or make_executor(self.config, trial_fn=self._trial_fn)  # a missing extra fails here, before any write
        self.prepare_output()
        with self.study_storage.lock():
            return self._run(executor)

    def _run(self, executor: Executor) -> SearchResult:
        from embedft.data import DatasetBuilder

        cfg, out = self.config, self.output_dir
        self._removed: set[int] = set()  # trials whose folders this run has removed
        data_cfg = cfg.base.data.model_copy(update={"max_train_pairs": None}) if "data.max_train_pairs" in cfg.space else cfg.base.data  # trials cut their own
        built = DatasetBuilder(data_cfg, task=self.task.name).build()  # cheap (no model): its fingerprint is part of the study's
        study = self.load_study()
        check_fingerprint(study, self.study_fingerprint(built.report.fingerprint, len(built.dev)), f"{cfg.study_name!r} in {self.study_storage.display_url()}")
        if study.metric_names != self.metric_names():
            with warnings.catch_warnings():  # experimental in Optuna since 3.2
                warnings.simplefilter("ignore")
                study.set_metric_names(self.metric_names())  # optuna-dashboard shows them instead of "Objective 0"
        if cfg.warm_start and not study.user_attrs.get("embedft_warm_start"):  # once per study: a resumed search does not queue them again
            enqueue_warm_start(study, cfg)
        if getattr(executor, "remote", False) and executor.trials_dir is not None:  # the first run's folder stands, whatever this machine is called now
            stored = study.user_attrs.get("trials_dir")
            if isinstance(stored, str) and _same_scheme(Path(stored), executor.trials_dir):
                executor.trials_dir = Path(stored)
            else:
                study.set_user_attr("trials_dir", executor.trials_dir.as_posix())
        cfg.save(out / "search.yaml", redact=True)
        self.study_storage.recover(study)
        path = out / "data" / built.report.fingerprint  # built once per search; trials load it by fingerprint
        if not (path / "report.json").is_file():
            built.save(path)
        logger.info("search data\n%s", built.report.summary())
        try:
            executor.start(path, cfg.base_models())
            self._loop(study, executor)
        finally:
            executor.close()
            self.progress.close()
        if self._finished(study) < cfg.n_trials and grid_exhausted(study):
            points = math.prod(len(p.grid()) for p in cfg.space.values())
            logger.info("the grid has %d point(s), all tried: stopping with %d of n_trials=%d trials complete or pruned", points, self._finished(study), cfg.n_trials)
        if executor.gpu_seconds is not None:
            logger.info("in-trial seconds on remote GPUs in this run: %.0f (the bill, with cold starts and idle time, is on Modal's usage page)", executor.gpu_seconds)
        return self._finish(study, executor, path)

    @staticmethod
    def _finished(study: optuna.Study, *extra: optuna.trial.TrialState) -> int:
        from optuna.trial import TrialState

        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, *extra)))

    def _loop(self, study: optuna.Study, executor: Executor) -> None:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        cfg, store = self.config, self.study_storage
        running: dict[int, optuna.trial.Trial] = {}
        reported: dict[int, set[int]] = {}
        started, failures = time.monotonic(), 0
        max_failures = cfg.max_failures if cfg.max_failures is not None else max(cfg.n_trials, 3)

        def on_report(number: int, step: int, value: float) -> bool:
            trial = running.get(number)
            if trial is None or cfg.second_objective is not None:  # a multi-objective study takes no intermediate values
                return False
            try:
                if step not in reported.setdefault(number, set()):  # a retried remote attempt reports its steps again: the first value stands
                    reported[number].add(step)
                    trial.report(value, step)
                return bool(trial.should_prune())
            except UpdateFinishedTrialError:  # another driver failed it as stale: stop it, its copy runs elsewhere
                return True

        heartbeat = store.heartbeat()
        last_check = time.monotonic()
        trial_base = cfg.trial_base()
        self.progress.update(self._finished(study), cfg.n_trials, self.best(study))
        try:
            while True:
                timed_out = cfg.timeout is not None and time.monotonic() - started >= cfg.timeout
                if failures > max_failures or (timed_out and running):  # record the trials still running as failed; closing the executor stops them
                    why = f"the search stopped after {failures} failed trials" if failures > max_failures else f"the search timeout ({cfg.timeout:g}s) was reached"
                    logger.warning("stopping: %s", why)
                    for number, t in running.items():
                        with contextlib.suppress(UpdateFinishedTrialError):  # another driver failed it as stale already
                            t.set_user_attr("error", f"cancelled: {why}")
                            study.tell(t, state=TrialState.FAIL, skip_if_finished=True)
                            logger.warning("trial %d cancelled: %s", number, why)
                    break
                if heartbeat is not None and time.monotonic() - last_check >= store.heartbeat_interval:
                    store.recover(study)  # trials of drivers that died meanwhile
                    last_check = time.monotonic()
                # Every driver's running trials count: together the drivers ask for n_trials.
                while not timed_out and len(running) < executor.max_parallel and self._finished(study, TrialState.RUNNING) < cfg.n_trials and not grid_exhausted(study):
                    trial = self._ask(study, heartbeat)
                    if trial is None:
                        continue
                    try:
                        params = {k: p.suggest(trial, k) for k, p in cfg.space.items()}
                        config = executor.trial(trial.number, params, resolve_params(trial_base, params))
                        config = config.model_copy(
                            update={
                                "reuse_base_model": cfg.reuse_base_model,
                                "dev_subsample": cfg.dev_subsample,
                                "dev_subsample_seed": cfg.base.data.seed,
                                "second_objective": cfg.second_objective,
                            }
                        )
                    except EmbedftError as exc:  # an impossible combination of parameters
                        trial.set_user_attr("error", str(exc))
                        study.tell(trial, state=TrialState.FAIL)
                        failures += 1
                        if failures > max_failures:
                            break
                        continue
                    running[trial.number] = trial
                    executor.submit(config)
                if not running:
                    if timed_out or failures > max_failures or self._finished(study) >= cfg.n_trials or grid_exhausted(study):
                        break
                    if heartbeat is None:  # the lock is ours and none of ours runs: a RUNNING trial is a dead driver's
                        store.recover(study)
                    else:
                        time.sleep(1.0)  # the other drivers' last trials run: wait, one may fail and need a rerun
                    continue
                for result in executor.wait(on_report, timeout=1.0):
                    told = self._tell(study, running.pop(result.number), result)
                    if heartbeat is not None:
                        heartbeat.discard(result.number)
                    self._sweep(study, executor)
                    if told:
                        failures += result.state == "fail"
                        self.progress.update(self._finished(study), cfg.n_trials, self.best(study), result)
                        for callback in self.on_trial_end:
                            callback(result, study)
                write_tables(study, self.output_dir)
        finally:
            if heartbeat is not None:
                heartbeat.close()

    def _ask(self, study: optuna.Study, heartbeat: Heartbeat | None) -> optuna.trial.Trial | None:
        """A new trial, or None when it is one too many (told FAIL: drivers asked for the last trial at once)."""
        from optuna.trial import TrialState

        with warnings.catch_warnings():  # Optuna warns that ask/tell records no heartbeat: Heartbeat does
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
            trial = study.ask()
        if heartbeat is not None:
            heartbeat.add(trial.number, self.study_storage.trial_id(trial.number))
            trial.set_user_attr("heartbeat", trial.number)  # this trial's heartbeats are recorded
        trial.set_user_attr("driver", driver_id())
        if not is_surplus(study, trial.number, self.config.n_trials):
            return trial
        trial.set_user_attr("error", f"not run: the drivers of this study asked for more than n_trials ({self.config.n_trials}) at the same moment")
        study.tell(trial, state=TrialState.FAIL)
        if heartbeat is not None:
            heartbeat.discard(trial.number)
        return None

    def _sweep(self, study: optuna.Study, executor: Executor) -> None:
        """Remove the folders of this study's finished trials but the best one (with ``keep_best_model``).

        The executor is told which trials to drop, never which to keep: a folder of another study's
        trial (or anything else in its trials folder) is never touched. Each trial once per run.
        """
        from optuna.trial import TrialState

        keep: set[int] = set()
        if self.config.keep_best_model and self.config.second_objective is not None:  # the recommended trial is one of the front's, and may change
            keep = {t.number for t in pareto_front(study)}
        elif self.config.keep_best_model and (best := self.best(study)) is not None:
            keep = {best[0]}
        finished = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))}
        drop = sorted(finished - self._removed - keep)
        if drop:
            executor.remove_trials(drop)
            self._removed.update(drop)

    def _tell(self, study: optuna.Study, trial: optuna.trial.Trial, result: TrialResult) -> bool:
        """Tell the study how a trial ended; False (result dropped) when another driver finished it first.

        A driver whose heartbeats stopped for ``grace_period`` (a stalled machine, a lost
        connection) finds its trial failed as stale by another driver and queued again: that
        copy stands. Never an ``UpdateFinishedTrialError``.
        """
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        store = self.study_storage
        if store.still_running(result.number):
            try:
                for key in ("seconds", "load_seconds", "tokenise_seconds", "train_seconds", "eval_seconds"):
                    trial.set_user_attr(key, round(getattr(result, key), 3))
                trial.set_user_attr("train_steps", result.train_steps)
                trial.set_user_attr("train_pairs", result.train_pairs)
                for key in ("gpu", "cuda"):  # the accelerator the trial ran on, read inside it (a GPU list lets Modal pick)
                    if getattr(result, key):
                        trial.set_user_attr(key, getattr(result, key))
                if result.report_split:  # what the pruner saw; a completed trial's value is on all of dev
                    trial.set_user_attr("intermediate_on", result.report_split)
                second = self.config.second_objective
                complete = result.state == "complete" and result.value is not None and math.isfinite(result.value)
                if complete and second is not None and (result.objective2 is None or not math.isfinite(result.objective2)):
                    result = result.model_copy(update={"state": "fail", "error": f"the trial measured no {second} (the second objective)"})
                    complete = False
                if complete:
                    assert result.value is not None  # complete: a finite value
                    trial.set_user_attr("dev", result.dev)
                    trial.set_user_attr("value_on", "dev")
                    if result.model_path:
                        trial.set_user_attr("model_path", result.model_path)
                    if second is not None:
                        assert result.objective2 is not None  # checked above
                        study.tell(trial, [result.value, result.objective2])
                    else:
                        study.tell(trial, result.value)
                elif result.state == "pruned":
                    reported = store.reported_steps(result.number)
                    for step, value in result.intermediate:
                        if step not in reported:
                            trial.report(value, step)
                    study.tell(trial, state=TrialState.PRUNED)
                else:
                    trial.set_user_attr("error", (result.error or "no value returned")[:4000])
                    study.tell(trial, state=TrialState.FAIL)
                return True
            except UpdateFinishedTrialError:
                pass
            except ValueError as exc:  # study.tell: "Cannot tell a FAIL trial." (finished since the check above)
                if not str(exc).startswith("Cannot tell a") or store.still_running(result.number):
                    raise
        logger.warning("trial %d was failed as stale by another driver (no heartbeat for %ds) and queued again; this result is dropped", result.number, store.grace_period)
        return False

    @staticmethod
    def _fetch_best(executor: Executor, name: str, local: Path) -> bool:
        """Copy the best trial's folder next to the study; a failure is a warning (the study and the best config stand)."""
        try:
            executor.fetch(name, local)
            return True
        except Exception as exc:  # noqa: BLE001 - the study and the best config stand without the model
            logger.warning("could not fetch the best trial's model (%s): %s: %s", name, type(exc).__name__, exc)
            return False

    def _finish(self, study: optuna.Study, executor: Executor, data_dir: Path) -> SearchResult:
        """The base model on dev (the reference), tables, the best config, the best model and its test metrics,
        the recommendation, plots and ``search_result.json``."""
        from optuna.trial import TrialState

        cfg, out = self.config, self.output_dir
        try:
            base = base_reference(cfg.base, data_dir, out)
        except Exception as exc:  # noqa: BLE001 - the reference is never worth failing a finished search
            logger.warning("could not score the base model on dev: %s: %s", type(exc).__name__, exc)
            base = {"dev": {}, "test": {}}
        reference = base["dev"].get(self.task.primary_metric)
        csv_path, json_path = write_tables(study, out, reference)
        n = {state: len(study.get_trials(deepcopy=False, states=(state,))) for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        train_seconds = sum(float(t.user_attrs.get("train_seconds") or 0.0) for t in study.get_trials(deepcopy=False))
        result = SearchResult(
            study_name=cfg.study_name,
            storage=self.study_storage.display_url(),
            n_complete=n[TrialState.COMPLETE],
            n_pruned=n[TrialState.PRUNED],
            n_failed=n[TrialState.FAIL],
            trials_csv=csv_path,
            trials_json=json_path,
            output_dir=out,
            train_seconds=train_seconds,
            gpu_seconds=executor.gpu_seconds,
            base_dev=base["dev"],
            base_value=reference,
            base_test=base["test"],
        )
        self._sweep(study, executor)  # a folder left by a driver killed between a tell and its sweep
        if cfg.second_objective is not None:
            result.objectives = self.metric_names()
            result.pareto_rule = PARETO_RULE.format(tolerance=cfg.pareto_tolerance)
            result.pareto, result.pareto_csv = write_pareto(study, out, self.metric_names(), self.best(study))
        if (picked := self.best(study)) is not None:
            best = next(t for t in study.get_trials(deepcopy=False) if t.number == picked[0])
            best_cfg = resolve_params(cfg.trial_base(), best.params).model_copy(update={"output_dir": str(out / "best-retrained"), "overwrite": False})
            result.best_number, result.best_value, result.best_params = best.number, picked[1], mask_values(dict(best.params))
            result.best_config_path = best_cfg.save(out / "best_config.yaml")
            if cfg.retrain_best:
                from embedft.data import BuiltDataset
                from embedft.training import Trainer

                run = best_cfg.model_copy(update={"output_dir": str(out / "best"), "overwrite": True})
                res = Trainer(run, data=BuiltDataset.load(data_dir)).fit()
                result.best_model_path, result.best_test, result.base_test = res.model_path, res.after.test, (res.before.test if res.before else {})
            elif cfg.keep_best_model and self._fetch_best(executor, f"{best.number:04d}", out / "best"):
                result.best_model_path = out / "best" / "model"
                result.best_test, result.base_test = evaluate_on_test(best_cfg, result.best_model_path, data_dir, out)
        if reference is not None:
            sign = 1 if self.task.greater_is_better else -1
            beats = result.best_value is not None and sign * (result.best_value - reference) > 0
            result.recommendation = "best trial" if beats else "base model"
            logger.info("%s", result.message)
        result.plots = draw_plots(
            study,
            out,
            self.task.primary_metric,
            learning_curve="data.max_train_pairs" in cfg.space,
            reference=reference,
            objectives=result.objectives,
            recommended=result.best_number,
        )
        atomic_write_text(out / "search_result.json", result.model_dump_json(indent=2))
        return result


def _same_scheme(stored: Path, current: Path) -> bool:
    """A remembered trials folder is adopted only when it has this executor's layout (its sweep deletes there)."""
    return ".." not in stored.parts and stored.name == current.name and stored.parent.parent == current.parent.parent and stored.parent != current.parent.parent
