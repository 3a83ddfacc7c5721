"""Metrics per task; any threshold is chosen on dev and applied to test.

Pair classification and paraphrase mining report threshold-free scores (average
precision, ROC-AUC) and thresholded ones (accuracy, F1) whose thresholds come from
dev. STS reports rank correlation, triplets accuracy, retrieval nDCG/MRR/recall.

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

from embedft.data.splitting import connected_components

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "best_threshold",
    "binary_metrics",
    "cosine_scores",
    "evaluate_pair_classification",
    "evaluate_sts",
    "evaluate_triplets",
    "evaluate_retrieval",
    "evaluate_paraphrase_mining",
    "retrieval_metrics",
]


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


def encode_unique(model, texts: list[str], batch_size: int = 64, show_progress: bool = False) -> tuple[np.ndarray, dict[str, int]]:
    """Unit-length embeddings of the distinct ``texts`` (each encoded once) and a text -> row index."""
    unique = list(dict.fromkeys(texts))
    emb = model.encode(
        unique,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=show_progress,
    )
    emb = np.asarray(emb, dtype=np.float32)
    return emb, {t: i for i, t in enumerate(unique)}


def cosine_scores(model, text1: list[str], text2: list[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
    """Cosine similarity of each pair, encoding every distinct text once."""
    emb, index = encode_unique(model, [*text1, *text2], batch_size, show_progress)
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


def evaluate_sts(model, dev: pd.DataFrame, test: pd.DataFrame | None, batch_size: int = 64, show_progress: bool = False) -> dict[str, dict[str, float]]:
    """Spearman and Pearson correlation between cosine similarity and the gold score (``label``, in [0, 1])."""
    from scipy.stats import pearsonr, spearmanr

    report: dict[str, dict[str, float]] = {"test": {}}
    for split_name, frame in (("dev", dev), ("test", test)):
        if frame is None:
            continue
        scores = cosine_scores(model, frame["text1"].tolist(), frame["text2"].tolist(), batch_size, show_progress)
        gold = frame["label"].to_numpy(dtype=np.float64)
        report[split_name] = {
            "spearman_cosine": float(spearmanr(scores, gold).statistic),
            "pearson_cosine": float(pearsonr(scores, gold).statistic),
            "pairs": float(len(frame)),
        }
    return report


def evaluate_triplets(model, dev: pd.DataFrame, test: pd.DataFrame | None, batch_size: int = 64, show_progress: bool = False) -> dict[str, dict[str, float]]:
    """Share of triplets whose anchor is closer (cosine) to the positive than to the negative."""
    report: dict[str, dict[str, float]] = {"test": {}}
    for split_name, frame in (("dev", dev), ("test", test)):
        if frame is None:
            continue
        anchors, positives, negatives = (frame[c].tolist() for c in ("anchor", "positive", "negative"))
        emb, index = encode_unique(model, [*anchors, *positives, *negatives], batch_size, show_progress)
        a, p, n = (emb[[index[t] for t in col]] for col in (anchors, positives, negatives))
        pos, neg = np.sum(a * p, axis=1), np.sum(a * n, axis=1)
        report[split_name] = {
            "cosine_accuracy": float(np.mean(pos > neg)),
            "mean_margin": float(np.mean(pos - neg)),
            "triplets": float(len(frame)),
        }
    return report


def retrieval_metrics(scores: np.ndarray, relevant: list[set[int]], ks: tuple[int, ...] = (1, 5, 10, 100)) -> dict[str, float]:
    """nDCG@10, MRR@10, MAP@100, recall@k and accuracy@k of a (queries x documents) score matrix.

    ``relevant[i]`` holds the column indices of the documents relevant to query ``i``
    (binary relevance). Names follow sentence-transformers' InformationRetrievalEvaluator::

        >>> import numpy as np
        >>> m = retrieval_metrics(np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.1]]), [{2}, {1}], ks=(1, 2))
        >>> m["cosine_mrr@10"], m["cosine_recall@1"], m["cosine_recall@2"]
        (0.75, 0.5, 1.0)
    """
    depth = min(max(max(ks), 100), scores.shape[1])
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth] if depth < scores.shape[1] else np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1, kind="stable")[:, ::-1]
    ranked = np.take_along_axis(top, order, axis=1)
    discounts = 1.0 / np.log2(np.arange(2, depth + 2))
    sums: dict[str, float] = {}

    def add(key: str, value: float) -> None:
        sums[key] = sums.get(key, 0.0) + value

    for row, rel in zip(ranked, relevant, strict=True):
        hits = np.fromiter((d in rel for d in row), dtype=bool, count=len(row))
        first = int(np.argmax(hits)) if hits.any() else None
        add("cosine_mrr@10", 1.0 / (first + 1) if first is not None and first < 10 else 0.0)
        dcg = float(np.sum(discounts[:10][hits[:10]]))
        idcg = float(np.sum(discounts[: min(len(rel), 10)]))
        add("cosine_ndcg@10", dcg / idcg if idcg else 0.0)
        precision_at_hits = np.cumsum(hits[:100])[hits[:100]] / (np.flatnonzero(hits[:100]) + 1)
        add("cosine_map@100", float(precision_at_hits.sum()) / min(len(rel), 100) if rel else 0.0)
        for k in ks:
            found = int(hits[:k].sum())
            add(f"cosine_recall@{k}", found / len(rel) if rel else 0.0)
            add(f"cosine_accuracy@{k}", float(found > 0))
    n = max(len(relevant), 1)
    return {k: v / n for k, v in sums.items()}


def evaluate_retrieval(
    model, dev: pd.DataFrame, test: pd.DataFrame | None, corpus: pd.DataFrame, batch_size: int = 64, show_progress: bool = False
) -> dict[str, dict[str, float]]:
    """Retrieve from the whole ``corpus`` for each query of dev and test.

    ``dev``/``test`` rows are (``query_id``, ``query``, ``doc_id``, ...): one row per relevant
    document. ``corpus`` has ``doc_id`` and ``text``; it is encoded once for both splits.
    """
    doc_ids = corpus["doc_id"].astype(str).tolist()
    texts = corpus["text"].tolist()
    doc_emb, doc_index = encode_unique(model, texts, batch_size, show_progress)
    doc_rows = np.array([doc_index[t] for t in texts])
    col_of = {d: i for i, d in enumerate(doc_ids)}
    report: dict[str, dict[str, float]] = {"test": {}}
    for split_name, frame in (("dev", dev), ("test", test)):
        if frame is None:
            continue
        grouped = frame.groupby("query_id", sort=True)
        queries = [g["query"].iloc[0] for _, g in grouped]
        relevant = [{col_of[str(d)] for d in g["doc_id"]} for _, g in grouped]
        q_emb, q_index = encode_unique(model, queries, batch_size, show_progress)
        scores = q_emb[[q_index[q] for q in queries]] @ doc_emb[doc_rows].T
        report[split_name] = {**retrieval_metrics(scores, relevant), "queries": float(len(queries)), "corpus": float(len(doc_ids))}
    return report


def _mined_pairs(emb: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs (i < j) among each text's ``top_k`` nearest neighbours, best first."""
    n = len(emb)
    k = min(top_k, n - 1)
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    i = np.repeat(np.arange(n), k)
    j = nn.ravel()
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    key = np.unique(lo * n + hi)
    lo, hi = key // n, key % n
    s = sims[lo, hi]
    order = np.argsort(-s, kind="stable")
    return lo[order], hi[order], s[order]


def evaluate_paraphrase_mining(
    model, dev: pd.DataFrame, test: pd.DataFrame | None, batch_size: int = 64, show_progress: bool = False, top_k: int = 25
) -> dict[str, dict[str, float]]:
    """Mine duplicates among all texts pooled from each split; score the ranked candidate list.

    Gold duplicates are the pairs labelled 1 plus their transitive closure (duplicates of
    a duplicate). ``average_precision`` follows sentence-transformers'
    ParaphraseMiningEvaluator: precision at each gold pair found, over all gold pairs. The
    F1 threshold is chosen on dev and applied to test.
    """
    report: dict[str, dict[str, float]] = {"test": {}}
    threshold = None
    for split_name, frame in (("dev", dev), ("test", test)):
        if frame is None:
            continue
        texts = list(dict.fromkeys([*frame["text1"], *frame["text2"]]))
        index = {t: i for i, t in enumerate(texts)}
        gold = _duplicate_closure(frame, index)
        emb, _ = encode_unique(model, texts, batch_size, show_progress)
        lo, hi, sims = _mined_pairs(emb, top_k)
        hits = np.fromiter(((int(a), int(b)) in gold for a, b in zip(lo, hi, strict=True)), dtype=bool, count=len(lo))
        found = np.cumsum(hits)
        ap = float(np.sum(found[hits] / (np.flatnonzero(hits) + 1)) / max(len(gold), 1))
        precision = found / np.arange(1, len(hits) + 1)
        recall = found / max(len(gold), 1)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        if split_name == "dev":
            best = int(np.argmax(f1)) if len(f1) else 0
            threshold = float(sims[best]) if len(sims) else 1.0
        cut = int(np.sum(sims >= threshold))
        tp = int(found[cut - 1]) if cut else 0
        p = tp / cut if cut else 0.0
        r = tp / max(len(gold), 1)
        report[split_name] = {
            "average_precision": ap,
            "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "precision": p,
            "recall": r,
            "threshold": float(threshold),
            "texts": float(len(texts)),
            "duplicates": float(len(gold)),
        }
    return report


def _duplicate_closure(frame: pd.DataFrame, index: dict[str, int]) -> set[tuple[int, int]]:
    """Every pair (i < j) of texts linked by pairs labelled 1, directly or through other duplicates."""
    positives = frame[frame["label"] == 1]
    groups: dict[int, list[int]] = {}
    for i, group in enumerate(connected_components(zip(positives["text1"].map(index), positives["text2"].map(index)), len(index)).tolist()):
        groups.setdefault(group, []).append(i)
    return {(a, b) for members in groups.values() for x, a in enumerate(members) for b in members[x + 1 :]}
