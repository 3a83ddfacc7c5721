"""The study and its storage: creating or loading it, heartbeats, the driver lock, fingerprints, crash recovery.

The driver creates the Optuna storage itself and keeps it (:class:`StudyStorage`), so crash
recovery goes through the public ``BaseStorage`` API: trial ids from
``get_trial_id_from_study_id_trial_number``, states from ``get_trial``/``set_trial_state_values``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from embedft.errors import ConfigError
from embedft.redact import redact_url, scrub
from embedft.search.config import CategoricalParam, FloatParam, IntParam, PrunerConfig, SamplerConfig, SearchConfig

if TYPE_CHECKING:  # pragma: no cover
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.storages import BaseStorage, RDBStorage
    from optuna.trial import FrozenTrial, TrialState

    from embedft.tasks import TaskSpec

__all__ = [
    "StudyStorage",
    "Heartbeat",
    "driver_id",
    "make_sampler",
    "make_pruner",
    "grid_exhausted",
    "is_surplus",
    "best_of",
    "pareto_front",
    "recommend",
    "PARETO_RULE",
    "study_fingerprint",
    "check_fingerprint",
]

logger = logging.getLogger(__name__)


def driver_id() -> str:
    """``host:pid`` of this driver, as recorded on its trials and in the lock file."""
    return f"{socket.gethostname()}:{os.getpid()}"


class StudyStorage:
    """The storage of one search's study, created and kept by the driver.

    An RDB storage (a ``storage`` URL: sqlite, PostgreSQL) records heartbeats, so several drivers
    can share the study: a running trial is stale once its driver stopped recording them for
    ``grace_period`` seconds, and any driver then fails it and queues it again. Without a URL the
    study is an Optuna journal file in the output folder, which has one driver at a time.
    """

    def __init__(self, config: SearchConfig, output_dir: Path, heartbeat_interval: int, grace_period: int) -> None:
        self.url, self.study_name, self.output_dir = config.storage, config.study_name, output_dir
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self._storage: BaseStorage | None = None
        self._study_id: int | None = None
        self._trial_ids: dict[int, int] = {}

    @property
    def shared(self) -> bool:
        """Whether the storage records heartbeats (RDB storages), so several drivers can share the study."""
        return bool(self.url)

    @property
    def storage(self) -> BaseStorage:
        """The Optuna storage :meth:`open` created."""
        if self._storage is None:
            raise RuntimeError("the study storage is not open: call open() first")
        return self._storage

    def display_url(self) -> str:
        """The storage URL (``journal:PATH`` by default) with any password masked."""
        return redact_url(self.url or f"journal:{self.output_dir / 'study.journal'}")

    def open(self, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner, direction: Literal["minimize", "maximize"] | list[str]) -> optuna.Study:
        """Create the storage and create or load the study in it; errors name the storage, never its secrets.

        ``direction`` is one direction, or a list of them for a multi-objective study.
        """
        import optuna

        found = redact_url(self.url) if self.url else "journal"
        directions = {"directions": direction} if isinstance(direction, list) else {"direction": direction}
        try:
            self._storage, self._study_id, self._trial_ids = self._make_storage(), None, {}
            return optuna.create_study(study_name=self.study_name, storage=self._storage, sampler=sampler, pruner=pruner, load_if_exists=True, **directions)
        except ValueError as exc:
            raise ConfigError(f"cannot open the study: {scrub(str(exc), self.url or '')}", field="storage", expected="a study with the same direction", found=found) from None
        except Exception as exc:  # noqa: BLE001 - a database that cannot be reached; its message is scrubbed of the URL's secrets
            first = (scrub(str(exc), self.url or "").splitlines() or [""])[0]
            raise ConfigError(f"cannot open the study storage: {type(exc).__name__}: {first}", field="storage", expected="a reachable Optuna storage", found=found) from None

    def _make_storage(self) -> BaseStorage:
        import inspect

        import optuna
        from optuna.storages import JournalStorage, RDBStorage
        from optuna.storages.journal import JournalFileBackend

        if not self.url:
            return JournalStorage(JournalFileBackend(str(self.output_dir / "study.journal")))
        from sqlalchemy.exc import IntegrityError, ProgrammingError

        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
        # optuna >= 4.9 renamed failed_trial_callback (deprecated since) to heartbeat_stale_trial_callback
        key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage).parameters else "failed_trial_callback"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            requeue = retry(max_retry=3)

            def callback(study: optuna.Study, trial: FrozenTrial) -> None:  # a stale trial: Optuna's retry callback queues it again
                requeue(study, trial)
                logger.warning("trial %d was interrupted (its driver stopped recording heartbeats); marked failed and queued again", trial.number)

            callbacks: dict[str, Any] = {key: callback}
            attempt = 0
            while True:
                try:
                    return RDBStorage(self.url, heartbeat_interval=self.heartbeat_interval, grace_period=self.grace_period, **callbacks)
                except Exception as exc:  # drivers creating a new database's tables at once: the losers retry
                    if attempt == 3 or not (isinstance(exc, (IntegrityError, ProgrammingError)) or "already exists" in str(exc)):
                        raise
                    attempt += 1
                    time.sleep(0.2 * attempt)

    def trial_id(self, number: int) -> int:
        """The storage's id of trial ``number``, through the storage's public API (a Trial keeps its id private)."""
        if number not in self._trial_ids:
            if self._study_id is None:
                self._study_id = self.storage.get_study_id_from_name(self.study_name)
            self._trial_ids[number] = self.storage.get_trial_id_from_study_id_trial_number(self._study_id, number)
        return self._trial_ids[number]

    def still_running(self, number: int) -> bool:
        """False when trial ``number`` was finished elsewhere (failed as stale by another driver)."""
        from optuna.trial import TrialState

        return self.storage.get_trial(self.trial_id(number)).state == TrialState.RUNNING

    def reported_steps(self, number: int) -> set[int]:
        """The steps at which trial ``number`` has an intermediate value in the study."""
        return set(self.storage.get_trial(self.trial_id(number)).intermediate_values)

    def heartbeat(self) -> Heartbeat | None:
        """A heartbeat thread for this driver's trials (RDB storages), else None."""
        from optuna.storages import RDBStorage

        return Heartbeat(self.storage, self.heartbeat_interval) if isinstance(self.storage, RDBStorage) else None

    def recover(self, study: optuna.Study) -> None:
        """Fail the trials whose driver died, and queue their parameters again.

        With an RDB storage a running trial is stale only when its driver's heartbeat stopped
        for ``grace_period`` seconds (``optuna.storages.fail_stale_trials``, whose retry callback
        queues it again); a RUNNING trial that never got a heartbeat (its driver died right
        after asking, or an embedft without heartbeats ran it) is stale once it started more than
        ``grace_period`` ago. With the journal default this driver holds the output folder's lock,
        so every RUNNING trial is a dead driver's.
        """
        import optuna
        from optuna.trial import TrialState

        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if self.shared:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            cutoff = datetime.datetime.now() - datetime.timedelta(seconds=self.grace_period)
            stale = [t for t in running if t.user_attrs.get("heartbeat") != t.number and t.datetime_start is not None and t.datetime_start < cutoff]
            reason = f"interrupted: its driver stopped before recording a heartbeat (RUNNING for more than {self.grace_period}s)"
        else:
            stale, reason = running, "interrupted: the search driver stopped while this trial ran"
        for t in stale:
            self._interrupt(study, t, reason)

    def _interrupt(self, study: optuna.Study, t: FrozenTrial, reason: str) -> None:
        """Fail the stale trial ``t`` with ``reason`` and queue its parameters again (public storage API)."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        trial_id = self.trial_id(t.number)
        try:
            self.storage.set_trial_user_attr(trial_id, "error", reason)
            if not self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                return
        except UpdateFinishedTrialError:  # finished meanwhile (by its driver or another one)
            return
        if t.params:
            study.enqueue_trial(t.params, skip_if_exists=False)
        logger.warning("trial %d was interrupted; marked failed and queued again", t.number)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``OUTPUT_DIR/search.lock`` while this driver runs: one driver per output folder.

        The journal study lives in the output folder, so this also makes one driver per journal
        study; its RUNNING trials are then a dead driver's. The kernel drops the lock when the
        holder dies (even by SIGKILL), so a stale lock file never blocks a rerun.
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover  (not POSIX: no lock)
            yield
            return
        path = self.output_dir / "search.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot open the search lock file: {exc.strerror or exc}", field="output_dir", expected="a writable folder", found=str(path)) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown host:pid"
                share = "several drivers can share a study in an RDB storage (sqlite, PostgreSQL), each with its own output_dir"
                hint = "Give each driver of a shared study its own output_dir" if self.shared else f"Wait for it or stop it; {share}"
                where = "in this output folder" if self.shared else "on this study"
                raise ConfigError(f"another embedft search (driver {holder}) is running {where}", field="output_dir", found=str(self.output_dir), hint=hint) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{driver_id()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock


class Heartbeat:
    """Records a heartbeat for each trial this driver runs, every ``interval`` seconds, from a thread.

    A thread rather than the driver loop: an in-process trial holds the loop for its whole run.
    The heartbeats stop when the driver process dies, and then the trial is stale.
    """

    def __init__(self, storage: RDBStorage, interval: int) -> None:
        self._storage, self._interval = storage, interval
        self._ids: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="embedft-heartbeat", daemon=True)
        self._thread.start()

    def add(self, number: int, trial_id: int) -> None:
        """Start recording heartbeats for trial ``number`` (the first one now)."""
        with self._lock:
            self._ids[number] = trial_id
        self._beat(trial_id)

    def discard(self, number: int) -> None:
        """Stop recording heartbeats for trial ``number``."""
        with self._lock:
            self._ids.pop(number, None)

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                ids = list(self._ids.values())
            for trial_id in ids:
                self._beat(trial_id)

    def _beat(self, trial_id: int) -> None:
        try:
            self._storage.record_heartbeat(trial_id)
        except Exception as exc:  # noqa: BLE001 - a lost connection: the next beat retries; the trial stays alive for grace_period
            logger.warning("could not record a heartbeat (%s); retrying", type(exc).__name__)


# ---------------------------------------------------------------------- samplers and pruners
def make_sampler(config: SamplerConfig, space: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """The configured Optuna sampler (the grid one over every parameter's grid)."""
    import optuna

    if config.type == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    if config.type == "grid":
        return _grid_sampler({k: p.grid() for k, p in space.items()}, seed=config.seed)
    return optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=config.n_startup_trials)


def make_pruner(p: PrunerConfig) -> optuna.pruners.BasePruner:
    """The configured Optuna pruner."""
    import optuna

    if p.type == "none":
        return optuna.pruners.NopPruner()
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource or 1, reduction_factor=p.reduction_factor)
    if p.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource or "auto", reduction_factor=p.reduction_factor)
    if p.type == "percentile":
        return optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)


def _grid_sampler(search_space: dict[str, list], seed: int | None) -> optuna.samplers.GridSampler:
    """Optuna's ``GridSampler`` for ask/tell: it never calls ``study.stop()``.

    ``GridSampler.after_trial`` stops the study once the last grid point is told, and
    ``study.stop()`` raises ``RuntimeError`` outside ``study.optimize``; the driver checks
    :func:`grid_exhausted` before each ``ask`` instead.
    """
    import optuna

    class AskTellGridSampler(optuna.samplers.GridSampler):
        def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
            """Nothing to do: the driver stops asking when the grid is exhausted."""

    return AskTellGridSampler(search_space, seed=seed)


def grid_exhausted(study: optuna.Study) -> bool:
    """Whether the study's grid sampler has tried every grid point and no trial is queued."""
    import optuna
    from optuna.trial import TrialState

    sampler = study.sampler
    if not isinstance(sampler, optuna.samplers.GridSampler) or not sampler.is_exhausted(study):
        return False
    return not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


def is_surplus(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether trial ``number`` is one too many: ``n_trials`` trials that count come before it.

    Drivers that ask at the same moment each see room for one more trial; ranking the
    finished, running and queued trials by number keeps the earlier ones, and the rest are
    told FAIL before they run.
    """
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return sum(t.number < number for t in study.get_trials(deepcopy=False, states=states)) >= n_trials


def best_of(study: optuna.Study, tolerance: float = 0.0) -> tuple[int, float] | None:
    """``(number, value)`` of the study's best trial, or None before one completed.

    In a multi-objective study it is the recommended trial of the Pareto front (:func:`recommend`
    with ``tolerance``), and ``value`` its first objective (the dev score).
    """
    if _is_multi(study):
        t = recommend(study, tolerance)
        return (t.number, t.values[0]) if t is not None else None
    try:
        t = study.best_trial
    except ValueError:
        return None
    return (t.number, t.value) if t.value is not None else None  # a complete trial always has a value


PARETO_RULE = (
    "the Pareto front's trial with the smallest second objective among those whose dev score is within "
    "pareto_tolerance ({tolerance:g}) of the front's best dev score (ties: the higher dev score, then the earlier trial)"
)
"""The rule :func:`recommend` applies, as the search result states it."""


def _is_multi(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The complete trials no other complete trial dominates (Optuna's ``best_trials``), by trial number."""
    return sorted(study.best_trials, key=lambda t: t.number)


def recommend(study: optuna.Study, tolerance: float) -> FrozenTrial | None:
    """The trial :data:`PARETO_RULE` picks from a two-objective study's Pareto front (None before one completed).

    The first objective is the dev score (its direction the study's first), the second is minimised.
    """
    front = pareto_front(study)
    if not front:
        return None
    sign = 1.0 if study.directions[0].name == "MAXIMIZE" else -1.0
    best = max(sign * t.values[0] for t in front)
    close = [t for t in front if sign * t.values[0] >= best - tolerance]
    return min(close, key=lambda t: (t.values[1], -sign * t.values[0], t.number))


# ---------------------------------------------------------------------- fingerprints
# Base settings that do not change what a trial learns: how it is shown, where it runs or evaluates in batches.
_NEUTRAL_BASE = ("output_dir", "overwrite", "training.progress", "training.device", "training.eval_batch_size")


def study_fingerprint(config: SearchConfig, task: TaskSpec, data_fingerprint: str, dev_rows: int | None = None) -> dict[str, Any]:
    """What defines a search's study: task, primary metric and direction, data, search space and base settings.

    Stored in the study (user attribute ``embedft_fingerprint``); a rerun on the same study
    must match it, and so must the dev subsample of a single-objective study (the intermediate scores
    a pruner compares across trials must come from the same dev rows; a subsample of ``dev_rows`` or
    more is all of dev, recorded as null). ``n_trials``, ``timeout``, ``workers``, the pruner, the
    storage and the sampler may change between runs, except the rungs of a pruner that grows the
    training data (``pruner.grow_train_data``: they set the trials' ``training.data_growth``).
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution, distribution_to_json

    space = {}
    for key, p in sorted(config.space.items()):
        dist: BaseDistribution
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna adjusts a high bound to the step, with a warning
            if isinstance(p, FloatParam):
                dist = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
            elif isinstance(p, IntParam):
                dist = IntDistribution(p.low, p.high, log=p.log, step=p.step)
            else:
                dist = CategoricalDistribution(p.choices)
        space[key] = json.loads(distribution_to_json(dist))
    direction = "maximize" if task.greater_is_better else "minimize"
    found: dict[str, Any] = {"task": task.name, "metric": task.primary_metric, "direction": direction, "data": data_fingerprint, "space": space, "base": _base_settings(config)}
    subsample = config.dev_subsample if config.second_objective is None else None  # a multi-objective study keeps no intermediate scores
    found["dev_subsample"] = None if subsample is None or (dev_rows is not None and subsample >= dev_rows) else subsample
    if config.second_objective is not None:  # only then: a single-objective study's fingerprint is as before
        found["second_objective"] = config.second_objective
    return found


def _base_settings(config: SearchConfig) -> dict[str, Any]:
    """The base config's model and training settings a trial uses (dotted keys), minus searched and neutral ones.

    The data section is covered by the data fingerprint (the training-set cap included), except
    hard-negative mining, which trials apply themselves.
    """
    from embedft.modeling import local_model_digest

    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value

    data = config.trial_base().to_dict()
    data["training"]["loss"] = config.base.loss_name  # null means the task's default: the same loss
    walk("", {"model": data["model"], "training": data["training"]})
    walk("data.mine_hard_negatives", data["data"]["mine_hard_negatives"])
    for key in ("model.base_model", "training.guide_model"):  # a local folder: what is in it, not only its name
        digest = local_model_digest(flat.get(key))
        if digest is not None:
            flat[key + "@files"] = digest
    param = config.space.get("model.base_model")
    for choice in param.choices if isinstance(param, CategoricalParam) else []:
        digest = local_model_digest(choice) if isinstance(choice, str) else None
        if digest is not None:
            flat[f"space.model.base_model[{choice}]@files"] = digest
    searched = tuple(config.space)
    return {k: v for k, v in sorted(flat.items()) if k not in _NEUTRAL_BASE and not any(k.split("@")[0] == s or k.startswith(s + ".") for s in searched)}


def check_fingerprint(study: optuna.Study, mine: dict[str, Any], where: str) -> None:
    """Refuse a study made for another search (task, data, space or base settings); record ``mine`` on a new one.

    ``where`` names the study in the error (``'embedft' in journal:runs/search/study.journal``).
    """
    theirs = study.user_attrs.get("embedft_fingerprint")
    directions = [d.name.lower() for d in study.directions]
    if theirs is None:  # a new study (or one from an embedft that did not record it): its directions must agree
        if directions == [mine["direction"], *(["minimize"] if mine.get("second_objective") else [])]:
            study.set_user_attr("embedft_fingerprint", mine)
            return
        theirs = {**mine, "task": "(unknown)", "metric": "(unknown)", "direction": "/".join(directions)}
        theirs.pop("second_objective", None)
    differ: list[tuple[str, Callable[[dict[str, Any]], str]]] = []
    if any(theirs.get(k) != mine.get(k) for k in ("task", "metric", "direction", "second_objective")):
        differ.append(("task", lambda fp: f"task {fp.get('task')} ({fp.get('metric')}, {fp.get('direction')}{', ' + fp['second_objective'] if fp.get('second_objective') else ''})"))
    if theirs.get("data") != mine["data"]:
        differ.append(("data", lambda fp: f"data {fp.get('data')}"))
    keys = sorted(k for k in set(theirs.get("space") or {}) | set(mine["space"]) if (theirs.get("space") or {}).get(k) != mine["space"].get(k))
    if keys:
        differ.append(("space", lambda fp: "space " + ", ".join(f"{k}={_describe_distribution((fp.get('space') or {}).get(k))}" for k in keys)))
    if "dev_subsample" in theirs and theirs["dev_subsample"] != mine.get("dev_subsample"):  # older studies lack it: not compared
        differ.append(("dev_subsample", lambda fp: f"dev_subsample {fp.get('dev_subsample') or 'null (all of dev)'}"))
    if "base" in theirs:  # studies recorded before base settings were fingerprinted lack it: not compared
        base = sorted(k for k in set(theirs["base"]) | set(mine["base"]) if theirs["base"].get(k) != mine["base"].get(k))
        if base:
            differ.append(("base", lambda fp: "base " + ", ".join(f"{k}={(fp.get('base') or {}).get(k)!r}" for k in base[:5])))
    if differ:
        raise ConfigError(
            f"the study {where} holds the trials of another search",
            field=", ".join(name for name, _ in differ),
            expected=" / ".join(show(theirs) for _, show in differ),
            found=" / ".join(show(mine) for _, show in differ),
            hint="Rerun it with the same task, data, space, base settings and dev_subsample, or start a new study: set another study_name or output_dir",
        )


def _describe_distribution(dist: dict[str, Any] | None) -> str:
    """A short form of an Optuna distribution's JSON for an error line."""
    if dist is None:
        return "absent"
    kind = str(dist.get("name", "")).replace("Distribution", "").lower()
    return kind + json.dumps(dist.get("attributes", {}), sort_keys=True, separators=(",", ":"))
