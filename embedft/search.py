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

from pydantic import BaseModel, ConfigDict, Field, model_validator

from embedft.config import ModalConfig, RunConfig, _validate, load_config
from embedft.errors import ConfigError, EmbedftError
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    seed: int | None = 0
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


class SearchConfig(_Strict):
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
    storage: str | None = None
    study_name: str = Field("embedft", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    workers: int = Field(1, ge=1)
    executor: Literal["auto", "inprocess", "process"] = "auto"
    backend: Literal["local", "modal"] = "local"
    modal: ModalConfig = Field(default_factory=ModalConfig)
    output_dir: str = "runs/search"
    keep_best_model: bool = True
    retrain_best: bool = False

    @model_validator(mode="after")
    def _valid_space(self) -> SearchConfig:
        task = get_task(self.base.task)
        base = self.base.to_dict()
        for key, param in self.space.items():
            sample = param.low if not isinstance(param, CategoricalParam) else next((c for c in param.choices if c is not None), None)
            try:
                resolve_params(self.base, {key: sample}, base)
            except ConfigError as exc:
                raise ConfigError(f"space key {key!r}: {exc.message}", field=f"space.{key}", expected=exc.expected, found=exc.found) from None
            if key == "training.loss":
                bad = [c for c in param.grid() if c not in task.losses] if isinstance(param, CategoricalParam) else ["(not categorical)"]
                if bad:
                    raise ConfigError(
                        f"space key 'training.loss' has losses the task {task.name!r} does not allow",
                        field="space.training.loss",
                        expected=f"losses among {sorted(task.losses)}",
                        found=bad,
                    )
        if self.sampler.type == "grid":
            for key, param in self.space.items():
                if isinstance(param, FloatParam):
                    raise ValueError(f"the grid sampler cannot search the float range {key!r}; use categorical choices")
        if self.executor == "inprocess" and self.workers > 1:
            raise ValueError("executor 'inprocess' runs one trial at a time; use executor 'process' for workers > 1")
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> SearchConfig:
        """Read a search config from YAML or JSON; errors name the field."""
        return load_config(path, cls)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        """Validate a dict (e.g. parsed YAML); errors name the field."""
        return _validate(cls, data, "search config")

    def save(self, path: str | Path, *, redact: bool = False) -> Path:
        """Write the config as YAML; ``redact`` masks a password in the storage URL (run-folder copies)."""
        import yaml

        data = self.model_dump(mode="json")
        if redact and data.get("storage"):
            data["storage"] = _redact(data["storage"])
        path = Path(path)
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path


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
    return _validate(RunConfig, data, "search parameters")


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
    ) -> None:
        self.config = config if isinstance(config, SearchConfig) else SearchConfig.from_dict(config)
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

    def _storage(self):
        if self.config.storage:
            return self.config.storage
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(self.output_dir / "study.journal")))

    def _make_sampler(self):
        import optuna

        if self._sampler is not None:
            return self._sampler
        s = self.config.sampler
        if s.type == "random":
            return optuna.samplers.RandomSampler(seed=s.seed)
        if s.type == "grid":
            return optuna.samplers.GridSampler({k: p.grid() for k, p in self.config.space.items()}, seed=s.seed)
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
        self.output_dir.mkdir(parents=True, exist_ok=True)
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
            raise ConfigError(f"cannot open the study: {exc}", field="storage", expected="a study with the same direction", found=_redact(self.config.storage) if self.config.storage else "journal") from None
        except Exception as exc:  # a database that cannot be reached; its message never carries the password
            raise ConfigError(
                f"cannot open the study storage: {type(exc).__name__}: {_redact(str(exc)).splitlines()[0]}",
                field="storage",
                expected="a reachable Optuna storage",
                found=_redact(self.config.storage) if self.config.storage else "journal",
            ) from None

    # ------------------------------------------------------------------ run
    def run(self) -> SearchResult:
        """Run (or resume) the search until ``n_trials`` trials completed or were pruned."""
        import optuna
        from optuna.trial import TrialState

        cfg = self.config
        if cfg.backend == "modal" and self._remote is None:
            import embedft.modal_backend  # noqa: F401  (fails now, naming the install command, when modal is absent)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(self.output_dir / "search.yaml", redact=True)
        study = self.load_study()
        self._recover_interrupted(study)
        data_dir = self._build_data()
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

        reported: dict[int, set[int]] = {}

        def on_report(number: int, step: int, value: float) -> bool:
            trial = running.get(number)
            if trial is None:
                return False
            steps = reported.setdefault(number, set())
            if step not in steps:  # a retried remote attempt reports its steps again: the first value stands
                steps.add(step)
                trial.report(value, step)
            return bool(trial.should_prune())

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
                while not timed_out and len(running) < executor.max_parallel and finished() + len(running) < cfg.n_trials:
                    trial = study.ask()
                    trial.set_user_attr("driver", f"{socket.gethostname()}:{os.getpid()}")
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
                    break
                for result in executor.wait(on_report, timeout=1.0):
                    trial = running.pop(result.number)
                    self._tell(study, trial, result)
                    failures += result.state == "fail"
                    progress.update(finished(), self._best(study), result)
                    for cb in self.on_trial_end:
                        cb(result, study)
                self._write_tables(study)
        finally:
            executor.close()
            progress.close()
        gpu_seconds = getattr(executor, "gpu_seconds", None)
        if gpu_seconds is not None:
            logger.info("GPU-seconds used in this run: %.0f (%s, up to %d containers)", gpu_seconds, cfg.modal.gpu, cfg.modal.max_containers)
        return self._finish(study, data_dir, gpu_seconds)

    @staticmethod
    def _cancel(study, running: dict, reason: str) -> None:
        """Record trials still running as failed with ``reason``; closing the executor then stops them."""
        from optuna.trial import TrialState

        for number, trial in list(running.items()):
            trial.set_user_attr("error", reason)
            study.tell(trial, state=TrialState.FAIL)
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
        """Trials left RUNNING by a driver that died are marked failed and queued again."""
        from optuna.trial import TrialState

        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted: the search driver stopped while this trial ran")
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            if t.params:
                study.enqueue_trial(t.params, skip_if_exists=False)
            logger.warning("trial %d was interrupted; marked failed and queued again", t.number)
            shutil.rmtree(self.output_dir / "trials" / f"{t.number:04d}", ignore_errors=True)

    def _build_data(self) -> Path:
        """Build the splits once per search; trials load them from disk by fingerprint."""
        from embedft.data import DatasetBuilder

        data_cfg = self.config.base.data
        if "data.max_train_pairs" in self.config.space:  # each trial cuts its own size from the full train split
            data_cfg = data_cfg.model_copy(update={"max_train_pairs": None})
        built = DatasetBuilder(data_cfg, task=self.task.name).build()
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
            reported = set(trial.storage.get_trial(trial._trial_id).intermediate_values)
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
                shutil.rmtree(child, ignore_errors=True)

    @staticmethod
    def _running_numbers(study) -> set[int]:
        from optuna.trial import TrialState

        return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}

    def _drop_trial_dir(self, number: int) -> None:
        if self.config.backend == "modal":
            self._remote.remove(self._remote_trial_dir(number))
            return
        shutil.rmtree(self.output_dir / "trials" / f"{number:04d}", ignore_errors=True)

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
        for t in study.get_trials(deepcopy=False):
            rows.append(
                {
                    "number": t.number,
                    "state": t.state.name,
                    "value": t.value,
                    **{f"param:{k}": v for k, v in t.params.items()},
                    "seconds": t.user_attrs.get("seconds"),
                    "train_seconds": t.user_attrs.get("train_seconds"),
                    "train_steps": t.user_attrs.get("train_steps"),
                    "last_step": max(t.intermediate_values) if t.intermediate_values else None,
                    "error": (t.user_attrs.get("error") or "").splitlines()[0] if t.user_attrs.get("error") else None,
                }
            )
        csv_path, json_path = self.output_dir / "trials.csv", self.output_dir / "trials.json"
        columns = list(dict.fromkeys(k for r in rows for k in r))
        tmp_csv, tmp_json = csv_path.with_suffix(".csv.tmp"), json_path.with_suffix(".json.tmp")
        with tmp_csv.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        tmp_json.write_text(json.dumps(rows, indent=2, default=str), encoding="utf-8")
        os.replace(tmp_csv, csv_path)
        os.replace(tmp_json, json_path)
        return csv_path, json_path

    def _finish(self, study, data_dir: Path, gpu_seconds: float | None = None) -> SearchResult:
        from optuna.trial import TrialState

        csv_path, json_path = self._write_tables(study)
        counts = {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        result = SearchResult(
            study_name=self.config.study_name,
            storage=_redact(self.storage_url()),
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
            result.best_number, result.best_value, result.best_params = best_trial.number, best_trial.value, dict(best_trial.params)
            result.best_config_path = config_path
            result.best_model_path, result.best_test, result.base_test = self._best_model_and_test(best_trial, best_cfg, data_dir)
        result.plots = self._plots(study)
        (self.output_dir / "search_result.json").write_text(result.model_dump_json(indent=2), encoding="utf-8")
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
                self._remote.pull(self._remote_trial_dir(best_trial.number), kept.parent)
            except Exception as exc:
                logger.warning("could not pull the best model from the volume: %s", exc)
        best_dir = self.output_dir / "best"
        if kept.is_dir():
            if best_dir.exists():
                shutil.rmtree(best_dir)
            best_dir.mkdir(parents=True)
            shutil.copytree(kept, best_dir / "model")
            for extra in ("config.yaml", "metrics.json"):
                if (kept.parent / extra).is_file():
                    shutil.copy2(kept.parent / extra, best_dir / extra)
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
        key = hashlib.sha256(json.dumps([cfg.model.base_model, cfg.model.max_seq_length, built.report.fingerprint]).encode()).hexdigest()[:16]
        path = self.output_dir / "baselines" / f"{key}.json"
        if path.is_file():
            return json.loads(path.read_text())["test"]
        base_cfg = cfg.model.model_copy(update={"dense": None, "freeze_backbone": False})
        from embedft.modeling import load_model, resolve_device

        report = trainer._evaluate(load_model(base_cfg, resolve_device(cfg.training.device)), built)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"base_model": cfg.model.base_model, "test": report.test, "dev": report.dev}, indent=2))
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
                fig.savefig(path, dpi=100, bbox_inches="tight")
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
                fig.savefig(path, dpi=100, bbox_inches="tight")
                plt.close(fig)
                out.append(path)
        return out


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


def _redact(url: str) -> str:
    """Hide a password in a storage URL."""
    import re

    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)


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
