"""Paired bootstrap confidence intervals of before/after metrics, and the verdict they support.

Both models are scored on the same units (pairs, triplets, queries); a resample draws the
split's **groups** with replacement (the connected components of linked texts that the
splitter keeps within one split; for retrieval, the queries), since units that share a
text are not independent. Every metric of both models is recomputed on each resample by
the weighted formulas of :mod:`embedft.metrics`, thresholds staying the ones chosen on the
full dev split; the interval of the difference comes from the same resamples (paired).
Intervals are percentile intervals (Efron & Tibshirani 1993, ch. 13; Koehn 2004 for the
paired comparison of two systems on one test set)::

    >>> import numpy as np
    >>> from embedft.metrics import MeanScores
    >>> groups = np.arange(200)
    >>> base = {"test": MeanScores(groups, {"accuracy": (np.arange(200) % 10 < 6).astype(float)})}
    >>> tuned = {"test": MeanScores(groups, {"accuracy": (np.arange(200) % 10 < 9).astype(float)})}
    >>> found = paired_bootstrap(base, tuned, resamples=1000, confidence=0.95, seed=0)
    >>> low, high = found.difference["test"]["accuracy"]
    >>> bool(0.2 < low < 0.3 < high < 0.4), found.groups["test"]
    (True, 200)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

from embedft.results import SplitIntervals, Verdict

if TYPE_CHECKING:  # pragma: no cover
    from embedft.metrics import Scores
    from embedft.results import EvalReport

__all__ = ["BootstrapIntervals", "Comparison", "compare_reports", "paired_bootstrap", "percentile_interval", "resample_counts", "verdict"]

_CELLS_PER_CHUNK = 4_000_000  # resamples x units held at once (about 32 MB per float64 array)


class BootstrapIntervals(NamedTuple):
    """Per split and metric: the interval of the base model, of the fine-tuned one and of fine-tuned minus base."""

    base: SplitIntervals
    tuned: SplitIntervals
    difference: SplitIntervals
    groups: dict[str, int]  # per split: the groups a resample draws


def resample_counts(n_groups: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``n_groups`` groups is drawn in each resample (resamples x groups, float)."""
    drawn = rng.integers(0, n_groups, size=(resamples, n_groups)) + n_groups * np.arange(resamples)[:, None]
    return np.bincount(drawn.ravel(), minlength=resamples * n_groups).reshape(resamples, n_groups).astype(np.float64)


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` interval of ``values`` (resamples where a metric is undefined are left out)."""
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan
    low, high = np.percentile(values, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(low), float(high)


def paired_bootstrap(base: dict[str, Scores] | None, tuned: dict[str, Scores], *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> BootstrapIntervals:
    """Intervals of every metric of ``tuned`` (and ``base``, and their difference) on each split both scored.

    ``base``/``tuned`` map a split name to the :class:`~embedft.metrics.Scores` of that model on it
    (``Evaluation.scores``); both models see the same resamples of each split's groups.
    """
    out = BootstrapIntervals({}, {}, {}, {})
    for i, (split, after) in enumerate(tuned.items()):
        before = (base or {}).get(split)
        if before is not None and before.n_groups != after.n_groups:
            raise ValueError(f"the two models were scored on different {split} splits ({before.n_groups} vs {after.n_groups} groups)")
        rng = np.random.default_rng([seed, i])
        chunk = max(1, _CELLS_PER_CHUNK // max(len(after.groups), len(before.groups) if before is not None else 0, 1))
        draws: dict[str, list[dict[str, np.ndarray]]] = {"tuned": [], "base": []}
        for start in range(0, resamples, chunk):
            counts = resample_counts(after.n_groups, min(chunk, resamples - start), rng)
            draws["tuned"].append(after.metrics(counts))
            if before is not None:
                draws["base"].append(before.metrics(counts))
        values = {who: {k: np.concatenate([d[k] for d in parts]) for k in parts[0]} for who, parts in draws.items() if parts}
        out.groups[split] = after.n_groups
        out.tuned[split] = {k: percentile_interval(v, confidence) for k, v in values["tuned"].items()}
        if before is not None:
            out.base[split] = {k: percentile_interval(v, confidence) for k, v in values["base"].items()}
            out.difference[split] = {k: percentile_interval(v - values["base"][k], confidence) for k, v in values["tuned"].items() if k in values["base"]}
    return out


def verdict(before: EvalReport, after: EvalReport, found: BootstrapIntervals, *, split: str, confidence: float, resamples: int) -> Verdict | None:
    """ "better", "no measurable difference" or "worse", from the interval of the difference of the primary metric on ``split``.

    None when that split has no interval (not evaluated, or metrics without per-unit scores).
    """
    metric = after.primary_metric
    low, high = found.difference.get(split, {}).get(metric, (math.nan, math.nan))
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    low_gain, high_gain = (low, high) if after.greater_is_better else (-high, -low)
    outcome: Literal["better", "no measurable difference", "worse"] = "better" if low_gain > 0 else "worse" if high_gain < 0 else "no measurable difference"
    difference = getattr(after, split)[metric] - getattr(before, split)[metric]
    return Verdict(
        outcome=outcome,
        split=split,
        metric=metric,
        difference=difference,
        interval=(low, high),
        confidence=confidence,
        resamples=resamples,
        groups=found.groups[split],
        greater_is_better=after.greater_is_better,
    )


class Comparison(NamedTuple):
    """Both reports with their intervals, the intervals of the difference, and the verdict (None without a base report)."""

    before: EvalReport | None
    after: EvalReport
    difference: SplitIntervals
    verdict: Verdict | None


def compare_reports(
    before_scores: dict[str, Scores] | None,
    after_scores: dict[str, Scores],
    before: EvalReport | None,
    after: EvalReport,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    split: str | None = None,
) -> Comparison:
    """Add bootstrap intervals to ``after`` (and ``before``), with the verdict on ``split`` (default: test when evaluated, else dev).

    With ``resamples=0`` or without per-unit scores (a task whose ``evaluate`` returns a plain dict)
    the reports come back unchanged, without intervals or verdict.
    """
    if not resamples or not after_scores:
        return Comparison(before, after, {}, None)
    found = paired_bootstrap(before_scores if before is not None else None, after_scores, resamples=resamples, confidence=confidence, seed=seed)
    after = after.model_copy(update={"intervals": found.tuned, "confidence": confidence})
    if before is None:
        return Comparison(None, after, {}, None)
    before = before.model_copy(update={"intervals": found.base, "confidence": confidence})
    split = split or ("test" if after.test else "dev")
    return Comparison(before, after, found.difference, verdict(before, after, found, split=split, confidence=confidence, resamples=resamples))
