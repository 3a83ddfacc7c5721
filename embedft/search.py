"""OptunaSearch: hyperparameter search over any config field, driven by ask/tell.

The driver owns the Optuna study and its storage (an Optuna journal file in the run
directory by default, or any Optuna storage URL). It asks the study for a trial, turns
its parameters into a resolved :class:`~embedft.config.RunConfig`, hands a
:class:`~embedft.trial.TrialConfig` to an executor, reports intermediate dev scores to
the pruner and tells the study how each trial ended. The test split is evaluated only
for the best trial::

    from embedft import OptunaSearch, SearchConfig

    search = OptunaSearch(SearchConfig.from_file("search.yaml"))
    result = search.run()
    print(result.best_value, result.best_config_path)
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, field_validator, model_validator

from embedft.config import ConfigBase, ModalConfig, RunConfig, Seed, StrictModel, validate_config
from embedft.errors import ConfigError, EmbedftError
from embedft.redact import mask_values, redact_url, scrub, url_problem
from embedft.files import atomic_write_text, check_output_dir, mark, new_scratch, owner, remove_owned, replace_dir, replacing
from embedft.tasks import get_task
from embedft.trial import TrialConfig, TrialResult

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from embedft.executors import Executor
    from embedft.modal_backend import ModalBackend

__all__ = [
    "FloatParam",
    "IntParam",
    "CategoricalParam",
    "SamplerConfig",
    "PrunerConfig",
    "SearchConfig",
    "SearchResult",
    "OptunaSearch",
    "format_trials",
]

logger = logging.getLogger(__name__)


class _Strict(StrictModel):
    """Search config models: unknown keys refused, booleans are not numbers, floats are finite."""


class FloatParam(_Strict):
    """A float between ``low`` and ``high`` (log-uniform when ``log``)."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, found {self.low}")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be used together")
        return self

    def suggest(self, trial, name: str):
        """Sample a value for ``name`` from an Optuna trial."""
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def grid(self) -> list:
        """Always raises: a float range has no finite grid."""
        raise ValueError("the grid sampler needs int or categorical parameters, not float ranges")


class IntParam(_Strict):
    """An integer between ``low`` and ``high`` in ``step`` increments."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and (self.low <= 0 or self.step != 1):
            raise ValueError("a log int range needs low > 0 and step 1")
        return self

    def suggest(self, trial, name: str):
        """Sample a value for ``name`` from an Optuna trial."""
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def grid(self) -> list:
        """Every value, for the grid sampler.

        >>> IntParam(type="int", low=1000, high=4000, step=1000).grid()
        [1000, 2000, 3000, 4000]
        """
        return list(range(self.low, self.high + 1, self.step))


class CategoricalParam(_Strict):
    """One of ``choices`` (None, bool, int, float or str)."""

    type: Literal["categorical"]
    choices: list[None | bool | int | float | str] = Field(..., min_length=1)

    def suggest(self, trial, name: str):
        """Sample a value for ``name`` from an Optuna trial."""
        return trial.suggest_categorical(name, self.choices)

    def grid(self) -> list:
        """Every choice, for the grid sampler."""
        return list(self.choices)


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


class SamplerConfig(_Strict):
    """``tpe`` (default), ``random`` or ``grid``; seeded."""

    type: Literal["tpe", "random", "grid"] = "tpe"
    seed: Seed | None = 0
    n_startup_trials: int = Field(5, ge=0)


class PrunerConfig(_Strict):
    """``median`` (default), ``percentile``, ``successive_halving``, ``hyperband`` or ``none``.

    ``median``/``percentile`` stop a trial whose intermediate dev score is below the median (the
    ``percentile``-th percentile) of earlier trials at the same step, after ``n_startup_trials``
    trials and ``n_warmup_steps`` steps. ``successive_halving``/``hyperband`` keep the top
    1/``reduction_factor`` of trials at rungs of ``min_resource`` x ``reduction_factor``^k steps
    (``min_resource`` null: chosen by Optuna).
    """

    type: Literal["median", "percentile", "successive_halving", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(2, ge=0)
    n_warmup_steps: int = Field(0, ge=0)
    percentile: float = Field(50.0, gt=0, lt=100)
    min_resource: int | None = Field(None, ge=1)
    reduction_factor: int = Field(3, ge=2)


# Keys whose values come from a sampled parameter in another form.
_DENSE_OUT = "model.dense.out_features"
_DENSE_ACT = "model.dense.activation"


class SearchConfig(ConfigBase):
    """A base :class:`RunConfig` and a search space over its dotted fields.

    Example YAML::

        base: {data: {source: pairs.tsv}, training: {eval_steps: 50}}
        space:
          training.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-4, log: true}
          training.loss: {type: categorical, choices: [OnlineContrastiveLoss, CoSENTLoss]}
          model.dense.out_features: {type: categorical, choices: [null, 128, 256]}  # null: no head
          data.max_train_pairs: {type: int, low: 500, high: 4000, step: 500}      # a learning curve
        n_trials: 20
    """

    base: RunConfig = Field(default_factory=RunConfig)
    space: dict[str, Param] = Field(default_factory=dict)
    n_trials: int = Field(10, gt=0)
    timeout: float | None = Field(None, gt=0)
    max_failures: int | None = Field(None, ge=0)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    storage: str | None = Field(None, min_length=1)
    study_name: str = Field("embedft", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    workers: int = Field(1, ge=1)
    executor: Literal["auto", "inprocess", "process"] = "auto"
    backend: Literal["local", "modal"] = "local"
    modal: ModalConfig = Field(default_factory=ModalConfig)
    output_dir: str = "runs/search"
    keep_best_model: bool = True
    retrain_best: bool = False

    @field_validator("storage")
    @classmethod
    def _readable_storage(cls, value: str | None) -> str | None:
        problem = url_problem(value) if value else None
        if problem:  # refused before any driver sees it (one would echo pieces of the password)
            raise ConfigError(f"the storage URL cannot be used: {problem}", expected="a database URL SQLAlchemy reads as written", found=redact_url(value))
        return value

    @model_validator(mode="after")
    def _valid_space(self) -> SearchConfig:
        task = get_task(self.base.task)
        base = self.base.to_dict()
        for key, param in self.space.items():
            why = _fixed_per_search(key)
            if why:
                raise ConfigError(f"space key {key!r} would not change the trial: {why}", field=f"space.{key}", expected="a field that changes the trial", found=key)
            if key == "training.loss":
                bad = [c for c in param.grid() if c not in task.losses] if isinstance(param, CategoricalParam) else ["(not categorical)"]
                if bad:
                    raise ConfigError(
                        f"space key 'training.loss' has losses the task {task.name!r} does not allow",
                        field="space.training.loss",
                        expected=f"losses among {sorted(task.losses)}",
                        found=bad,
                    )
            # One value per key: other values may only be valid together with other sampled keys.
            sample = param.low if not isinstance(param, CategoricalParam) else next((c for c in param.choices if c is not None), None)
            try:
                resolve_params(self.base, {key: sample}, base)
            except ConfigError as exc:
                raise ConfigError(f"space key {key!r}: {exc.message}", field=f"space.{key}", expected=exc.expected, found=exc.found) from None
        if self.sampler.type == "grid":
            for key, param in self.space.items():
                if isinstance(param, FloatParam):
                    raise ValueError(f"the grid sampler cannot search the float range {key!r}; use categorical choices")
        if self.executor == "inprocess" and self.workers > 1:
            raise ValueError("executor 'inprocess' runs one trial at a time; use executor 'process' for workers > 1")
        return self

    def save(self, path: str | Path, *, redact: bool = False) -> Path:
        """Write the config as YAML; ``redact`` masks a password in the storage URL (run-folder copies)."""
        import yaml

        data = self.to_dict()
        if redact:  # the storage URL, and any URL with a password elsewhere (a searched model's address)
            if data.get("storage"):
                data["storage"] = redact_url(data["storage"])
            data = mask_values(data)
        path = Path(path)
        atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
        return path


def _fixed_per_search(key: str) -> str | None:
    """Why searching ``key`` would change nothing in a trial (None: the trial honours it).

    The splits are built once per search; a trial only cuts its own train size
    (``data.max_train_pairs``) and mines its own hard negatives (``data.mine_hard_negatives``).
    The driver sets each trial's task, output folder, overwrite and progress.
    """
    if key == "data.max_train_pairs" or key == "data.mine_hard_negatives" or key.startswith("data.mine_hard_negatives."):
        return None
    if key == "data" or key.startswith("data."):
        return "the splits are built once per search, so every trial would use the same data while best_config.yaml recorded another value"
    return _SET_BY_THE_SEARCH.get(key)


_SET_BY_THE_SEARCH = {
    "task": "the task defines the study (its data, loss choices and metric); run one search per task",
    "output_dir": "each trial writes to its own trials/NNNN folder",
    "overwrite": "each trial always replaces its own trials/NNNN folder",
    "training.progress": "trials always run without a progress bar",
}


def resolve_params(base: RunConfig, params: dict[str, Any], base_dict: dict[str, Any] | None = None) -> RunConfig:
    """The base config with sampled parameters applied (``model.dense.out_features=None`` drops the head)."""
    data = json.loads(json.dumps(base_dict if base_dict is not None else base.to_dict()))
    for key, value in params.items():
        if key in (_DENSE_OUT, _DENSE_ACT):
            continue
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError("search space key does not name a config field", field=key, expected="section.field of a RunConfig", found=key)
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError("search space key does not name a config field", field=key, expected="section.field of a RunConfig", found=key)
        node[parts[-1]] = value
    if _DENSE_OUT in params or _DENSE_ACT in params:
        out = params.get(_DENSE_OUT, (data["model"]["dense"] or {}).get("out_features"))
        if out is None:
            data["model"]["dense"] = None
        else:
            act = params.get(_DENSE_ACT, (data["model"]["dense"] or {}).get("activation", "tanh"))
            data["model"]["dense"] = {"out_features": out, "activation": act}
    return validate_config(RunConfig, data, "search parameters")


class SearchResult(BaseModel):
    """The outcome of a search: counts, the best trial, its test metrics, the files written."""

    study_name: str
    storage: str
    n_complete: int
    n_pruned: int
    n_failed: int
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any] = {}
    best_config_path: Path | None = None
    best_model_path: Path | None = None
    best_test: dict[str, float] = {}
    base_test: dict[str, float] = {}
    train_seconds: float = 0.0
    gpu_seconds: float | None = None
    trials_csv: Path
    trials_json: Path
    plots: list[Path] = []
    output_dir: Path


class OptunaSearch:
    """Run a :class:`SearchConfig`: ask -> resolve -> execute -> tell, resumable.

    Args:
        config: the search config (or a dict of one).
        executor: an executor object; by default in-process for one worker, else local processes.
        sampler: an Optuna sampler that replaces the configured one.
        pruner: an Optuna pruner that replaces the configured one.
        trial_fn: the trial function executors run (``run_trial``).
        remote: a :class:`~embedft.modal_backend.ModalBackend` to use for ``backend: modal``
            (by default one is built from ``config.modal``).
        heartbeat_interval: with an RDB storage (sqlite, PostgreSQL), seconds between the heartbeats
            this driver records for its running trials.
        grace_period: with an RDB storage, seconds without a heartbeat after which any driver on the
            study fails a running trial as interrupted and queues it again (its driver died).

    Several drivers may share one study in an RDB storage, each with its own ``output_dir``:
    together they run ``n_trials`` trials. An output folder (and so a journal study) has one
    driver at a time; a second one is refused.
    """

    def __init__(
        self,
        config: SearchConfig | dict[str, Any],
        *,
        executor: Executor | None = None,
        sampler: optuna.samplers.BaseSampler | None = None,
        pruner: optuna.pruners.BasePruner | None = None,
        trial_fn: Callable | None = None,
        remote: ModalBackend | None = None,
        heartbeat_interval: int = 10,
        grace_period: int = 60,
    ) -> None:
        self.config = config if isinstance(config, SearchConfig) else SearchConfig.from_dict(config)
        import optuna

        for name, value, kind, expected in (
            ("sampler", sampler, optuna.samplers.BaseSampler, "an optuna sampler"),
            ("pruner", pruner, optuna.pruners.BasePruner, "an optuna pruner"),
        ):
            if value is not None and not isinstance(value, kind):
                raise ConfigError(f"{name} must be {expected}", field=name, expected=f"{expected} (or None for the configured one)", found=type(value).__name__)
        if executor is not None and not all(callable(getattr(executor, m, None)) for m in ("submit", "wait", "close")):
            raise ConfigError("executor must be an embedft executor", field="executor", expected="an object with submit/wait/close (embedft.executors)", found=type(executor).__name__)
        if trial_fn is not None and not callable(trial_fn):
            raise ConfigError("trial_fn must be callable", field="trial_fn", expected="a function TrialConfig -> TrialResult", found=type(trial_fn).__name__)
        for name, value in (("heartbeat_interval", heartbeat_interval), ("grace_period", grace_period)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a whole number of seconds", field=name, expected="an int > 0", found=repr(value))
        if grace_period <= heartbeat_interval:
            raise ConfigError("grace_period must be longer than heartbeat_interval", field="grace_period", expected=f"> {heartbeat_interval}", found=grace_period)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self._optuna_storage: Any = None
        self._study_id: int | None = None
        self._trial_ids: dict[int, int] = {}
        self.task = get_task(self.config.base.task)
        self.output_dir = Path(self.config.output_dir).expanduser()
        self._executor = executor
        self._sampler = sampler
        self._pruner = pruner
        self._trial_fn = trial_fn
        self._remote = remote
        self._remote_data: str | None = None
        self._remote_best: int | None = None
        self._remote_models: dict[str, str] = {}
        self.on_trial_end: list[Callable[[TrialResult, Any], None]] = []

    # ------------------------------------------------------------------ setup
    def storage_url(self) -> str:
        """The study's storage: the configured URL, or ``journal:OUTPUT_DIR/study.journal``."""
        return self.config.storage or f"journal:{self.output_dir / 'study.journal'}"

    def inputs(self) -> list[tuple[str, str | None]]:
        """The local paths the search reads (``(field, path)``); the output folder may never hold one."""
        base = self.config.base
        found = [("base.data.source", base.data.source), ("base.model.base_model", base.model.base_model), ("base.training.guide_model", base.training.guide_model)]
        param = self.config.space.get("model.base_model")
        if isinstance(param, CategoricalParam):
            found += [("space.model.base_model", c) for c in param.choices if isinstance(c, str)]
        return [(field, value) for field, value in found if value]

    def prepare_output(self) -> Path:
        """Check the output folder (new, empty, or this kind of embedft search folder, which resumes) and mark it."""
        check_output_dir(self.output_dir, kind="search", resume=True, inputs=self.inputs())
        if owner(self.output_dir) != "search":
            mark(self.output_dir, "search")
        return self.output_dir

    def _storage(self):
        """The Optuna storage: an RDB storage with heartbeats for a URL, else the journal file.

        With heartbeats a running trial is stale only when its driver stopped recording them for
        ``grace_period`` seconds; any driver then fails it and queues it again (Optuna's retry callback).
        """
        if self.config.storage:
            import inspect
            import warnings

            import optuna
            from optuna.storages import RDBStorage

            retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
            # optuna >= 4.9 renamed failed_trial_callback (deprecated since) to heartbeat_stale_trial_callback
            key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage).parameters else "failed_trial_callback"
            from sqlalchemy.exc import IntegrityError, ProgrammingError

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                callback = _StaleTrialRetry(retry(max_retry=3), self.output_dir)
                for attempt in range(4):
                    try:
                        storage = RDBStorage(self.config.storage, heartbeat_interval=self.heartbeat_interval, grace_period=self.grace_period, **{key: callback})
                        break
                    except Exception as exc:  # drivers creating a new database's tables at once: the losers retry
                        if attempt == 3 or not (isinstance(exc, (IntegrityError, ProgrammingError)) or "already exists" in str(exc)):
                            raise
                        time.sleep(0.2 * (attempt + 1))
        else:
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            storage = JournalStorage(JournalFileBackend(str(self.output_dir / "study.journal")))
        self._optuna_storage, self._study_id, self._trial_ids = storage, None, {}
        return storage

    def _heartbeats(self) -> bool:
        """Whether the storage records heartbeats (RDB storages), so several drivers can share the study."""
        return bool(self.config.storage)

    def _trial_id(self, number: int) -> int:
        """The storage's id of trial ``number``, through the storage's public API (a Trial keeps its id private)."""
        if number not in self._trial_ids:
            storage = self._optuna_storage
            if self._study_id is None:
                self._study_id = storage.get_study_id_from_name(self.config.study_name)
            self._trial_ids[number] = storage.get_trial_id_from_study_id_trial_number(self._study_id, number)
        return self._trial_ids[number]

    def _still_running(self, number: int) -> bool:
        """False when trial ``number`` was finished elsewhere (failed as stale by another driver)."""
        from optuna.trial import TrialState

        return self._optuna_storage.get_trial(self._trial_id(number)).state == TrialState.RUNNING

    @contextlib.contextmanager
    def _driver_lock(self):
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
                where = "on this study" if not self.config.storage else "in this output folder"
                hint = (
                    "Wait for it or stop it; several drivers can share a study in an RDB storage (sqlite, PostgreSQL), each with its own output_dir"
                    if not self.config.storage
                    else "Give each driver of a shared study its own output_dir"
                )
                raise ConfigError(f"another embedft search (driver {holder}) is running {where}", field="output_dir", found=str(self.output_dir), hint=hint) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()}:{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _make_sampler(self):
        import optuna

        if self._sampler is not None:
            return self._sampler
        s = self.config.sampler
        if s.type == "random":
            return optuna.samplers.RandomSampler(seed=s.seed)
        if s.type == "grid":
            return _grid_sampler({k: p.grid() for k, p in self.config.space.items()}, seed=s.seed)
        return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials)

    def _make_pruner(self):
        import optuna

        if self._pruner is not None:
            return self._pruner
        p = self.config.pruner
        if p.type == "none":
            return optuna.pruners.NopPruner()
        if p.type == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=p.min_resource or 1, reduction_factor=p.reduction_factor)
        if p.type == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource or "auto", reduction_factor=p.reduction_factor)
        if p.type == "percentile":
            return optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)

    def _make_executor(self):
        from embedft.executors import InProcessExecutor, ProcessExecutor
        from embedft.trial import run_trial

        if self._executor is not None:
            return self._executor
        if self.config.backend == "modal":
            return self._remote.executor()
        fn = self._trial_fn or run_trial
        kind = self.config.executor
        if kind == "auto":
            kind = "inprocess" if self.config.workers == 1 else "process"
        return InProcessExecutor(fn) if kind == "inprocess" else ProcessExecutor(self.config.workers, fn)

    def load_study(self):
        """Create or reopen the study in the configured storage."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.prepare_output()  # the journal lives there: checked and marked before anything is written
        direction = "maximize" if self.task.greater_is_better else "minimize"
        try:
            return optuna.create_study(
                study_name=self.config.study_name,
                storage=self._storage(),
                sampler=self._make_sampler(),
                pruner=self._make_pruner(),
                direction=direction,
                load_if_exists=True,
            )
        except ValueError as exc:
            raise ConfigError(f"cannot open the study: {scrub(str(exc), self.config.storage or '')}", field="storage", expected="a study with the same direction", found=redact_url(self.config.storage) if self.config.storage else "journal") from None
        except Exception as exc:  # a database that cannot be reached; its message is scrubbed of the URL's secrets
            raise ConfigError(
                f"cannot open the study storage: {type(exc).__name__}: {(scrub(str(exc), self.config.storage or '').splitlines() or [''])[0]}",
                field="storage",
                expected="a reachable Optuna storage",
                found=redact_url(self.config.storage) if self.config.storage else "journal",
            ) from None

    # ------------------------------------------------------------------ run
    def run(self) -> SearchResult:
        """Run (or resume) the search until the study holds ``n_trials`` completed or pruned trials.

        Several drivers may share a study in an RDB storage (each with its own ``output_dir``):
        together they end with exactly ``n_trials``. A rerun must describe the same study (task,
        data, search space; see :meth:`study_fingerprint`) or it is refused before any trial runs.
        """
        cfg = self.config
        if cfg.backend == "modal" and self._remote is None:
            import embedft.modal_backend  # noqa: F401  (fails now, naming the install command, when modal is absent)
        self.prepare_output()
        with self._driver_lock():
            return self._run()

    def _run(self) -> SearchResult:
        import warnings

        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        cfg = self.config
        built = self._data_splits()  # cheap (no model): its fingerprint is part of the study's
        study = self.load_study()
        self._check_fingerprint(study, built.report.fingerprint)
        cfg.save(self.output_dir / "search.yaml", redact=True)
        self._recover_interrupted(study)
        data_dir = self._build_data(built)
        if cfg.backend == "modal":
            self._connect_remote(study, data_dir)

        executor = self._make_executor()
        running: dict[int, optuna.trial.Trial] = {}
        started = time.monotonic()
        failures = 0
        max_failures = cfg.max_failures if cfg.max_failures is not None else max(cfg.n_trials, 3)
        progress = _Progress(cfg.n_trials, self.task.greater_is_better)

        def finished() -> int:
            return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

        def counts() -> tuple[int, int]:
            """Finished (complete + pruned) and running trials of every driver on the study."""
            trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
            busy = sum(t.state == TrialState.RUNNING for t in trials)
            return len(trials) - busy, busy

        reported: dict[int, set[int]] = {}

        def on_report(number: int, step: int, value: float) -> bool:
            trial = running.get(number)
            if trial is None:
                return False
            steps = reported.setdefault(number, set())
            try:
                if step not in steps:  # a retried remote attempt reports its steps again: the first value stands
                    steps.add(step)
                    trial.report(value, step)
                return bool(trial.should_prune())
            except UpdateFinishedTrialError:  # another driver failed it as stale: stop it, its copy runs elsewhere
                return True

        heartbeat = _Heartbeat(self._optuna_storage, self.heartbeat_interval) if self._heartbeats() else None
        last_check = time.monotonic()
        progress.update(finished(), self._best(study))
        try:
            while True:
                timed_out = cfg.timeout is not None and time.monotonic() - started >= cfg.timeout
                if failures > max_failures:
                    logger.error("stopping: %d trials failed (max_failures=%d)", failures, max_failures)
                    self._cancel(study, running, f"cancelled: the search stopped after {failures} failed trials")
                    break
                if timed_out and running:  # the budget is spent: stop the trials still running
                    self._cancel(study, running, f"cancelled: the search timeout ({cfg.timeout:g}s) was reached")
                    break
                if heartbeat is not None and time.monotonic() - last_check >= self.heartbeat_interval:
                    self._recover_interrupted(study)  # trials of drivers that died meanwhile
                    last_check = time.monotonic()
                # Every driver's running trials count: together the drivers ask for n_trials.
                while not timed_out and failures <= max_failures and len(running) < executor.max_parallel and sum(counts()) < cfg.n_trials:
                    if _grid_exhausted(study):  # every grid point was tried: more trials would repeat one
                        break
                    with warnings.catch_warnings():  # Optuna warns that ask/tell records no heartbeat: _Heartbeat does
                        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
                        trial = study.ask()
                    if heartbeat is not None:
                        heartbeat.add(trial.number, self._trial_id(trial.number))
                        trial.set_user_attr("heartbeat", trial.number)  # this trial's heartbeats are recorded
                    trial.set_user_attr("driver", f"{socket.gethostname()}:{os.getpid()}")
                    if self._surplus(study, trial.number, cfg.n_trials):
                        trial.set_user_attr("error", f"not run: the drivers of this study asked for more than n_trials ({cfg.n_trials}) at the same moment")
                        study.tell(trial, state=TrialState.FAIL)
                        if heartbeat is not None:
                            heartbeat.discard(trial.number)
                        continue
                    try:
                        params = {k: p.suggest(trial, k) for k, p in cfg.space.items()}
                        tc = self._trial_config(trial.number, params, data_dir)
                    except EmbedftError as exc:  # an impossible combination of parameters
                        trial.set_user_attr("error", str(exc))
                        study.tell(trial, state=TrialState.FAIL)
                        failures += 1
                        continue
                    running[trial.number] = trial
                    executor.submit(tc)
                if not running:
                    if timed_out or failures > max_failures or counts()[0] >= cfg.n_trials or _grid_exhausted(study):
                        break
                    if heartbeat is None:  # the lock is ours and none of ours runs: a RUNNING trial is a dead driver's
                        self._recover_interrupted(study)
                        continue
                    time.sleep(1.0)  # the other drivers' last trials run: wait, one may fail and need a rerun
                    continue
                for result in executor.wait(on_report, timeout=1.0):
                    trial = running.pop(result.number)
                    told = self._tell_unless_taken_over(study, trial, result)
                    if heartbeat is not None:
                        heartbeat.discard(result.number)
                    if not told:
                        continue
                    failures += result.state == "fail"
                    progress.update(finished(), self._best(study), result)
                    for cb in self.on_trial_end:
                        cb(result, study)
                self._write_tables(study)
        finally:
            if heartbeat is not None:
                heartbeat.close()
            executor.close()
            progress.close()
        if finished() < cfg.n_trials and _grid_exhausted(study):
            points = math.prod(len(p.grid()) for p in cfg.space.values())
            logger.info("the grid has %d point(s), all tried: stopping with %d of n_trials=%d trials complete or pruned", points, finished(), cfg.n_trials)
        gpu_seconds = getattr(executor, "gpu_seconds", None)
        if gpu_seconds is not None:
            logger.info("GPU-seconds used in this run: %.0f (%s, up to %d containers)", gpu_seconds, cfg.modal.gpu, cfg.modal.max_containers)
        return self._finish(study, data_dir, gpu_seconds)

    @staticmethod
    def _cancel(study, running: dict, reason: str) -> None:
        """Record trials still running as failed with ``reason``; closing the executor then stops them."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        for number, trial in list(running.items()):
            try:
                trial.set_user_attr("error", reason)
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            except UpdateFinishedTrialError:  # another driver finished it already (failed it as stale)
                continue
            logger.warning("trial %d %s", number, reason)
        running.clear()

    def _connect_remote(self, study, data_dir: Path) -> None:
        """Build the Modal backend (unless given) and upload the splits once."""
        if self._remote is None:
            from embedft.modal_backend import ModalBackend

            self._remote = ModalBackend(self.config.modal)
        self._remote_data = self._remote.upload_data(data_dir, data_dir.name)
        # Containers cannot see local folders: local base models go to the volume once.
        models = {self.config.base.model.base_model}
        param = self.config.space.get("model.base_model")
        if isinstance(param, CategoricalParam):
            models |= {c for c in param.choices if isinstance(c, str)}
        self._remote_models = {m: self._remote.upload_model(m) for m in sorted(models) if Path(m).expanduser().is_dir()}
        best = self._best(study)
        self._remote_best = best[0] if best else None

    def _remote_trial_dir(self, number: int) -> str:
        return self._remote.remote_path("runs", self.config.study_name, "trials", f"{number:04d}")

    def _trial_config(self, number: int, params: dict[str, Any], data_dir: Path) -> TrialConfig:
        run = resolve_params(self.config.base, params)
        if self.config.backend == "modal":
            trial_dir, data = self._remote_trial_dir(number), self._remote_data
            if run.model.base_model in self._remote_models:
                run = run.model_copy(update={"model": run.model.model_copy(update={"base_model": self._remote_models[run.model.base_model]})})
        else:
            trial_dir, data = str(self.output_dir / "trials" / f"{number:04d}"), str(data_dir)
        run = run.model_copy(update={"output_dir": trial_dir, "overwrite": True})
        run.training.progress = False
        return TrialConfig(number=number, params=params, run=run, data_dir=data)

    def _recover_interrupted(self, study) -> None:
        """Fail the trials whose driver died, and queue their parameters again.

        With an RDB storage a running trial is stale only when its driver's heartbeat stopped
        for ``grace_period`` seconds (``optuna.storages.fail_stale_trials``, whose retry callback
        queues it again); a RUNNING trial that never got a heartbeat (its driver died right
        after asking, or an embedft without heartbeats ran it) is stale once it started more than
        ``grace_period`` ago. With the journal default this driver holds the output folder's lock,
        so every RUNNING trial is a dead driver's.
        """
        import datetime
        import warnings

        import optuna
        from optuna.trial import TrialState

        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if self._heartbeats():
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

    def _interrupt(self, study, t, reason: str) -> None:
        """Fail the stale trial ``t`` with ``reason`` and queue its parameters again (public storage API)."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        storage, trial_id = self._optuna_storage, self._trial_id(t.number)
        try:
            storage.set_trial_user_attr(trial_id, "error", reason)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                return
        except UpdateFinishedTrialError:  # finished meanwhile (by its driver or another one)
            return
        if t.params:
            study.enqueue_trial(t.params, skip_if_exists=False)
        logger.warning("trial %d was interrupted; marked failed and queued again", t.number)
        remove_owned(self.output_dir / "trials" / f"{t.number:04d}")

    @staticmethod
    def _surplus(study, number: int, n_trials: int) -> bool:
        """Whether trial ``number`` is one too many: ``n_trials`` trials that count come before it.

        Drivers that ask at the same moment each see room for one more trial; ranking the
        finished, running and queued trials by number keeps the earlier ones, and the rest are
        told FAIL before they run.
        """
        from optuna.trial import TrialState

        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        return sum(t.number < number for t in study.get_trials(deepcopy=False, states=states)) >= n_trials

    def _tell_unless_taken_over(self, study, trial, result: TrialResult) -> bool:
        """Tell the study how a trial ended; False (result dropped) when another driver finished it first.

        A driver whose heartbeats stopped for ``grace_period`` (a stalled machine, a lost
        connection) finds its trial failed as stale by another driver and queued again: that
        copy stands. Never an ``UpdateFinishedTrialError``.
        """
        from optuna.exceptions import UpdateFinishedTrialError

        if self._still_running(result.number):
            try:
                self._tell(study, trial, result)
                return True
            except UpdateFinishedTrialError:
                pass
            except ValueError as exc:  # study.tell: "Cannot tell a FAIL trial." (finished since the check above)
                if not str(exc).startswith("Cannot tell a") or self._still_running(result.number):
                    raise
        logger.warning("trial %d was failed as stale by another driver (no heartbeat for %ds) and queued again; this result is dropped", result.number, self.grace_period)
        self._drop_trial_dir(result.number)
        return False

    def study_fingerprint(self, data_fingerprint: str) -> dict[str, Any]:
        """What defines this search's study: task, primary metric and direction, data and search space.

        Stored in the study (user attribute ``embedft_fingerprint``); a rerun on the same study
        must match it. ``n_trials``, ``timeout``, ``workers``, the pruner, the storage and the
        sampler may change between runs.
        """
        import warnings

        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution, distribution_to_json

        space = {}
        for key, p in sorted(self.config.space.items()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna adjusts a high bound to the step, with a warning
                if isinstance(p, FloatParam):
                    dist = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
                elif isinstance(p, IntParam):
                    dist = IntDistribution(p.low, p.high, log=p.log, step=p.step)
                else:
                    dist = CategoricalDistribution(p.choices)
            space[key] = json.loads(distribution_to_json(dist))
        return {
            "task": self.task.name,
            "metric": self.task.primary_metric,
            "direction": "maximize" if self.task.greater_is_better else "minimize",
            "data": data_fingerprint,
            "space": space,
            "base": self._base_settings(),
        }

    # Base settings that do not change what a trial learns: how it is shown, where it runs or evaluates in batches.
    _NEUTRAL_BASE = ("output_dir", "overwrite", "training.progress", "training.device", "training.eval_batch_size")

    def _base_settings(self) -> dict[str, Any]:
        """The base config's model and training settings a trial uses (dotted keys), minus searched and neutral ones.

        The data section is covered by the data fingerprint (the training-set cap included), except
        hard-negative mining, which trials apply themselves.
        """
        flat: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                flat[prefix] = value

        data = self.config.base.to_dict()
        data["training"]["loss"] = self.config.base.loss_name  # null means the task's default: the same loss
        walk("", {"model": data["model"], "training": data["training"]})
        walk("data.mine_hard_negatives", data["data"]["mine_hard_negatives"])
        from embedft.modeling import local_model_digest

        for key in ("model.base_model", "training.guide_model"):  # a local folder: what is in it, not only its name
            digest = local_model_digest(flat.get(key))
            if digest is not None:
                flat[key + "@files"] = digest
        param = self.config.space.get("model.base_model")
        if isinstance(param, CategoricalParam):
            for choice in param.choices:
                digest = local_model_digest(choice) if isinstance(choice, str) else None
                if digest is not None:
                    flat[f"space.model.base_model[{choice}]@files"] = digest
        searched = tuple(self.config.space)
        return {
            k: v for k, v in sorted(flat.items())
            if k not in self._NEUTRAL_BASE and not any(k.split("@")[0] == s or k.startswith(s + ".") for s in searched)
        }

    def _check_fingerprint(self, study, data_fingerprint: str) -> None:
        """Refuse a study made for another search (task, data or space); record it on a new one."""
        mine = self.study_fingerprint(data_fingerprint)
        theirs = study.user_attrs.get("embedft_fingerprint")
        if theirs is None:  # a new study (or one from an embedft that did not record it): its direction must agree
            if study.direction.name.lower() != mine["direction"]:
                theirs = {**mine, "task": "(unknown)", "metric": "(unknown)", "direction": study.direction.name.lower()}
            else:
                study.set_user_attr("embedft_fingerprint", mine)
                return
        differ = []
        if any(theirs.get(k) != mine[k] for k in ("task", "metric", "direction")):
            differ.append(("task", lambda fp: f"task {fp.get('task')} ({fp.get('metric')}, {fp.get('direction')})"))
        if theirs.get("data") != mine["data"]:
            differ.append(("data", lambda fp: f"data {fp.get('data')}"))
        keys = sorted(k for k in set(theirs.get("space") or {}) | set(mine["space"]) if (theirs.get("space") or {}).get(k) != mine["space"].get(k))
        if keys:
            differ.append(("space", lambda fp: "space " + ", ".join(f"{k}={_describe_distribution((fp.get('space') or {}).get(k))}" for k in keys)))
        if "base" in theirs:  # studies recorded before base settings were fingerprinted lack it: not compared
            base = sorted(k for k in set(theirs["base"]) | set(mine["base"]) if theirs["base"].get(k) != mine["base"].get(k))
            if base:
                differ.append(("base", lambda fp: "base " + ", ".join(f"{k}={(fp.get('base') or {}).get(k)!r}" for k in base[:5])))
        if not differ:
            return
        raise ConfigError(
            f"the study {self.config.study_name!r} in {redact_url(self.storage_url())} holds the trials of another search",
            field=", ".join(name for name, _ in differ),
            expected=" / ".join(show(theirs) for _, show in differ),
            found=" / ".join(show(mine) for _, show in differ),
            hint="Rerun it with the same task, data, space and base settings, or start a new study: set another study_name or output_dir",
        )

    def _data_splits(self):
        """The search's splits, built in memory (no model is loaded)."""
        from embedft.data import DatasetBuilder

        data_cfg = self.config.base.data
        if "data.max_train_pairs" in self.config.space:  # each trial cuts its own size from the full train split
            data_cfg = data_cfg.model_copy(update={"max_train_pairs": None})
        return DatasetBuilder(data_cfg, task=self.task.name).build()

    def _build_data(self, built=None) -> Path:
        """Build the splits once per search; trials load them from disk by fingerprint."""
        built = built if built is not None else self._data_splits()
        path = self.output_dir / "data" / built.report.fingerprint
        if not (path / "report.json").is_file():
            built.save(path)
        logger.info("search data\n%s", built.report.summary())
        return path

    def _tell(self, study, trial, result: TrialResult) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr("seconds", round(result.seconds, 3))
        trial.set_user_attr("train_seconds", round(result.train_seconds, 3))
        trial.set_user_attr("train_steps", result.train_steps)
        if result.state == "complete" and result.value is not None and math.isfinite(result.value):
            trial.set_user_attr("dev", result.dev)
            if result.model_path:
                trial.set_user_attr("model_path", result.model_path)
            study.tell(trial, result.value)
            self._keep_best_model(study, result)
        elif result.state == "pruned":
            reported = set(self._optuna_storage.get_trial(self._trial_id(trial.number)).intermediate_values)
            for step, value in result.intermediate:
                if step not in reported:
                    trial.report(value, step)
            study.tell(trial, state=TrialState.PRUNED)
            self._drop_trial_dir(result.number)
        else:
            trial.set_user_attr("error", (result.error or "no value returned")[:4000])
            study.tell(trial, state=TrialState.FAIL)
            self._drop_trial_dir(result.number)

    def _keep_best_model(self, study, result: TrialResult) -> None:
        """Keep only the best trial's model on disk (on the Volume for remote trials)."""
        if self.config.backend == "modal":
            best = study.best_trial.number if self.config.keep_best_model else None
            if best != result.number:
                self._remote.remove(self._remote_trial_dir(result.number))
            elif self._remote_best is not None and self._remote_best != best:
                self._remote.remove(self._remote_trial_dir(self._remote_best))
            self._remote_best = best if best is not None else self._remote_best
            return
        if not self.config.keep_best_model:
            self._drop_trial_dir(result.number)
            return
        best = study.best_trial.number
        trials_dir = self.output_dir / "trials"
        for child in trials_dir.iterdir() if trials_dir.is_dir() else []:
            if child.name.isdigit() and int(child.name) != best and int(child.name) not in self._running_numbers(study):
                remove_owned(child)

    @staticmethod
    def _running_numbers(study) -> set[int]:
        from optuna.trial import TrialState

        return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}

    def _drop_trial_dir(self, number: int) -> None:
        if self.config.backend == "modal":
            self._remote.remove(self._remote_trial_dir(number))
            return
        remove_owned(self.output_dir / "trials" / f"{number:04d}")

    @staticmethod
    def _best(study) -> tuple[int, float] | None:
        try:
            t = study.best_trial
        except ValueError:
            return None
        return t.number, t.value

    # ------------------------------------------------------------------ results
    def _write_tables(self, study) -> tuple[Path, Path]:
        rows = []
        retried = _retries(study)
        for t in study.get_trials(deepcopy=False):
            rows.append(
                {
                    "number": t.number,
                    "state": t.state.name,
                    "value": t.value,
                    **{f"param:{k}": mask_values(v) for k, v in t.params.items()},
                    "seconds": t.user_attrs.get("seconds"),
                    "train_seconds": t.user_attrs.get("train_seconds"),
                    "train_steps": t.user_attrs.get("train_steps"),
                    "last_step": max(t.intermediate_values) if t.intermediate_values else None,
                    "error": _error_line(t, retried),
                }
            )
        csv_path, json_path = self.output_dir / "trials.csv", self.output_dir / "trials.json"
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with replacing(csv_path) as tmp_csv, tmp_csv.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        atomic_write_text(json_path, json.dumps(rows, indent=2, default=str))
        return csv_path, json_path

    def _finish(self, study, data_dir: Path, gpu_seconds: float | None = None) -> SearchResult:
        from optuna.trial import TrialState

        csv_path, json_path = self._write_tables(study)
        counts = {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        result = SearchResult(
            study_name=self.config.study_name,
            storage=redact_url(self.storage_url()),
            n_complete=counts[TrialState.COMPLETE],
            n_pruned=counts[TrialState.PRUNED],
            n_failed=counts[TrialState.FAIL],
            best_number=None,
            best_value=None,
            trials_csv=csv_path,
            trials_json=json_path,
            output_dir=self.output_dir,
            train_seconds=sum(float(t.user_attrs.get("train_seconds") or 0.0) for t in study.get_trials(deepcopy=False)),
            gpu_seconds=gpu_seconds,
        )
        best = self._best(study)
        if best is not None:
            best_trial = study.best_trial
            best_cfg = resolve_params(self.config.base, best_trial.params).model_copy(update={"output_dir": str(self.output_dir / "best-retrained"), "overwrite": False})
            config_path = best_cfg.save(self.output_dir / "best_config.yaml")
            result.best_number, result.best_value, result.best_params = best_trial.number, best_trial.value, mask_values(dict(best_trial.params))
            result.best_config_path = config_path
            result.best_model_path, result.best_test, result.base_test = self._best_model_and_test(best_trial, best_cfg, data_dir)
        result.plots = self._plots(study)
        atomic_write_text(self.output_dir / "search_result.json", result.model_dump_json(indent=2))
        return result

    def _best_model_and_test(self, best_trial, best_cfg: RunConfig, data_dir: Path):
        """The best model (kept or retrained) and its test metrics next to the base model's."""
        from embedft.data import BuiltDataset
        from embedft.training import Trainer

        built = BuiltDataset.load(data_dir)
        if self.config.retrain_best:
            run = best_cfg.model_copy(update={"output_dir": str(self.output_dir / "best"), "overwrite": True})
            res = Trainer(run, data=built).fit()
            return res.model_path, res.after.test, (res.before.test if res.before else {})
        kept = self.output_dir / "trials" / f"{best_trial.number:04d}" / "model"
        if self.config.backend == "modal" and self.config.keep_best_model and not kept.is_dir():
            try:  # the best model lives on the Volume: pull it next to the study
                self._remote.pull(self._remote_trial_dir(best_trial.number), kept.parent, kind="run")
            except Exception as exc:
                logger.warning("could not pull the best model from the volume: %s", exc)
        best_dir = self.output_dir / "best"
        if kept.is_dir():
            tmp = new_scratch(best_dir)
            try:
                shutil.copytree(kept, tmp / "model")
                for extra in ("config.yaml", "metrics.json"):
                    if (kept.parent / extra).is_file():
                        shutil.copy2(kept.parent / extra, tmp / extra)
                replace_dir(tmp, best_dir, kind="run", overwrite=True)
            finally:
                remove_owned(tmp)
        model_path = best_dir / "model" if (best_dir / "model").is_dir() else None
        if model_path is None:
            return None, {}, {}
        trainer = Trainer(best_cfg, data=built)
        tuned = trainer.evaluate(str(model_path))
        base = self._baseline(trainer, best_cfg)
        return model_path, tuned.test, base

    def _baseline(self, trainer, cfg: RunConfig) -> dict[str, float]:
        """Base-model test metrics, computed once per base model and cached in the run dir."""
        import hashlib

        built = trainer.build_data()
        from embedft.modeling import local_model_digest

        identity = [cfg.model.base_model, local_model_digest(cfg.model.base_model), cfg.model.max_seq_length, built.report.fingerprint]
        key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
        path = self.output_dir / "baselines" / f"{key}.json"
        if path.is_file():
            return json.loads(path.read_text())["test"]
        base_cfg = cfg.model.model_copy(update={"dense": None, "freeze_backbone": False})
        from embedft.modeling import load_model, resolve_device

        report = trainer._evaluate(load_model(base_cfg, resolve_device(cfg.training.device)), built)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"base_model": cfg.model.base_model, "test": report.test, "dev": report.dev}, indent=2))
        return report.test

    def _plots(self, study) -> list[Path]:
        """Optimisation history, importances, intermediate values and the learning curve (PNG)."""
        from optuna.trial import TrialState

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            return []
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ovm

        out = []
        plots_dir = self.output_dir / "plots"
        plots_dir.mkdir(exist_ok=True)
        makers: list[tuple[str, Callable[[], Any]]] = [
            ("optimization_history", lambda: ovm.plot_optimization_history(study)),
            ("intermediate_values", lambda: ovm.plot_intermediate_values(study)),
        ]
        varying = {k for t in complete for k in t.params if len({json.dumps(x.params.get(k)) for x in complete}) > 1}
        if len(complete) >= 2 and varying:
            makers.append(("param_importances", lambda: ovm.plot_param_importances(study)))
        for name, make in makers:
            try:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
                    ax = make()
                fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                path = plots_dir / f"{name}.png"
                _save_figure(fig, path)
                plt.close(fig)
                out.append(path)
            except Exception as exc:  # a plot is never worth failing a finished search
                logger.warning("could not draw %s: %s", name, exc)
        if "data.max_train_pairs" in self.config.space:
            pts = sorted((t.params["data.max_train_pairs"], t.value) for t in complete if t.params.get("data.max_train_pairs") is not None)
            if pts:
                fig, ax = plt.subplots(figsize=(6, 4))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o")
                ax.set_xlabel("training pairs")
                ax.set_ylabel(f"dev {self.task.primary_metric}")
                ax.set_title("learning curve")
                path = plots_dir / "learning_curve.png"
                _save_figure(fig, path)
                plt.close(fig)
                out.append(path)
        return out


def _grid_sampler(search_space: dict[str, list], seed: int | None):
    """Optuna's ``GridSampler`` for ask/tell: it never calls ``study.stop()``.

    ``GridSampler.after_trial`` stops the study once the last grid point is told, and
    ``study.stop()`` raises ``RuntimeError`` outside ``study.optimize``; the driver checks
    :func:`_grid_exhausted` before each ``ask`` instead.
    """
    import optuna

    class AskTellGridSampler(optuna.samplers.GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            """Nothing to do: the driver stops asking when the grid is exhausted."""

    return AskTellGridSampler(search_space, seed=seed)


def _grid_exhausted(study) -> bool:
    """Whether the study's grid sampler has tried every grid point and no trial is queued."""
    import optuna
    from optuna.trial import TrialState

    sampler = study.sampler
    if not isinstance(sampler, optuna.samplers.GridSampler) or not sampler.is_exhausted(study):
        return False
    return not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


def _save_figure(fig: Any, path: Path) -> None:
    """Save a plot through a temporary file and a rename (a file hard-linked elsewhere is never rewritten)."""
    with replacing(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")


def format_trials(rows: list[dict[str, Any]], best: int | None = None, max_error: int = 60) -> str:
    """The trials table as aligned text: number, state, value, parameters, seconds, error."""
    params = list(dict.fromkeys(k for r in rows for k in r if k.startswith("param:")))
    header = ["#", "state", "value", *(k.split(".")[-1] for k in params), "seconds", "error"]

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}"
        return str(value)

    table = [header]
    for r in rows:
        mark = "*" if r["number"] == best else ""
        error = (r.get("error") or "")[:max_error]
        table.append([f"{r['number']}{mark}", r["state"], cell(r.get("value")), *(cell(r.get(k)) for k in params), cell(r.get("seconds")), error or "-"])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table)


def _retries(study) -> dict[int, int]:
    """For each trial that Optuna's retry callback queued again: the number of its retry."""
    return {t.system_attrs["retry_history"][-1]: t.number for t in study.get_trials(deepcopy=False) if t.system_attrs.get("retry_history")}


def _error_line(t, retried: dict[int, int]) -> str | None:
    """The first line of a trial's error; a trial failed without one was failed as stale (no heartbeat)."""
    error = t.user_attrs.get("error")
    if error:
        return error.splitlines()[0] if error.splitlines() else error
    if t.state.name != "FAIL":
        return None
    again = f"; queued again as trial {retried[t.number]}" if t.number in retried else ""
    return f"interrupted: its driver stopped recording heartbeats{again}"


def _describe_distribution(dist: dict[str, Any] | None) -> str:
    """A short form of an Optuna distribution's JSON for an error line."""
    if dist is None:
        return "absent"
    kind = str(dist.get("name", "")).replace("Distribution", "").lower()
    return kind + json.dumps(dist.get("attributes", {}), sort_keys=True, separators=(",", ":"))


class _StaleTrialRetry:
    """The storage's heartbeat-stale callback: Optuna's retry callback queues the trial again, and its folder goes."""

    def __init__(self, retry: Callable[[Any, Any], None], output_dir: Path) -> None:
        self.retry, self.output_dir = retry, output_dir

    def __call__(self, study, trial) -> None:
        self.retry(study, trial)
        logger.warning("trial %d was interrupted (its driver stopped recording heartbeats); marked failed and queued again", trial.number)
        remove_owned(self.output_dir / "trials" / f"{trial.number:04d}")


class _Heartbeat:
    """Records a heartbeat for each trial this driver runs, every ``interval`` seconds, from a thread.

    A thread rather than the driver loop: an in-process trial holds the loop for its whole run.
    The heartbeats stop when the driver process dies, and then the trial is stale.
    """

    def __init__(self, storage, interval: int) -> None:
        import threading

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
        except Exception as exc:  # a lost connection: the next beat retries; the trial stays alive for grace_period
            logger.warning("could not record a heartbeat (%s); retrying", type(exc).__name__)


class _Progress:
    """A progress bar over finished trials with the best value so far (CLI only when enabled)."""

    enabled = False

    def __init__(self, total: int, greater_is_better: bool) -> None:
        self.bar = None
        if _Progress.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="trials", unit="trial")

    def update(self, done: int, best: tuple[int, float] | None, result: TrialResult | None = None) -> None:
        if result is not None:
            logger.info("trial %d %s value=%s (%.1fs)", result.number, result.state, result.value, result.seconds)
        if self.bar is None:
            return
        self.bar.n = min(done, self.bar.total)
        if best is not None:
            self.bar.set_postfix_str(f"best #{best[0]} = {best[1]:.4f}")
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
