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

Every metric is computed from per-unit :class:`Scores` (a pair, triplet, query or mined
pair, each in a group of linked texts) by weighted, vectorised formulas: weights of 1 give
the reported value, and the group counts of bootstrap resamples give the same metric on
each resample (:mod:`embedft.compare`). The evaluations return an :class:`Evaluation`, the
report as a dict that also carries those scores::

    >>> scores = PairScores(np.arange(4), np.array([0.9, 0.8, 0.3, 0.2]), np.array([True, False, True, False]), 0.5, 0.5)
    >>> scores.point()["cosine_ap"], scores.point()["cosine_accuracy"]
    (0.8333333333333333, 0.5)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from embedft.data.splitting import connected_components

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "best_threshold",
    "binary_metrics",
    "cosine_scores",
    "Evaluation",
    "Scores",
    "PairScores",
    "CorrelationScores",
    "MeanScores",
    "MiningScores",
    "row_groups",
    "evaluate_pair_classification",
    "evaluate_sts",
    "evaluate_triplets",
    "evaluate_retrieval",
    "evaluate_paraphrase_mining",
    "retrieval_metrics",
    "retrieval_per_query",
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


def encode_unique(model: Any, texts: list[str], batch_size: int = 64, show_progress: bool = False) -> tuple[np.ndarray, dict[str, int]]:
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
    if not np.isfinite(emb).all():
        raise ValueError("the embeddings contain NaN or infinity")
    return emb, {t: i for i, t in enumerate(unique)}


def cosine_scores(model: Any, text1: list[str], text2: list[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
    """Cosine similarity of each pair, encoding every distinct text once."""
    emb, index = encode_unique(model, [*text1, *text2], batch_size, show_progress)
    a = emb[[index[t] for t in text1]]
    b = emb[[index[t] for t in text2]]
    return np.sum(a * b, axis=1).astype(np.float64)


# ------------------------------------------------------------------ per-unit scores and weighted metrics
def _ratio(num: np.ndarray, den: np.ndarray, empty: float = 0.0) -> np.ndarray:
    """``num / den`` where ``den > 0``, else ``empty``."""
    return np.where(den > 0, num / np.where(den > 0, den, 1), empty)


def _block_ends(sorted_values: np.ndarray) -> np.ndarray:
    """The last position of each run of equal values in a sorted array (ties share one cut)."""
    return np.flatnonzero(np.r_[sorted_values[:-1] != sorted_values[1:], True])


def _weighted_pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``x`` and ``y`` (units, or resamples x units) under weights ``w`` (resamples x units)."""
    total = w.sum(axis=1, keepdims=True)
    dx = x - (w * x).sum(axis=1, keepdims=True) / total
    dy = y - (w * y).sum(axis=1, keepdims=True) / total
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w * dx * dy).sum(axis=1) / np.sqrt((w * dx * dx).sum(axis=1) * (w * dy * dy).sum(axis=1))


def _weighted_ranks(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average ranks of ``values`` when unit ``i`` counts ``w[:, i]`` times (ties share their mean rank)."""
    order = np.argsort(values, kind="stable")
    ends = _block_ends(values[order])
    block = np.repeat(np.arange(len(ends)), np.diff(np.r_[-1, ends]))
    end = np.cumsum(w[:, order], axis=1)[:, ends]
    start = np.c_[np.zeros(len(w)), end[:, :-1]]
    ranks = np.empty(w.shape)
    ranks[:, order] = ((start + end + 1) / 2)[:, block]
    return ranks


@dataclass(frozen=True)
class Scores:
    """What one model's metrics on one split are computed from: one entry per unit and the group of each unit.

    Units of one group (linked texts: the splitter's connected components; a query for
    retrieval) are not independent, so a bootstrap draws groups: :meth:`metrics` takes the
    number of times each group is drawn (``counts``, resamples x groups) and returns each
    metric per resample. :meth:`point` is the reported value (every group once).
    """

    groups: np.ndarray  # per unit: its group, 0 .. n_groups - 1

    @property
    def n_groups(self) -> int:
        """How many groups a resample draws."""
        return int(self.groups.max()) + 1 if len(self.groups) else 0

    def metrics(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Each metric per row of ``counts`` (resamples x groups: how often each group is drawn)."""
        raise NotImplementedError

    def _sum(self, counts: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Per resample, the sum of ``values`` (one per unit) over the drawn units."""
        return counts @ np.bincount(self.groups, weights=values, minlength=counts.shape[1])

    def point(self) -> dict[str, float]:
        """The metrics with every group counted once: the reported values."""
        return {k: float(v[0]) for k, v in self.metrics(np.ones((1, self.n_groups))).items()}


@dataclass(frozen=True)
class PairScores(Scores):
    """Cosine scores and 0/1 labels of pairs, with the thresholds chosen on dev.

    Average precision and ROC-AUC follow scikit-learn's (ties share one cut); accuracy uses
    ``accuracy_threshold``, F1/precision/recall ``f1_threshold``, in every resample.
    """

    scores: np.ndarray
    labels: np.ndarray  # bool
    accuracy_threshold: float
    f1_threshold: float

    def metrics(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        order = np.argsort(-self.scores, kind="stable")
        y, ends = self.labels[order], _block_ends(self.scores[order])
        sizes = np.diff(np.r_[-1, ends])
        w = counts[:, self.groups[order]]
        at_or_above = np.c_[np.zeros(len(w)), np.cumsum(w, axis=1)]  # column k: weight of the first k units
        w_pos = w[:, y]
        pos_at_or_above = np.c_[np.zeros(len(w)), np.cumsum(w_pos, axis=1)]  # column k: weight of the first k positives
        positives_before = np.r_[0, np.cumsum(y)]
        # Per positive unit: the weight (all, positive) up to the end of its tie block and before its start.
        end, start = np.repeat(ends + 1, sizes)[y], np.repeat(ends + 1 - sizes, sizes)[y]
        all_end, tp_end = at_or_above[:, end], pos_at_or_above[:, positives_before[end]]
        fp_end, fp_start = all_end - tp_end, at_or_above[:, start] - pos_at_or_above[:, positives_before[start]]
        pos, total = pos_at_or_above[:, -1], at_or_above[:, -1]
        neg = total - pos
        with np.errstate(invalid="ignore", divide="ignore"):
            ap = (w_pos * tp_end / np.maximum(all_end, 1)).sum(axis=1) / pos  # weights are counts: 0 or >= 1
            auc = (w_pos * (neg[:, None] - (fp_end + fp_start) / 2)).sum(axis=1) / (pos * neg)
        correct = self._sum(counts, (self.scores >= self.accuracy_threshold) == self.labels)
        pred = self.scores >= self.f1_threshold
        hit, predicted = self._sum(counts, pred & self.labels), self._sum(counts, pred)
        precision, recall = _ratio(hit, predicted), _ratio(hit, pos)
        f1 = _ratio(2 * precision * recall, precision + recall)
        return {"cosine_ap": ap, "cosine_roc_auc": auc, "cosine_accuracy": correct / total, "cosine_f1": f1, "cosine_precision": precision, "cosine_recall": recall}


@dataclass(frozen=True)
class CorrelationScores(Scores):
    """Cosine scores and gold scores: Spearman (average ranks) and Pearson correlation, as scipy's."""

    scores: np.ndarray
    gold: np.ndarray

    def metrics(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        w = counts[:, self.groups]
        spearman = _weighted_pearson(_weighted_ranks(self.scores, w), _weighted_ranks(self.gold, w), w)
        return {"spearman_cosine": spearman, "pearson_cosine": _weighted_pearson(self.scores, self.gold, w)}


@dataclass(frozen=True)
class MeanScores(Scores):
    """Metrics that are means over units (triplet accuracy and margin; per-query retrieval metrics)."""

    values: dict[str, np.ndarray]

    def metrics(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        total = self._sum(counts, np.ones(len(self.groups)))
        with np.errstate(invalid="ignore", divide="ignore"):
            return {k: self._sum(counts, v) / total for k, v in self.values.items()}


@dataclass(frozen=True)
class MiningScores(Scores):
    """Mined candidate pairs, best first: whether each is a gold duplicate, its similarity and the groups of its texts.

    ``groups`` holds the group of each candidate's first text and ``other_groups`` of its second;
    ``gold_per_group`` counts the gold pairs inside each group (they never cross groups). In a
    resample a candidate inside a group drawn ``c`` times counts ``c`` times, one across groups
    drawn ``a`` and ``b`` times ``a * b`` times; the candidate list stays the one mined from the pool.
    """

    other_groups: np.ndarray
    hits: np.ndarray
    similarities: np.ndarray
    gold_per_group: np.ndarray
    threshold: float

    @property
    def n_groups(self) -> int:
        return len(self.gold_per_group)

    def metrics(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        a, b = counts[:, self.groups], counts[:, self.other_groups]
        w = np.where(self.groups == self.other_groups, a, a * b)
        gold = counts @ self.gold_per_group
        found = np.cumsum(w * self.hits, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap = (w * self.hits * _ratio(found, np.cumsum(w, axis=1))).sum(axis=1) / np.maximum(gold, 1)
        cut = self.similarities >= self.threshold
        tp, predicted = w @ (self.hits & cut), w @ cut
        precision, recall = _ratio(tp, predicted), _ratio(tp, np.maximum(gold, 1))
        return {"average_precision": ap, "f1": _ratio(2 * precision * recall, precision + recall), "precision": precision, "recall": recall}


def row_groups(frame: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    """The group of each row, numbered 0..: the splitter's ``component`` column when the frame has one,
    else the connected components of the texts in ``columns`` (rows sharing a text are linked)."""
    import pandas as pd

    if "component" in frame.columns:
        return pd.factorize(frame["component"])[0].astype(np.int64)
    nodes: dict[str, int] = {}
    ids = [[nodes.setdefault(t, len(nodes)) for t in frame[c]] for c in columns]
    return pd.factorize(connected_components([(a, b) for col in ids[1:] for a, b in zip(ids[0], col, strict=True)], len(nodes))[ids[0]])[0]


class Evaluation(dict):
    """``{"dev": metrics, "test": metrics}`` (``test`` empty when not evaluated), and ``scores``: per split,
    the :class:`Scores` the metrics were computed from (what :mod:`embedft.compare` resamples)."""

    def __init__(self, report: dict[str, dict[str, float]], scores: dict[str, Scores]) -> None:
        super().__init__(report)
        self.scores = scores


ScoreSplit = Callable[[str, "pd.DataFrame"], "tuple[Scores, dict[str, float]]"]


def _evaluate_splits(dev: pd.DataFrame, test: pd.DataFrame | None, score_split: ScoreSplit) -> Evaluation:
    """Dev, then test: ``score_split(name, frame) -> (Scores, extra report entries)``; dev first, so test can use its choices."""
    report: dict[str, dict[str, float]] = {"test": {}}
    scores: dict[str, Scores] = {}
    for name, frame in (("dev", dev), ("test", test)):
        if frame is not None:
            scores[name], extra = score_split(name, frame)
            report[name] = {**scores[name].point(), **extra}
    return Evaluation(report, scores)


def evaluate_pair_classification(model: Any, dev: pd.DataFrame, test: pd.DataFrame | None, batch_size: int = 64, show_progress: bool = False) -> Evaluation:
    """Dev and test metrics of ``model``; test thresholds come from dev.

    Returns ``{"dev": {...}, "test": {...}}`` with ``cosine_ap``, ``cosine_roc_auc``,
    ``cosine_accuracy``, ``cosine_f1``, ``cosine_precision``, ``cosine_recall`` and the
    two thresholds (``accuracy_threshold``, ``f1_threshold``) in both. With ``test=None``
    the test split is not touched and ``report["test"]`` is empty.
    """
    thresholds: dict[str, float] = {}

    def score_split(name: str, frame: pd.DataFrame) -> tuple[Scores, dict[str, float]]:
        scores = cosine_scores(model, frame["text1"].tolist(), frame["text2"].tolist(), batch_size, show_progress)
        labels = frame["label"].to_numpy(dtype=np.int64)
        if name == "dev":
            thresholds.update(accuracy_threshold=best_threshold(scores, labels, "accuracy"), f1_threshold=best_threshold(scores, labels, "f1"))
        return PairScores(row_groups(frame, ("text1", "text2")), scores, labels.astype(bool), **thresholds), {**thresholds, "pairs": float(len(frame))}

    return _evaluate_splits(dev, test, score_split)


def evaluate_sts(model: Any, dev: pd.DataFrame, test: pd.DataFrame | None, batch_size: int = 64, show_progress: bool = False) -> Evaluation:
    """Spearman and Pearson correlation between cosine similarity and the gold score (``label``, in [0, 1])."""

    def score_split(name: str, frame: pd.DataFrame) -> tuple[Scores, dict[str, float]]:
        scores = cosine_scores(model, frame["text1"].tolist(), frame["text2"].tolist(), batch_size, show_progress)
        gold = frame["label"].to_numpy(dtype=np.float64)
        return CorrelationScores(row_groups(frame, ("text1", "text2")), scores, gold), {"pairs": float(len(frame))}

    return _evaluate_splits(dev, test, score_split)


def evaluate_triplets(model: Any, dev: pd.DataFrame, test: pd.DataFrame | None, batch_size: int = 64, show_progress: bool = False) -> Evaluation:
    """Share of triplets whose anchor is closer (cosine) to the positive than to the negative."""

    def score_split(name: str, frame: pd.DataFrame) -> tuple[Scores, dict[str, float]]:
        columns = ("anchor", "positive", "negative")
        texts = [frame[c].tolist() for c in columns]
        emb, index = encode_unique(model, [t for col in texts for t in col], batch_size, show_progress)
        a, p, n = (emb[[index[t] for t in col]] for col in texts)
        pos, neg = np.sum(a * p, axis=1), np.sum(a * n, axis=1)
        values = {"cosine_accuracy": (pos > neg).astype(np.float64), "mean_margin": (pos - neg).astype(np.float64)}
        return MeanScores(row_groups(frame, columns), values), {"triplets": float(len(frame))}

    return _evaluate_splits(dev, test, score_split)


def retrieval_per_query(scores: np.ndarray, relevant: list[set[int]], ks: tuple[int, ...] = (1, 5, 10, 100)) -> dict[str, np.ndarray]:
    """nDCG@10, MRR@10, MAP@100, recall@k and accuracy@k of each query (row) of a (queries x documents) score matrix.

    ``relevant[i]`` holds the column indices of the documents relevant to query ``i``
    (binary relevance); a query with none scores 0.
    """
    depth = min(max(max(ks), 100), scores.shape[1])
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth] if depth < scores.shape[1] else np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1, kind="stable")[:, ::-1]
    ranked = np.take_along_axis(top, order, axis=1)
    hits = np.array([[d in rel for d in row] for row, rel in zip(ranked, relevant, strict=True)], dtype=bool).reshape(len(ranked), depth)
    n_rel = np.array([len(rel) for rel in relevant], dtype=np.float64)
    discounts = 1.0 / np.log2(np.arange(2, depth + 2))
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), depth)
    ideal = np.r_[0.0, np.cumsum(discounts[:10])][np.minimum(n_rel, 10).astype(np.int64)]
    top100 = hits[:, :100]
    precision_at_hits = np.cumsum(top100, axis=1) / np.arange(1, top100.shape[1] + 1) * top100
    per_query = {
        "cosine_mrr@10": np.where(first < 10, 1.0 / (first + 1), 0.0),
        "cosine_ndcg@10": _ratio(hits[:, :10] @ discounts[:10], ideal),
        "cosine_map@100": _ratio(precision_at_hits.sum(axis=1), np.minimum(n_rel, 100)),
    }
    for k in ks:
        found = hits[:, :k].sum(axis=1)
        per_query[f"cosine_recall@{k}"] = _ratio(found, n_rel)
        per_query[f"cosine_accuracy@{k}"] = (found > 0).astype(np.float64)
    return per_query


def retrieval_metrics(scores: np.ndarray, relevant: list[set[int]], ks: tuple[int, ...] = (1, 5, 10, 100)) -> dict[str, float]:
    """nDCG@10, MRR@10, MAP@100, recall@k and accuracy@k of a (queries x documents) score matrix, averaged over queries.

    ``relevant[i]`` holds the column indices of the documents relevant to query ``i``
    (binary relevance). Names follow sentence-transformers' InformationRetrievalEvaluator::

        >>> import numpy as np
        >>> m = retrieval_metrics(np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.1]]), [{2}, {1}], ks=(1, 2))
        >>> m["cosine_mrr@10"], m["cosine_recall@1"], m["cosine_recall@2"]
        (0.75, 0.5, 1.0)
    """
    return {k: float(v.mean()) for k, v in retrieval_per_query(scores, relevant, ks).items()} if relevant else {}


def evaluate_retrieval(model: Any, dev: pd.DataFrame, test: pd.DataFrame | None, corpus: pd.DataFrame, batch_size: int = 64, show_progress: bool = False) -> Evaluation:
    """Retrieve from the whole ``corpus`` for each query of dev and test.

    ``dev``/``test`` rows are (``query_id``, ``query``, ``doc_id``, ...): one row per relevant
    document. ``corpus`` has ``doc_id`` and ``text``; it is encoded once for both splits.
    Each query is one unit of the bootstrap, in the group of its rows.
    """
    doc_ids = corpus["doc_id"].astype(str).tolist()
    texts = corpus["text"].tolist()
    doc_emb, doc_index = encode_unique(model, texts, batch_size, show_progress)
    doc_rows = np.array([doc_index[t] for t in texts])
    col_of = {d: i for i, d in enumerate(doc_ids)}
    import pandas as pd

    def score_split(name: str, frame: pd.DataFrame) -> tuple[Scores, dict[str, float]]:
        grouped = frame.assign(_group=row_groups(frame, ("query",))).groupby("query_id", sort=True)
        queries = [g["query"].iloc[0] for _, g in grouped]
        relevant = [{col_of[str(d)] for d in g["doc_id"]} for _, g in grouped]
        q_emb, q_index = encode_unique(model, queries, batch_size, show_progress)
        scores = q_emb[[q_index[q] for q in queries]] @ doc_emb[doc_rows].T
        groups = pd.factorize(np.array([g["_group"].iloc[0] for _, g in grouped]))[0]
        return MeanScores(groups, retrieval_per_query(scores, relevant)), {"queries": float(len(queries)), "corpus": float(len(doc_ids))}

    return _evaluate_splits(dev, test, score_split)


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


def evaluate_paraphrase_mining(model: Any, dev: pd.DataFrame, test: pd.DataFrame | None, batch_size: int = 64, show_progress: bool = False, top_k: int = 25) -> Evaluation:
    """Mine duplicates among all texts pooled from each split; score the ranked candidate list.

    Gold duplicates are the pairs labelled 1 plus their transitive closure (duplicates of
    a duplicate). ``average_precision`` follows sentence-transformers'
    ParaphraseMiningEvaluator: precision at each gold pair found, over all gold pairs. The
    F1 threshold is chosen on dev and applied to test.
    """
    chosen: dict[str, float] = {}

    def score_split(name: str, frame: pd.DataFrame) -> tuple[Scores, dict[str, float]]:
        texts = list(dict.fromkeys([*frame["text1"], *frame["text2"]]))
        index = {t: i for i, t in enumerate(texts)}
        gold = _duplicate_closure(frame, index)
        text_group = np.zeros(len(texts), dtype=np.int64)
        rows = row_groups(frame, ("text1", "text2"))
        text_group[frame["text1"].map(index).to_numpy()] = rows
        text_group[frame["text2"].map(index).to_numpy()] = rows
        emb, _ = encode_unique(model, texts, batch_size, show_progress)
        lo, hi, sims = _mined_pairs(emb, top_k)
        hits = np.fromiter(((int(a), int(b)) in gold for a, b in zip(lo, hi, strict=True)), dtype=bool, count=len(lo))
        if name == "dev":
            found = np.cumsum(hits)
            precision, recall = found / np.arange(1, len(hits) + 1), found / max(len(gold), 1)
            f1 = _ratio(2 * precision * recall, precision + recall)
            chosen["threshold"] = float(sims[int(np.argmax(f1))]) if len(sims) else 1.0
        gold_per_group = np.bincount(text_group[[a for a, _ in gold]], minlength=int(rows.max()) + 1).astype(np.float64)
        scores = MiningScores(text_group[lo], text_group[hi], hits, sims, gold_per_group, chosen["threshold"])
        return scores, {"threshold": chosen["threshold"], "texts": float(len(texts)), "duplicates": float(len(gold))}

    return _evaluate_splits(dev, test, score_split)


def _duplicate_closure(frame: pd.DataFrame, index: dict[str, int]) -> set[tuple[int, int]]:
    """Every pair (i < j) of texts linked by pairs labelled 1, directly or through other duplicates."""
    positives = frame[frame["label"] == 1]
    groups: dict[int, list[int]] = {}
    for i, group in enumerate(connected_components(zip(positives["text1"].map(index), positives["text2"].map(index), strict=True), len(index)).tolist()):
        groups.setdefault(group, []).append(i)
    return {(a, b) for members in groups.values() for x, a in enumerate(members) for b in members[x + 1 :]}
