"""Splitting: groups of linked texts, their leak-free assignment to train/dev/test, the checks and warnings.

Every text (by :func:`~embedft.data.cleaning.normalize_text`) and every id is a node and every
row links its own; the connected components are the groups, and a group never crosses splits.
Groups go, largest first, to the split furthest below its row and label targets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from embedft.data.cleaning import id_key, normalize_text
from embedft.errors import DataError
from embedft.tasks import TaskSpec

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["SPLITS", "MIN_EVAL_PAIRS", "MAX_CONFLICT_SHARE", "connected_components", "components", "balance_key", "assign_splits"]
__all__ += ["check_splittable", "stratified_cap", "leakage", "reused_ids", "data_warnings", "corpus_warnings"]

SPLITS = ("train", "dev", "test")
# What the data report warns about (legal data, weak results).
MIN_EVAL_PAIRS = 50  # below it, one pair moves accuracy by more than 2 points
MAX_CONFLICT_SHARE = 0.05  # of distinct pairs seen with both labels


def connected_components(edges: Iterable[tuple[int, int]], n: int) -> np.ndarray:
    """The group of each of ``n`` nodes linked by ``edges`` (pairs of node indices), transitively.

    Groups are numbered from 0 in the order of their lowest node (scipy's csgraph does the work)::

        >>> connected_components([(3, 1), (4, 2)], 6).tolist()
        [0, 1, 2, 1, 2, 3]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as csgraph_components

    pairs = np.asarray(list(edges), dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, first, labels = np.unique(csgraph_components(graph, directed=False)[1], return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[labels].astype(np.int64)


def components(frame: pd.DataFrame, task: TaskSpec) -> np.ndarray:
    """Group id per row: its group texts (normalised) and their ids are linked by any row; numbered by first row."""
    cols = list(task.group_columns)
    nodes: dict[str, int] = {}  # the first column's texts first, so groups are numbered by their first row
    texts = {c: [nodes.setdefault("t:" + normalize_text(t), len(nodes)) for t in frame[c]] for c in cols}
    edges = [(a, b) for c in cols[1:] for a, b in zip(texts[cols[0]], texts[c], strict=True)]
    for c in cols:
        if c in task.id_columns and task.id_columns[c] in frame.columns:
            for text, value in zip(texts[c], frame[task.id_columns[c]], strict=True):
                if (key := id_key(value)) is not None:  # a blank id links nothing
                    edges.append((text, nodes.setdefault("i:" + key if task.symmetric else f"i:{c}:{key}", len(nodes))))
    return connected_components(edges, len(nodes))[texts[cols[0]]]


def balance_key(frame: pd.DataFrame, task: TaskSpec) -> np.ndarray:
    """What splits and caps keep in proportion: the 0/1 label, score >= 0.5, or nothing."""
    if task.label_type == "binary":
        return frame["label"].to_numpy(dtype=np.int64)
    if task.label_type == "score":
        return (frame["label"].to_numpy(dtype=np.float64) >= 0.5).astype(np.int64)
    return np.zeros(len(frame), dtype=np.int64)


def assign_splits(frame: pd.DataFrame, ratios: dict[str, float], seed: int, labels: np.ndarray) -> np.ndarray:
    """The split of each row: whole groups (``component``) matching row counts and the balance of ``labels`` (0/1) per split."""
    comp = frame["component"].to_numpy()
    n_comp = int(comp.max()) + 1
    size = np.bincount(comp, minlength=n_comp)
    pos = np.bincount(comp, weights=labels, minlength=n_comp)
    order = np.random.default_rng(seed).permutation(n_comp)
    order = order[np.argsort(-size[order], kind="stable")]  # big groups first, ties in seeded order
    target = np.array([ratios[n] * len(frame) for n in SPLITS])
    target_pos = np.array([ratios[n] * labels.sum() for n in SPLITS])
    target_neg = target - target_pos
    cur, cur_pos = np.zeros(3), np.zeros(3)
    where = np.empty(n_comp, dtype=np.int64)
    for c in order:
        frac_pos = pos[c] / size[c]
        deficit = (target - cur) / np.maximum(target, 1) + frac_pos * (target_pos - cur_pos) / np.maximum(target_pos, 1) + (1 - frac_pos) * (target_neg - (cur - cur_pos)) / np.maximum(target_neg, 1)
        s = where[c] = int(np.argmax(deficit))
        cur[s] += size[c]
        cur_pos[s] += pos[c]
    return np.array(SPLITS, dtype=object)[where[comp]]


def check_splittable(frames: dict[str, pd.DataFrame], n_components: int, task: TaskSpec) -> None:
    """Refuse an empty split, a dev or test split with one class (0/1 labels) or with all gold scores equal (STS)."""
    binary = task.label_type == "binary"
    for name, f in frames.items():
        labels = set(f["label"].tolist()) if binary else set()
        need = {0, 1} if name in ("dev", "test") and binary else set()
        if f.empty or not need <= labels:
            raise DataError(
                f"too few groups of linked texts to make a {name} split" + ("" if f.empty else " with both labels"),
                field=f"data.splits.{name}",
                expected="enough independent groups for non-empty train/dev/test splits" + (" with both labels in dev and test" if binary else ""),
                found=f"{n_components} group(s); {name} got {len(f)} pair(s), labels {sorted(labels)}",
                hint="add more data or change data.splits",
            )
        if task.label_type == "score" and name in ("dev", "test") and f["label"].nunique() < 2:
            raise DataError(
                f"every gold score in the {name} split is the same: its Spearman correlation is undefined",
                field=f"data.splits.{name}",
                expected=f"at least two different scores in the {name} split",
                found=f"{len(f)} pair(s), all scored {float(f['label'].iloc[0]):g} (normalised)",
                hint="add pairs with other scores, or change data.splits / data.seed",
            )


def stratified_cap(frame: pd.DataFrame, cap: int, seed: int, task: TaskSpec) -> pd.DataFrame:
    """``cap`` rows of ``frame`` drawn with a seed, keeping the share of :func:`balance_key`."""
    rng = np.random.default_rng(seed)
    labels = balance_key(frame, task)
    n_pos = round(cap * float(labels.mean()))
    chosen = []
    for value, n in ((1, n_pos), (0, cap - n_pos)):
        idx = np.flatnonzero(labels == value)
        chosen.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
    return frame.iloc[np.sort(np.concatenate(chosen))].reset_index(drop=True)


def leakage(frames: dict[str, pd.DataFrame], columns: Sequence[str]) -> dict[str, int]:
    """Distinct texts (normalised) of ``columns`` that each two splits share: the leakage check, 0 by construction."""
    texts = {n: {normalize_text(t) for c in columns for t in f[c]} for n, f in frames.items()}
    return {f"{a}/{b}": len(texts[a] & texts[b]) for a, b in (("train", "dev"), ("train", "test"), ("dev", "test"))}


def reused_ids(frame: pd.DataFrame, task: TaskSpec) -> str | None:
    """Say so when an id names several different texts (a reused or shifted id column), else None."""
    texts: dict[str, set[str]] = {}
    for text_col, id_col in task.id_columns.items():
        if id_col in frame.columns and text_col in frame.columns:
            for ident, text in zip(frame[id_col], frame[text_col], strict=True):
                if (key := id_key(ident)) is not None:
                    texts.setdefault(key if task.symmetric else f"{id_col}:{key}", set()).add(normalize_text(text))
    reused = {i: len(t) for i, t in texts.items() if len(t) > 1}
    if not reused:
        return None
    worst = max(reused, key=reused.__getitem__)
    return f"{len(reused)} id(s) name more than one different text (id {worst!r} names {reused[worst]})"


def corpus_warnings(corpus: pd.DataFrame | None) -> list[str]:
    """A retrieval corpus so small that ranking metrics at k count all of it."""
    if corpus is None or len(corpus) > 100:
        return []
    trivial = "every @10 and @100 metric" if len(corpus) <= 10 else "every @100 metric (MAP@100, recall@100)"
    return [f"the corpus has {len(corpus)} documents: {trivial} ranks the whole corpus, so high scores say little about the model"]


def data_warnings(frames: dict[str, pd.DataFrame], task: TaskSpec, conflicting_pairs: int, kept: int) -> list[str]:
    """Warnings for data that builds but measures or trains poorly: tiny eval splits, one class, contradictory labels."""
    out = []
    one, many = ("query", "queries") if task.uses_corpus else ("pair", "pairs")
    for name in ("dev", "test"):
        f = frames[name]
        n = int(f["query_id"].nunique()) if task.uses_corpus and "query_id" in f.columns else len(f)
        if n < MIN_EVAL_PAIRS:
            out.append(
                f"the {name} split has {n} {many}, fewer than {MIN_EVAL_PAIRS}: one {one} moves its metrics by more than "
                f"{100 / MIN_EVAL_PAIRS:g} points, so {name} scores are mostly noise (add data or enlarge data.splits.{name})"
            )
    if task.label_type == "binary":
        for name, f in frames.items():
            labels = set(f["label"].tolist())
            if len(labels) == 1:
                out.append(
                    f"the {name} split has only {'positive (1)' if labels == {1} else 'negative (0)'} pairs: losses that contrast "
                    "positives with labelled negatives (OnlineContrastiveLoss, ContrastiveLoss) have nothing to compare" + ("" if name == "train" else "; its classification metrics are meaningless")
                )
        if kept and conflicting_pairs / kept > MAX_CONFLICT_SHARE:
            out.append(
                f"{conflicting_pairs} of {kept} distinct pairs ({conflicting_pairs / kept:.1%}) were seen with both labels, "
                f"more than {MAX_CONFLICT_SHARE:.0%}: the first label was kept; check the labelling"
            )
    elif task.label_type == "score":
        import pandas as pd

        every = pd.concat([f["label"] for f in frames.values()])
        if len(every) and float(every.max() - every.min()) < 0.2:
            out.append(
                f"the gold scores cover only {float(every.max() - every.min()):.1%} of their range once normalised to [0, 1]: "
                "check data.score_range (a range much wider than the data squeezes every training target together)"
            )
        if frames["train"]["label"].nunique() < 2:
            out.append("every score in the train split is the same: a similarity loss has nothing to learn from")
        out.extend(
            f"the {name} split's gold scores take only 2 values: Spearman correlation then only says how well the model separates two classes (consider task pair-classification, which reports AP)"
            for name in ("dev", "test")
            if frames[name]["label"].nunique() == 2
        )
    return out
