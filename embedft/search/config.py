"""The search config: a base :class:`~embedft.config.RunConfig`, a space over its dotted fields, the budget.

>>> from embedft.search import SearchConfig
>>> cfg = SearchConfig.from_dict({"space": {"training.epochs": {"type": "int", "low": 1, "high": 3}}})
>>> cfg.space["training.epochs"].grid(), cfg.executor
([1, 2, 3], 'auto')
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator
from typing_extensions import Self

from embedft.config import ConfigBase, ModalConfig, RunConfig, Seed, StrictModel, validate_config
from embedft.errors import ConfigError
from embedft.files import atomic_write_text
from embedft.redact import mask_values, redact_url, url_problem
from embedft.search.preset import PRESETS, auto_space
from embedft.tasks import get_task

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["FloatParam", "IntParam", "CategoricalParam", "Param", "SamplerConfig", "PrunerConfig", "SearchConfig", "resolve_params"]

logger = logging.getLogger(__name__)


class FloatParam(StrictModel):
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

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        """Sample a value for ``name`` from an Optuna trial."""
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def grid(self) -> list:
        """Always raises: a float range has no finite grid."""
        raise ValueError("the grid sampler needs int or categorical parameters, not float ranges")


class IntParam(StrictModel):
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

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        """Sample a value for ``name`` from an Optuna trial."""
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def grid(self) -> list:
        """Every value, for the grid sampler.

        >>> IntParam(type="int", low=1000, high=4000, step=1000).grid()
        [1000, 2000, 3000, 4000]
        """
        return list(range(self.low, self.high + 1, self.step))


class CategoricalParam(StrictModel):
    """One of ``choices`` (None, bool, int, float or str)."""

    type: Literal["categorical"]
    choices: list[bool | int | float | str | None] = Field(..., min_length=1)

    def suggest(self, trial: optuna.Trial, name: str) -> bool | int | float | str | None:
        """Sample a value for ``name`` from an Optuna trial."""
        return trial.suggest_categorical(name, self.choices)

    def grid(self) -> list:
        """Every choice, for the grid sampler."""
        return list(self.choices)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class SamplerConfig(StrictModel):
    """``tpe`` (default), ``random`` or ``grid``; seeded."""

    type: Literal["tpe", "random", "grid"] = "tpe"
    seed: Seed | None = 0
    n_startup_trials: int = Field(5, ge=0)


class PrunerConfig(StrictModel):
    """``median`` (default), ``percentile``, ``successive_halving``, ``hyperband`` or ``none``.

    ``median``/``percentile`` stop a trial whose intermediate dev score is below the median (the
    ``percentile``-th percentile) of earlier trials at the same step, after ``n_startup_trials``
    trials and ``n_warmup_steps`` steps. ``successive_halving``/``hyperband`` keep the top
    1/``reduction_factor`` of trials at rungs of ``min_resource`` x ``reduction_factor``^k steps
    (``min_resource`` null: chosen by Optuna, or 1 for hyperband).

    ``grow_train_data`` (successive halving or hyperband, with ``min_resource`` set for successive
    halving) also grows each trial's training data with the rungs: before rung ``r`` a trial draws
    its batches from the first ``r / total steps`` of one fixed, label-stratified order of the
    training rows, so a trial pruned early has trained on a small pool and one that runs to its end
    has drawn every row (in at least one epoch). It sets the trials' ``training.data_growth``, which ``best_config.yaml``
    records.
    """

    type: Literal["median", "percentile", "successive_halving", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(2, ge=0)
    n_warmup_steps: int = Field(0, ge=0)
    percentile: float = Field(50.0, gt=0, lt=100)
    min_resource: int | None = Field(None, ge=1)
    reduction_factor: int = Field(3, ge=2)
    grow_train_data: bool = False


# Keys whose values come from a sampled parameter in another form.
_DENSE_OUT = "model.dense.out_features"
_DENSE_ACT = "model.dense.activation"


class SearchConfig(ConfigBase):
    """A base :class:`RunConfig` and a search space over its dotted fields.

    ``executor`` says where trials run: ``inprocess`` (one at a time in this process),
    ``process`` (``workers`` local processes), ``modal`` (Modal GPUs, settings under ``modal``),
    or ``auto`` (inprocess for one worker, else process). The older ``backend: local|modal``
    is still read, with a warning: ``modal`` as ``executor: modal``, ``local`` as the
    ``executor`` given (``auto`` in place of ``modal``).

    Example YAML::

        base: {data: {source: pairs.tsv}, training: {eval_steps: 50}}
        space:
          training.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-4, log: true}
          training.loss: {type: categorical, choices: [OnlineContrastiveLoss, CoSENTLoss]}
          model.dense.out_features: {type: categorical, choices: [null, 128, 256]}  # null: no head
          data.max_train_pairs: {type: int, low: 500, high: 4000, step: 500}      # a learning curve
        n_trials: 20

    What a trial pays besides its training steps: ``reuse_base_model`` (default on) copies the
    base model each worker keeps in memory instead of reading it from disk per trial;
    ``dev_subsample`` (default 1000 rows; null: all of dev) is the size of the fixed subsample of
    dev, whole groups stratified by label, on which the intermediate scores the pruner sees are
    computed; a completed trial's value is always its score on the whole dev split.

    ``second_objective`` (``dimension``: the trial's embedding size, or ``latency``: its encode
    milliseconds per text, both minimised) makes the study multi-objective: the result holds the
    Pareto front, and the recommended trial is the front's smallest (fastest) one whose dev score
    is within ``pareto_tolerance`` of the front's best. Such a study is not pruned (Optuna prunes
    single-objective studies only): the pruner setting is not used, with a warning.

    ``warm_start`` (an earlier search folder, or a storage URL holding a study named
    ``study_name``) queues the ``warm_start_trials`` best configurations of that study first,
    without the parameters this space no longer has.
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
    executor: Literal["auto", "inprocess", "process", "modal"] = "auto"
    modal: ModalConfig = Field(default_factory=ModalConfig)
    output_dir: str = "runs/search"
    keep_best_model: bool = True
    retrain_best: bool = False
    dev_subsample: int | None = Field(1000, ge=10)
    reuse_base_model: bool = True
    second_objective: Literal["dimension", "latency"] | None = None
    pareto_tolerance: float = Field(0.005, ge=0)
    warm_start: str | None = Field(None, min_length=1)
    warm_start_trials: int = Field(5, ge=1)

    _preset: str | None = PrivateAttr(None)  # the preset the space was filled from: with_overrides fills it again

    @model_validator(mode="wrap")
    @classmethod
    def _preset_space(cls, data: Any, handler: Any) -> Any:
        """``space: auto``: the space filled for the base config's task and the budget (:mod:`embedft.search.preset`)."""
        preset = data.get("space") if isinstance(data, dict) and isinstance(data.get("space"), str) else None
        if preset is not None:
            if preset not in PRESETS:
                raise ConfigError("unknown search-space preset", field="space", expected=f"a mapping of config fields to ranges, or one of {list(PRESETS)}", found=preset)
            data = {**data, "space": _preset_space(preset, data)}
        model = handler(data)
        model._preset = preset
        return model

    @property
    def preset(self) -> str | None:
        """The preset the space was filled from (``auto``), or None for a space written out."""
        return self._preset

    def with_overrides(self, assignments: list[str] | dict[str, Any] | str, *, source: str = "--set") -> Self:
        """A copy with dotted-key overrides applied; a space filled from a preset is filled again for the new
        settings (another ``n_trials`` or ``base.task`` resizes it), unless the overrides give a space."""
        if self._preset is None:
            return super().with_overrides(assignments, source=source)
        blank = self.model_copy(update={"space": {}})
        blank._preset = None
        updated = blank.with_overrides(assignments, source=source)
        if updated.space or updated._preset is not None:
            return updated
        return validate_config(type(self), {**updated.to_dict(), "space": self._preset}, source)

    @model_validator(mode="before")
    @classmethod
    def _backend_is_executor(cls, data: Any) -> Any:
        """Read the old ``backend: local|modal`` setting as ``executor``, as embedft 0.1 did (and ``--backend``)."""
        if not isinstance(data, dict) or "backend" not in data:
            return data
        data = dict(data)
        backend, executor = data.pop("backend"), data.get("executor", "auto")
        if backend not in ("local", "modal"):
            raise ValueError(f"backend is now spelled executor (inprocess | process | modal); found backend: {backend}")
        data["executor"] = "modal" if backend == "modal" else ("auto" if executor == "modal" else executor)
        logger.warning("the search setting backend: %s is deprecated; write executor: %s", backend, data["executor"])
        return data

    @field_validator("storage")
    @classmethod
    def _readable_storage(cls, value: str | None) -> str | None:
        if value and (problem := url_problem(value)):  # refused before any driver sees it (one would echo pieces of the password)
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
        if self.pruner.grow_train_data:
            self.trial_base()  # refuses a pruner without rungs, or a base config that cannot grow its data, now
        return self

    def trial_base(self) -> RunConfig:
        """The base config every trial starts from: ``base``, with ``training.data_growth`` set to the pruner's
        rungs when ``pruner.grow_train_data``."""
        p = self.pruner
        if not p.grow_train_data:
            return self.base
        if self.base.training.data_growth is not None:
            raise ConfigError(
                "the training data growth is set twice",
                field="pruner.grow_train_data",
                expected="either pruner.grow_train_data (the pruner's rungs) or base.training.data_growth",
                found=f"both (base first_step {self.base.training.data_growth.first_step})",
            )
        if self.base.training.extra_losses:
            raise ConfigError(
                "growing the training data needs one training dataset",
                field="pruner.grow_train_data",
                expected="base.training.extra_losses: [] with grow_train_data",
                found=f"extra_losses {self.base.training.extra_losses}",
            )
        if p.type not in ("successive_halving", "hyperband") or self.second_objective is not None:
            raise ConfigError(
                "growing the training data with the rungs needs a pruner with rungs",
                field="pruner.grow_train_data",
                expected="pruner.type successive_halving or hyperband, and no second_objective (Optuna prunes single-objective studies only)",
                found=f"pruner.type {p.type}" + (f", second_objective {self.second_objective}" if self.second_objective else ""),
            )
        first = p.min_resource or (1 if p.type == "hyperband" else None)
        if first is None:
            raise ConfigError(
                "growing the training data needs the first rung",
                field="pruner.min_resource",
                expected="the steps of the first rung (for example training.eval_steps)",
                found="null (chosen by Optuna during the search)",
            )
        data = self.base.to_dict()
        data["training"]["data_growth"] = {"first_step": first, "factor": p.reduction_factor}
        return validate_config(RunConfig, data, "pruner.grow_train_data")

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

    def base_models(self) -> list[str]:
        """The base models trials may load: the base config's and every searched ``model.base_model`` choice."""
        param = self.space.get("model.base_model")
        choices = [c for c in param.choices if isinstance(c, str)] if isinstance(param, CategoricalParam) else []
        return list(dict.fromkeys([self.base.model.base_model, *choices]))


def _preset_space(preset: str, data: dict[str, Any]) -> dict[str, Any]:
    """The space ``preset`` gives the raw search config ``data`` (empty when its base is invalid: that error is reported with its field)."""
    base = data.get("base", {})
    try:
        run = base if isinstance(base, RunConfig) else RunConfig.model_validate(base)
    except ValueError:
        return {}
    n_trials, timeout = data.get("n_trials", SearchConfig.model_fields["n_trials"].default), data.get("timeout")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        return {}  # the budget's own error is reported with its field
    return auto_space(run, n_trials, timeout if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) else None)


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
    """The base config with sampled parameters applied (``model.dense.out_features=None`` drops the head).

    >>> resolve_params(RunConfig(), {"training.epochs": 3, "model.dense.out_features": 64}).model.dense.out_features
    64
    """
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
