"""Typed results: evaluation reports and training results, written by one writer."""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, computed_field

from embedft.data import DataReport
from embedft.mining import MiningReport

__all__ = ["EvalReport", "MatryoshkaRow", "TrainResult"]


# NaN and infinite numbers are written to JSON as "NaN"/"Infinity" strings (valid JSON, read back as floats).
_JSON_FLOATS = ConfigDict(ser_json_inf_nan="strings")


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

    @computed_field  # type: ignore[prop-decorator]
    @property
    def warnings(self) -> list[str]:
        """The notes, then one line per non-finite metric (which split, which metric)."""
        return [*self.notes, *[
            f"{split} {key} is {value}: the split cannot support this metric (e.g. constant gold scores or one class)"
            for split, metrics in (("dev", self.dev), ("test", self.test))
            for key, value in metrics.items()
            if not math.isfinite(value)
        ]]

    def summary(self) -> str:
        """A dev/test table of the metrics, then a ``warning:`` line per non-finite metric."""
        keys = list(dict.fromkeys([*self.dev, *self.test]))
        lines = [f"{'metric':<20} {'dev':>8} {'test':>8}"]
        for key in keys:
            dev, test = self.dev.get(key), self.test.get(key)
            lines.append(f"{key:<20} {'-' if dev is None else f'{dev:.4f}':>8} {'-' if test is None else f'{test:.4f}':>8}")
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
    dev_history: list[tuple[int, float]] = []
    device: str
    output_dir: Path
    model_path: Path
    config_path: Path
    metrics_path: Path
    data: DataReport
    matryoshka: list[MatryoshkaRow] = []
    mining: MiningReport | None = None
    frozen_cache: dict[str, float] | None = None
    warnings: list[str] = []

    def improvement(self, metric: str | None = None, split: str = "test") -> float:
        """after - before for ``metric`` (the primary one by default) on ``split``."""
        metric = metric or self.after.primary_metric
        if self.before is None:
            raise ValueError("this run skipped the base-model evaluation")
        return getattr(self.after, split)[metric] - getattr(self.before, split)[metric]

    def summary(self) -> str:
        """A before/after table of the test metrics."""
        from embedft.tasks import get_task

        keys = list(get_task(self.task).report_metrics)
        split = "test" if self.after.test else "dev"
        after = getattr(self.after, split)
        before = getattr(self.before, split) if self.before is not None else {}
        keys = [k for k in keys if k in after] or sorted(after)
        lines = [f"{split + ' metric':<18} {'base':>8} {'fine-tuned':>10} {'change':>8}"]
        for k in keys:
            a = after[k]
            if k in before:
                lines.append(f"{k:<18} {before[k]:>8.4f} {a:>10.4f} {a - before[k]:>+8.4f}")
            else:
                lines.append(f"{k:<18} {'-':>8} {a:>10.4f} {'':>8}")
        lines.append(
            f"trained {self.train_pairs} pairs, {self.train_steps} steps in {self.train_seconds:.1f}s "
            f"({self.train_pairs_per_second:.1f} rows/s on {self.device}); any threshold chosen on dev"
        )
        if self.matryoshka:
            lines.append(f"{'dimension':>9} {'bytes':>6} {'base test':>9} {'test':>8} {'dev':>8}   ({self.after.primary_metric})")
            for row in self.matryoshka:
                base = f"{row.base_test:.4f}" if row.base_test is not None else "-"
                test = f"{row.test:.4f}" if row.test is not None else "-"
                lines.append(f"{row.dimension:>9} {row.bytes_per_vector:>6} {base:>9} {test:>8} {row.dev:>8.4f}")
        if self.mining is not None:
            lines.append(self.mining.summary())
        lines.extend(f"warning: {w}" for w in self.warnings)
        lines.append(f"model: {self.model_path}")
        return "\n".join(lines)
