"""One search trial as a pure function: ``run_trial(TrialConfig, report) -> TrialResult``.

Every executor (in-process, local processes, Modal) runs this same function. The
``report(step, dev_score) -> bool`` callable is the pruning channel: it carries an
intermediate dev score to the driver and returns True when the driver says prune.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from embedft.config import RunConfig

__all__ = ["TrialConfig", "TrialResult", "run_trial", "Report"]

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
    train_seconds: float = 0.0
    train_steps: int = 0
    model_path: str | None = None
    train_result: dict | None = None  # the full TrainResult (JSON) when baseline or test was asked for


class _Pruned(Exception):
    pass


def run_trial(config: TrialConfig, report: Report | None = None) -> TrialResult:
    """Train one trial on the saved splits; dev only (the test split is never evaluated here)."""
    from embedft.data import BuiltDataset
    from embedft.training import Trainer

    t0 = time.perf_counter()
    intermediate: list[tuple[int, float]] = []
    primary: str | None = None  # known once the trainer is built

    def hook(step: int, metrics: dict[str, float]) -> bool:
        value = metrics.get(primary) if primary is not None else None
        if value is None:
            return False
        intermediate.append((step, float(value)))
        if report is not None and report(step, float(value)):
            raise _Pruned(step)
        return False

    def ended(state: Literal["complete", "pruned", "fail"], **fields: Any) -> TrialResult:
        return TrialResult(number=config.number, state=state, intermediate=intermediate, seconds=time.perf_counter() - t0, **fields)

    try:
        trainer = Trainer(config.run.model_copy(update={"overwrite": True}), data=BuiltDataset.load(config.data_dir), on_evaluate=[hook])
        primary = trainer.task.primary_metric
        result = trainer.fit(baseline=config.baseline, evaluate_test=config.evaluate_test)
        full = result.model_dump(mode="json") if config.baseline or config.evaluate_test else None
        after = result.after
        return ended("complete", value=after.dev_score, dev=after.dev, train_seconds=result.train_seconds, train_steps=result.train_steps, model_path=str(result.model_path), train_result=full)
    except _Pruned as pruned:
        return ended("pruned", value=intermediate[-1][1] if intermediate else None, train_steps=int(pruned.args[0]))
    except Exception as exc:  # noqa: BLE001 - a failed trial is a result, never a crash of the search
        logger.warning("trial %d failed: %s: %s", config.number, type(exc).__name__, exc)
        return ended("fail", error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}")
    finally:
        _release_memory()


def _release_memory() -> None:
    """Free what a finished trial held: Python garbage and the CUDA cache."""
    gc.collect()
    with contextlib.suppress(ImportError):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
