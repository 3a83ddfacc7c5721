"""One search trial as a pure function: ``run_trial(TrialConfig, report) -> TrialResult``.

Every executor (in-process, local processes, Modal) runs this same function. The
``report(step, dev_score) -> bool`` callable is the pruning channel: it carries an
intermediate dev score to the driver and returns True when the driver says prune.

What every trial pays besides its training steps is kept small: the base model is read from
disk once per worker process and copied from memory per trial (:func:`worker_models`), and the
intermediate dev scores the pruner sees are computed on a fixed subsample of dev
(:func:`dev_subsample`) while the trial's final score uses the whole dev split. Each result
carries its cost breakdown (load, tokenise, train, evaluate seconds).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from embedft.config import RunConfig

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from embedft.modeling import BaseModelCache

__all__ = ["TrialConfig", "TrialResult", "run_trial", "Report", "accelerator", "dev_subsample", "worker_models"]

logger = logging.getLogger(__name__)

Report = Callable[[int, float], bool]
"""``report(step, dev value) -> prune?``: how a trial hands intermediate scores to the driver."""


class TrialConfig(BaseModel):
    """Everything a trial needs: its resolved run config and where the built splits are."""

    model_config = ConfigDict(extra="forbid")

    number: int
    params: dict[str, object]
    run: RunConfig
    data_dir: str
    baseline: bool = False  # also measure the base model (a single training run, not a search trial)
    evaluate_test: bool = False  # search trials never look at test
    reuse_base_model: bool = True  # copy the base model this worker keeps in memory instead of reading it from disk
    dev_subsample: int | None = None  # intermediate (pruning) scores on this many dev rows, whole groups; None: all of dev
    dev_subsample_seed: int = 0
    second_objective: str | None = Field(None, pattern="^(dimension|latency)$")  # also measure the embedding size or encode ms per text


class TrialResult(BaseModel):
    """How a trial ended: its dev score, intermediate scores, timings, error and model path."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")  # a NaN metric crosses to the driver as NaN, not null

    number: int
    state: Literal["complete", "pruned", "fail"]
    value: float | None = None
    dev: dict[str, float] = {}
    intermediate: list[tuple[int, float]] = []
    error: str | None = None
    seconds: float = 0.0
    train_seconds: float = 0.0  # training steps only (dev evaluations during training are in eval_seconds)
    load_seconds: float = 0.0  # the base model: read from disk, or copied from this worker's memory
    tokenise_seconds: float = 0.0  # tokenising, for training and for evaluation (inside train and eval seconds)
    eval_seconds: float = 0.0  # dev evaluations during training (on the subsample) and the final one (all of dev)
    train_steps: int = 0
    train_pairs: int = 0
    report_split: str | None = None  # what the intermediate scores were computed on, e.g. "dev subsample: 1000 of 5400 rows"
    objective2: float | None = None  # the second objective: embedding dimension, or encode milliseconds per text
    model_path: str | None = None
    train_result: dict | None = None  # the full TrainResult (JSON) when baseline or test was asked for
    gpu: str | None = None  # the GPU the trial ran on, read inside the trial (None: no CUDA GPU)
    cuda: str | None = None  # the CUDA version of the torch that ran it
    torch: str | None = None  # the torch version that ran it
    bf16: bool | None = None  # whether its GPU supports bf16 (None: no CUDA GPU)


class _Pruned(Exception):
    pass


def run_trial(config: TrialConfig, report: Report | None = None) -> TrialResult:
    """Train one trial on the saved splits; dev only (the test split is never evaluated here)."""
    from embedft.data import BuiltDataset
    from embedft.training import Trainer

    t0 = time.perf_counter()
    intermediate: list[tuple[int, float]] = []
    primary: str | None = None  # known once the trainer is built
    timer = _Timer()
    pairs = 0

    def hook(step: int, metrics: dict[str, float]) -> bool:
        timer.intermediate_eval += float(metrics.get("eval_runtime") or 0.0)
        value = metrics.get(primary) if primary is not None else None
        if value is None:
            return False
        intermediate.append((step, float(value)))
        if report is not None and report(step, float(value)):
            raise _Pruned(step)
        return False

    def ended(state: Literal["complete", "pruned", "fail"], **fields: Any) -> TrialResult:
        values: dict[str, Any] = {**timer.breakdown(), **accelerator(), **fields}
        return TrialResult(number=config.number, state=state, intermediate=intermediate, seconds=time.perf_counter() - t0, **values)

    try:
        built = BuiltDataset.load(config.data_dir)
        run = config.run.model_copy(update={"overwrite": True})
        evaluator = None
        timer.report_split = "dev"
        if config.dev_subsample is not None and len(built.dev) > config.dev_subsample:
            from embedft.tasks import get_task

            sub = dev_subsample(built.dev, config.dev_subsample, config.dev_subsample_seed)
            evaluator = get_task(run.task).evaluator_factory(sub, "dev", run.training.eval_batch_size, built.corpus)
            timer.report_split = f"dev subsample: {len(sub)} of {len(built.dev)} rows"
        models = _TimedModels(worker_models() if config.reuse_base_model else _no_reuse(), timer)
        trainer = Trainer(run, data=built, evaluator=evaluator, on_evaluate=[hook], reporter=timer, base_models=models)
        primary = trainer.task.primary_metric
        pairs = len(trainer.build_data().train)  # the trial's training set (its own cap), also for a pruned trial
        result = trainer.fit(baseline=config.baseline, evaluate_test=config.evaluate_test)
        full = result.model_dump(mode="json") if config.baseline or config.evaluate_test else None
        after = result.after
        objective2 = _second_objective(config, str(result.model_path), built) if config.second_objective else None
        return ended(
            "complete",
            value=after.dev_score,
            dev=after.dev,
            train_steps=result.train_steps,
            train_pairs=result.train_pairs,
            model_path=str(result.model_path),
            train_result=full,
            objective2=objective2,
        )
    except _Pruned as pruned:
        return ended("pruned", value=intermediate[-1][1] if intermediate else None, train_steps=int(pruned.args[0]), train_pairs=pairs)
    except Exception as exc:  # noqa: BLE001 - a failed trial is a result, never a crash of the search
        logger.warning("trial %d failed: %s: %s", config.number, type(exc).__name__, exc)
        return ended("fail", error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}")
    finally:
        _release_memory()


def dev_subsample(dev: pd.DataFrame, size: int, seed: int = 0) -> pd.DataFrame:
    """About ``size`` rows of ``dev``: whole groups (``component``), stratified by label, the same for the same inputs.

    Groups are drawn in a seeded order within each stratum (the label of a group's first row;
    one stratum for a task without labels), each stratum in proportion to its share of the rows,
    so the subsample keeps dev's balance and never splits a group. Rows keep dev's order.

    >>> import pandas as pd
    >>> dev = pd.DataFrame({"text1": list("abcdefgh"), "label": [1, 1, 0, 0] * 2, "component": [0, 0, 1, 1, 2, 2, 3, 3]})
    >>> sub = dev_subsample(dev, 4)
    >>> len(sub), sorted(sub["label"]), sub.equals(dev_subsample(dev, 4))
    (4, [0, 0, 1, 1], True)
    """
    import numpy as np

    if size >= len(dev):
        return dev
    groups = dev["component"] if "component" in dev.columns else dev.index.to_series()
    sizes = groups.value_counts(sort=False)
    labels = dev["label"].tolist() if "label" in dev.columns else [0] * len(dev)
    stratum: dict[Any, str] = {}
    for group, label in zip(groups, labels, strict=True):
        stratum.setdefault(group, repr(label))  # a group's stratum: its first row's label
    by_stratum: dict[str, list[Any]] = {}
    for group, key in stratum.items():
        by_stratum.setdefault(key, []).append(group)
    rng = np.random.default_rng(seed)
    keep: set[Any] = set()
    for key in sorted(by_stratum):
        members = sorted(by_stratum[key], key=repr)
        quota, taken = round(size * sum(int(sizes[g]) for g in members) / len(dev)), 0
        for i in rng.permutation(len(members)):
            if taken >= quota:
                break
            keep.add(members[i])
            taken += int(sizes[members[i]])
    return dev[groups.isin(keep).to_numpy()]


_WORKER_MODELS: list[BaseModelCache] = []  # this process's cache, made on first use


def worker_models() -> BaseModelCache:
    """This process's :class:`~embedft.modeling.BaseModelCache` (up to two base models), shared by the trials a worker runs."""
    if not _WORKER_MODELS:
        from embedft.modeling import BaseModelCache

        _WORKER_MODELS.append(BaseModelCache(max_models=2))  # two: a search over two base models copies both
    return _WORKER_MODELS[0]


def _no_reuse() -> BaseModelCache:
    from embedft.modeling import BaseModelCache

    return BaseModelCache(max_models=0)


class _Timer:
    """The trainer's reporter in a trial: the seconds of each phase, and the tokenising inside them."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self.tokenise = 0.0
        self.intermediate_eval = 0.0
        self.report_split: str | None = None

    @contextlib.contextmanager
    def phase(self, name: str, total: int | None = None) -> Iterator[_Timer]:
        t0 = time.perf_counter()
        try:
            yield self
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t0

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Nothing to draw."""

    def breakdown(self) -> dict[str, Any]:
        """The seconds of load, train (steps only), evaluate and tokenise, and what the intermediate scores used."""
        training = self.phases.get("training", 0.0)
        evaluations = min(training, self.intermediate_eval) + self.phases.get("final evaluation", 0.0) + self.phases.get("baseline evaluation", 0.0)
        return {
            "load_seconds": self.phases.get("base model", 0.0),
            "train_seconds": max(0.0, training - self.intermediate_eval),
            "eval_seconds": evaluations,
            "tokenise_seconds": self.tokenise,
            "report_split": self.report_split,
        }


class _TimedModels:
    """Hands the trainer its base model from ``cache``, with the model's tokenising timed into ``timer``."""

    def __init__(self, cache: BaseModelCache, timer: _Timer) -> None:
        self.cache, self.timer = cache, timer

    def get(self, source: str, device: str, trust_remote_code: bool = False) -> Any:
        model = self.cache.get(source, device, trust_remote_code)
        inputs: Any = model[0]  # the input module tokenises for the collator and for encode; a Dense head keeps it
        if not callable(getattr(inputs, "preprocess", None)):  # an input module of another kind: not timed
            return model
        preprocess, timer = inputs.preprocess, self.timer

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return preprocess(*args, **kwargs)
            finally:
                timer.tokenise += time.perf_counter() - t0

        inputs.preprocess = timed  # this copy only
        return model


def _second_objective(config: TrialConfig, model_path: str, built: Any) -> float:
    """The trained model's embedding dimension, or its encode milliseconds per text on up to 256 dev texts."""
    from sentence_transformers import SentenceTransformer

    from embedft.modeling import resolve_device

    model = SentenceTransformer(model_path, device=resolve_device(config.run.training.device))
    if config.second_objective == "dimension":
        return float(model.get_embedding_dimension() or 0)
    columns = [c for c in ("text1", "text2", "query", "anchor", "positive") if c in built.dev.columns]
    texts = [str(t) for c in columns for t in built.dev[c]][:256] or ["a text"]
    batch = config.run.training.eval_batch_size
    model.encode(texts[:batch], batch_size=batch, show_progress_bar=False)  # warm-up
    t0 = time.perf_counter()
    model.encode(texts, batch_size=batch, show_progress_bar=False)
    return 1000.0 * (time.perf_counter() - t0) / len(texts)


def accelerator() -> dict[str, Any]:
    """What this process trains on: ``{"gpu": name, "cuda": version, "torch": version, "bf16": supported}``.

    ``gpu``, ``cuda`` and ``bf16`` are None without a CUDA GPU (all four without torch); read inside
    a trial, so a GPU fallback list shows which GPU each trial really got.
    """
    try:
        import torch
    except ImportError:
        return {"gpu": None, "cuda": None, "torch": None, "bf16": None}
    if not torch.cuda.is_available():
        return {"gpu": None, "cuda": None, "torch": torch.__version__, "bf16": None}
    return {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda, "torch": torch.__version__, "bf16": bool(torch.cuda.is_bf16_supported())}


def _release_memory() -> None:
    """Free what a finished trial held: Python garbage and the CUDA cache."""
    gc.collect()
    with contextlib.suppress(ImportError):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
