"""Typed results: evaluation reports and training results, written by one writer."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, computed_field

from embedft.budget import BudgetPlan
from embedft.data import DataReport
from embedft.mining import MiningReport

__all__ = ["EvalReport", "MatryoshkaRow", "RepeatsReport", "SplitIntervals", "TrainResult", "Verdict", "format_table"]


# NaN and infinite numbers are written to JSON as "NaN"/"Infinity" strings (valid JSON, read back as floats).
_JSON_FLOATS = ConfigDict(ser_json_inf_nan="strings")

SplitIntervals = dict[str, dict[str, tuple[float, float]]]
"""Per split (``dev``, ``test``) and metric: a confidence interval ``(low, high)``."""


def format_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a table: the first column left-aligned, the others right-aligned, each as wide as its widest cell.

    >>> format_table(["metric", "dev"], [["cosine_ap", "0.9000"]])
    ['metric       dev', 'cosine_ap 0.9000']
    """
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [" ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in [header, *rows]]


def _cell(value: float | None, interval: tuple[float, float] | None = None, signed: bool = False) -> str:
    """``0.7522 [0.690, 0.812]``: a value and its interval (``-`` when there is no value)."""
    if value is None:
        return "-"
    sign = "+" if signed else ""
    return f"{value:{sign}.4f}" + (f" [{interval[0]:{sign}.3f}, {interval[1]:{sign}.3f}]" if interval else "")


class EvalReport(BaseModel):
    """Metrics of one model on dev and test. Test thresholds were chosen on dev.

    A metric the data cannot support comes out NaN or infinite; it is listed in ``warnings``::

        >>> EvalReport(primary_metric="spearman", dev={"spearman": float("nan")}).warnings
        ['dev spearman is nan: the split cannot support this metric (e.g. constant gold scores or one class)']
    """

    model_config = _JSON_FLOATS

    primary_metric: str
    greater_is_better: bool = True
    dev: dict[str, float]
    test: dict[str, float] = {}
    notes: list[str] = []  # what else a reader of these numbers must know (weak splits, collapsed embeddings)
    intervals: SplitIntervals = {}  # bootstrap confidence intervals of the metrics (embedft.compare)
    confidence: float | None = None  # of those intervals

    @computed_field  # type: ignore[prop-decorator]
    @property
    def warnings(self) -> list[str]:
        """The notes, then one line per non-finite metric (which split, which metric)."""
        return [
            *self.notes,
            *[
                f"{split} {key} is {value}: the split cannot support this metric (e.g. constant gold scores or one class)"
                for split, metrics in (("dev", self.dev), ("test", self.test))
                for key, value in metrics.items()
                if not math.isfinite(value)
            ],
        ]

    def summary(self) -> str:
        """A dev/test table of the metrics (with their intervals), then a ``warning:`` line per non-finite metric."""
        keys = list(dict.fromkeys([*self.dev, *self.test]))
        rows = [[key, *(_cell(getattr(self, s).get(key), self.intervals.get(s, {}).get(key)) for s in ("dev", "test"))] for key in keys]
        lines = format_table([f"metric ({self.confidence:.0%} interval)" if self.intervals and self.confidence else "metric", "dev", "test"], rows)
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    @property
    def dev_score(self) -> float:
        """The primary metric on dev."""
        return self.dev[self.primary_metric]

    @property
    def test_score(self) -> float:
        """The primary metric on test (at dev-chosen thresholds where it needs one)."""
        return self.test[self.primary_metric]


class MatryoshkaRow(BaseModel):
    """Quality at one truncated embedding size: bytes per float32 vector and the primary metric."""

    model_config = _JSON_FLOATS

    dimension: int
    bytes_per_vector: int
    dev: float
    test: float | None = None
    base_test: float | None = None


class Verdict(BaseModel):
    """Is the fine-tuned model better than the base model? Read from the interval of the difference on the primary metric.

    ``better``: the whole interval is an improvement; ``worse``: the whole interval is a loss;
    otherwise ``no measurable difference``. A training run decides on test (dev when test was not
    evaluated); :attr:`message` says what it means and, when not better, what to try::

        >>> v = Verdict(outcome="no measurable difference", split="test", metric="cosine_ap", difference=0.004,
        ...             interval=(-0.01, 0.018), confidence=0.95, resamples=1000, groups=80)
        >>> v.message.split(":")[0]
        'no measurable difference on test cosine_ap'
    """

    model_config = _JSON_FLOATS

    outcome: Literal["better", "no measurable difference", "worse"]
    split: str
    metric: str
    difference: float  # fine-tuned minus base
    interval: tuple[float, float]  # of the difference
    confidence: float
    resamples: int
    groups: int  # resampled groups of the split
    greater_is_better: bool = True

    @computed_field  # type: ignore[prop-decorator]
    @property
    def message(self) -> str:
        """One paragraph for a person deciding whether to ship the fine-tuned model."""
        measured = f"{self.difference:+.4f} ({self.confidence:.0%} interval {self.interval[0]:+.4f} to {self.interval[1]:+.4f}, paired bootstrap over {self.groups} groups of linked texts)"
        if self.outcome == "better":
            return f"better on {self.split} {self.metric}: {measured}; the fine-tuned model beats the base model"
        judged = "the base model is better" if self.outcome == "worse" else "the base model is at least as good"
        return (
            f"{self.outcome} on {self.split} {self.metric}: {measured}; {judged} on this data. Keep it, or try more or "
            "cleaner training data, another loss (training.loss), other learning rates or epochs, or a search (embedft search)"
        )


class RepeatsReport(BaseModel):
    """The same run trained with several seeds on the same splits: the spread of the fine-tuned metrics.

    ``values[metric]`` holds one value per seed on ``split`` (test, or dev when test was not
    evaluated); the saved model is the seed with the best primary metric on dev::

        >>> r = RepeatsReport(seeds=[1, 2, 3], split="test", values={"cosine_ap": [0.80, 0.82, 0.84]}, dev_scores=[0.7, 0.9, 0.8], saved_seed=2)
        >>> round(r.mean["cosine_ap"], 4), round(r.std["cosine_ap"], 4)
        (0.82, 0.02)
    """

    model_config = _JSON_FLOATS

    seeds: list[int]
    split: str
    values: dict[str, list[float]]
    dev_scores: list[float]  # primary metric on dev, per seed
    saved_seed: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mean(self) -> dict[str, float]:
        """Mean over the seeds, per metric."""
        return {k: statistics.fmean(v) for k, v in self.values.items()}

    @computed_field  # type: ignore[prop-decorator]
    @property
    def std(self) -> dict[str, float]:
        """Sample standard deviation over the seeds, per metric (0 for one seed)."""
        return {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in self.values.items()}

    def summary(self, keys: list[str]) -> list[str]:
        """Lines: the seeds, then per metric mean, standard deviation, min and max."""
        rows = [[k, f"{self.mean[k]:.4f}", f"{self.std[k]:.4f}", f"{min(self.values[k]):.4f}", f"{max(self.values[k]):.4f}"] for k in keys if k in self.values]
        head = f"{len(self.seeds)} seeds ({', '.join(map(str, self.seeds))}) on the same splits; saved: seed {self.saved_seed}, the best on dev"
        return [head, *format_table([f"{self.split} metric", "mean", "sd", "min", "max"], rows)]


class TrainResult(BaseModel):
    """What :meth:`embedft.Trainer.fit` did: before/after metrics, timings and paths.

    ``warnings`` holds what the numbers cannot be trusted for: the data report's warnings
    (splits too small or one-class, contradictory labels) and every non-finite metric,
    naming the model and split; :meth:`summary` prints them under the table.
    """

    model_config = _JSON_FLOATS

    task: str
    base_model: str
    loss: str
    before: EvalReport | None
    after: EvalReport
    train_pairs: int
    train_steps: int
    train_seconds: float
    train_pairs_per_second: float
    train_loss: float | None
    stopped_early: bool = False
    dev_history: list[tuple[int, float]] = []  # (step, primary metric on dev) at each dev evaluation
    best_step: int | None = None  # the step of the best dev evaluation: the saved weights
    best_dev_score: float | None = None
    difference_intervals: SplitIntervals = {}  # fine-tuned minus base, paired bootstrap (embedft.compare)
    verdict: Verdict | None = None
    repeats: RepeatsReport | None = None
    device: str
    output_dir: Path
    model_path: Path
    config_path: Path
    metrics_path: Path
    data: DataReport
    matryoshka: list[MatryoshkaRow] = []
    mining: MiningReport | None = None
    frozen_cache: dict[str, float] | None = None
    time_budget: BudgetPlan | None = None  # what training.time_budget_minutes planned, and whether it stopped training
    warnings: list[str] = []

    def improvement(self, metric: str | None = None, split: str = "test") -> float:
        """after - before for ``metric`` (the primary one by default) on ``split``."""
        metric = metric or self.after.primary_metric
        if self.before is None:
            raise ValueError("this run skipped the base-model evaluation")
        return getattr(self.after, split)[metric] - getattr(self.before, split)[metric]

    def summary(self) -> str:
        """A before/after table of the test metrics with their intervals, the verdict, then the details."""
        from embedft.tasks import get_task

        split = "test" if self.after.test else "dev"
        after = getattr(self.after, split)
        before = getattr(self.before, split) if self.before is not None else {}
        keys = [k for k in get_task(self.task).report_metrics if k in after] or sorted(after)
        base_ci, tuned_ci = (r.intervals.get(split, {}) if r is not None else {} for r in (self.before, self.after))
        change_ci = self.difference_intervals.get(split, {})
        rows = [[k, _cell(before.get(k), base_ci.get(k)), _cell(after[k], tuned_ci.get(k)), _cell(after[k] - before[k], change_ci.get(k), signed=True) if k in before else ""] for k in keys]
        confidence = f" ({self.after.confidence:.0%} interval)" if self.after.intervals and self.after.confidence else ""
        lines = format_table([f"{split} metric{confidence}", "base", "fine-tuned", "change"], rows)
        if self.verdict is not None:
            lines.append(f"verdict: {self.verdict.message}")
        if self.repeats is not None:
            lines.extend(self.repeats.summary(keys))
        if self.best_step is not None and self.best_step != self.train_steps:
            lines.append(f"saved the weights of the best dev evaluation: step {self.best_step} of {self.train_steps} (dev {self.after.primary_metric} {self.best_dev_score:.4f})")
        lines.append(
            f"trained {self.train_pairs} pairs, {self.train_steps} steps in {self.train_seconds:.1f}s ({self.train_pairs_per_second:.1f} rows/s on {self.device}); any threshold chosen on dev"
        )
        if self.matryoshka:
            lines.append(f"{'dimension':>9} {'bytes':>6} {'base test':>9} {'test':>8} {'dev':>8}   ({self.after.primary_metric})")
            for row in self.matryoshka:
                base = f"{row.base_test:.4f}" if row.base_test is not None else "-"
                test = f"{row.test:.4f}" if row.test is not None else "-"
                lines.append(f"{row.dimension:>9} {row.bytes_per_vector:>6} {base:>9} {test:>8} {row.dev:>8.4f}")
        if self.mining is not None:
            lines.append(self.mining.summary())
        if self.time_budget is not None:
            lines.append(self.time_budget.summary() + ("; training stopped at the end of the budget" if self.time_budget.stopped_by_budget else ""))
        lines.extend(f"warning: {w}" for w in self.warnings)
        lines.append(f"model: {self.model_path}")
        return "\n".join(lines)
