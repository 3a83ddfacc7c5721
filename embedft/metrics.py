"""Pair-classification metrics with thresholds chosen on dev and applied to test.

Average precision and ROC-AUC are threshold-free. Accuracy, F1, precision and
recall on test use the thresholds that maximise accuracy (resp. F1) on **dev**,
so the test split is never used for any choice::

    >>> import numpy as np
    >>> best_threshold(np.array([0.9, 0.8, 0.3, 0.2]), np.array([1, 1, 0, 0]), "accuracy")
    0.55
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["best_threshold", "binary_metrics", "cosine_scores", "evaluate_pair_classification"]


def best_threshold(scores: np.ndarray, labels: np.ndarray, objective: Literal["accuracy", "f1"]) -> float:
    """The threshold (midpoint between neighbouring scores) that maximises ``objective``.

    A pair is predicted positive when its score is >= the threshold.
    """
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(np.int64)
    tp = np.cumsum(y)  # predicting the top k+1 as positive
    fp = np.cumsum(1 - y)
    n_pos, n = int(y.sum()), len(y)
    # Candidate cut after position k; only where the next score differs.
    distinct = np.r_[s[:-1] > s[1:], True]
    if objective == "accuracy":
        value = (tp + (n - n_pos - fp)) / n
    else:
        value = 2 * tp / np.maximum(tp + fp + n_pos, 1)
    value = np.where(distinct, value, -np.inf)
    k = int(np.argmax(value))
    # Predicting nothing positive can beat any cut for accuracy.
    if objective == "accuracy" and (n - n_pos) / n > value[k]:
        return float(s[0] + 1e-6)
    nxt = s[k + 1] if k + 1 < n else s[k] - 1e-6
    return float((s[k] + nxt) / 2)


def binary_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of ``scores >= threshold``."""
    pred = scores >= threshold
    y = labels.astype(bool)
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": float(np.mean(pred == y)), "precision": precision, "recall": recall, "f1": f1}


def cosine_scores(model, text1: list[str], text2: list[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
    """Cosine similarity of each pair, encoding every distinct text once."""
    unique = list(dict.fromkeys([*text1, *text2]))
    emb = model.encode(
        unique,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=show_progress,
    )
    index = {t: i for i, t in enumerate(unique)}
    a = emb[[index[t] for t in text1]]
    b = emb[[index[t] for t in text2]]
    return np.sum(a * b, axis=1).astype(np.float64)


def evaluate_pair_classification(
    model, dev: pd.DataFrame, test: pd.DataFrame | None, batch_size: int = 64, show_progress: bool = False
) -> dict[str, dict[str, float]]:
    """Dev and test metrics of ``model``; test thresholds come from dev.

    Returns ``{"dev": {...}, "test": {...}}`` with ``cosine_ap``, ``cosine_roc_auc``,
    ``cosine_accuracy``, ``cosine_f1``, ``cosine_precision``, ``cosine_recall`` and the
    two thresholds (``accuracy_threshold``, ``f1_threshold``) in both. With ``test=None``
    the test split is not touched and ``report["test"]`` is empty.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    report: dict[str, dict[str, float]] = {"test": {}}
    thresholds: dict[str, float] = {}
    for split_name, frame in (("dev", dev), ("test", test)):
        if frame is None:
            continue
        scores = cosine_scores(model, frame["text1"].tolist(), frame["text2"].tolist(), batch_size, show_progress)
        labels = frame["label"].to_numpy(dtype=np.int64)
        if split_name == "dev":
            thresholds = {
                "accuracy_threshold": best_threshold(scores, labels, "accuracy"),
                "f1_threshold": best_threshold(scores, labels, "f1"),
            }
        by_acc = binary_metrics(scores, labels, thresholds["accuracy_threshold"])
        by_f1 = binary_metrics(scores, labels, thresholds["f1_threshold"])
        report[split_name] = {
            "cosine_ap": float(average_precision_score(labels, scores)),
            "cosine_roc_auc": float(roc_auc_score(labels, scores)),
            "cosine_accuracy": by_acc["accuracy"],
            "cosine_f1": by_f1["f1"],
            "cosine_precision": by_f1["precision"],
            "cosine_recall": by_f1["recall"],
            **thresholds,
            "pairs": float(len(frame)),
        }
    return report
