"""Conversions between data formats that tasks and losses need.

- :func:`pairs_to_triplets`: labelled pairs -> (anchor, positive, negative), with the
  labelled negatives of the anchor or positive as hard negatives where the data has them.
- :func:`qrels_to_pairs`: retrieval judgements (corpus, queries, qrels) -> one
  (query, positive document) row per relevant judgement.
- :func:`load_beir`: a BEIR-style folder (``corpus.jsonl``, ``queries.jsonl``,
  ``qrels/*.tsv``) -> the pairs and the corpus.

Example::

    >>> import pandas as pd
    >>> pairs = pd.DataFrame({"text1": ["a", "a", "c"], "text2": ["b", "c", "d"], "label": [1, 0, 1]})
    >>> pairs_to_triplets(pairs)[["anchor", "positive", "negative"]].values.tolist()[0]
    ['a', 'b', 'c']
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedft.errors import DataError
from embedft.readers import read_guard

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["pairs_to_triplets", "qrels_to_pairs", "load_beir", "read_jsonl_records"]

logger = logging.getLogger(__name__)


def pairs_to_triplets(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """(anchor, positive, negative) rows, one per positive pair of ``frame`` (``text1, text2, label``).

    The negative is a text labelled 0 against the anchor or the positive when the data has
    one (a hard negative), else a random text from another group (``component`` column
    when present). Column ``hard`` says which.
    """
    import pandas as pd

    if frame.empty:
        return pd.DataFrame(columns=["anchor", "positive", "negative", "hard"])
    negatives = frame[frame["label"] == 0]
    partners: dict[str, list[str]] = {}
    for a, b in zip(negatives["text1"], negatives["text2"], strict=True):
        partners.setdefault(a, []).append(b)
        partners.setdefault(b, []).append(a)
    positives = frame[frame["label"] == 1]
    if "component" in frame.columns:
        comp_of = {t: c for col in ("text1", "text2") for t, c in zip(frame[col], frame["component"], strict=True)}
        comps = positives["component"].tolist()
    else:
        comp_of = {}
        comps = [None] * len(positives)
    rng = np.random.default_rng(seed)
    texts = np.array(sorted(set(frame["text1"]) | set(frame["text2"])))
    out, hard = [], []
    for a, p, comp in zip(positives["text1"], positives["text2"], comps, strict=True):
        options = partners.get(a, []) + partners.get(p, [])
        if options:
            out.append(options[int(rng.integers(len(options)))])
            hard.append(True)
            continue
        cand = a
        for _ in range(20):
            cand = str(texts[int(rng.integers(len(texts)))])
            if cand not in (a, p) and (comp is None or comp_of.get(cand) != comp):
                break
        out.append(cand)
        hard.append(False)
    return pd.DataFrame({"anchor": positives["text1"].tolist(), "positive": positives["text2"].tolist(), "negative": out, "hard": hard})


def qrels_to_pairs(corpus: pd.DataFrame, queries: pd.DataFrame, qrels: pd.DataFrame, min_score: float = 1) -> tuple[pd.DataFrame, int]:
    """(query_id, query, doc_id, positive) rows for every judgement with score >= ``min_score``.

    ``corpus`` has ``doc_id, text``; ``queries`` has ``query_id, text``; ``qrels`` has
    ``query_id, doc_id[, score]``. Judgements naming an unknown query or document, and
    judged queries with no relevant document, are errors. Returns the pairs and the
    number of queries that have no judgement at all (dropped: a BEIR queries file often
    covers several splits).
    """
    import pandas as pd

    doc_text = dict(zip(corpus["doc_id"].astype(str), corpus["text"], strict=True))
    query_text = dict(zip(queries["query_id"].astype(str), queries["text"], strict=True))
    qrels = qrels.assign(query_id=qrels["query_id"].astype(str), doc_id=qrels["doc_id"].astype(str))
    for column, known, what in (("query_id", query_text, "queries"), ("doc_id", doc_text, "corpus")):
        unknown = sorted(set(qrels[column]) - set(known))
        if unknown:
            raise DataError(
                f"qrels name {len(unknown)} {column.replace('_', ' ')}(s) missing from the {what}",
                field=f"qrels.{column}",
                expected=f"ids present in the {what} file",
                found=unknown[:5],
            )
    scores = pd.to_numeric(qrels["score"], errors="coerce") if "score" in qrels.columns else pd.Series(1.0, index=qrels.index)
    if scores.isna().any():
        row = int(np.flatnonzero(scores.isna().to_numpy())[0]) + 1
        raise DataError(f"non-numeric relevance score in qrels row {row}", field="qrels.score", expected="a number", found=repr(qrels["score"].iloc[row - 1]))
    relevant = qrels[scores.to_numpy() >= min_score]
    judged = set(qrels["query_id"])
    without = sorted(judged - set(relevant["query_id"]))
    if without:
        raise DataError(
            f"{len(without)} judged quer{'y has' if len(without) == 1 else 'ies have'} no relevant document",
            field="qrels.score",
            expected=f"at least one judgement with score >= {min_score} per judged query",
            found=f"query ids {without[:5]}",
        )
    pairs = pd.DataFrame(
        {
            "query_id": relevant["query_id"].tolist(),
            "query": [query_text[q] for q in relevant["query_id"]],
            "doc_id": relevant["doc_id"].tolist(),
            "positive": [doc_text[d] for d in relevant["doc_id"]],
        }
    )
    return pairs, len(set(query_text) - judged)


def read_jsonl_records(path: Path, field: str = "data.source") -> list[dict]:
    """The JSON objects of a JSONL file (optionally gzipped).

    A broken line is a :class:`DataError` naming it; a file that cannot be read or decoded
    is one too (see :func:`embedft.readers.read_guard`), with ``field`` naming the setting.
    """
    records = []
    opener = gzip.open if path.suffix == ".gz" else open
    with read_guard(path, "jsonl", field), opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"broken JSON on line {lineno} of {path.name}: {exc.msg}", field=f"line {lineno}", expected="one JSON object per line", found=line.strip()[:60]) from None
            if not isinstance(rec, dict):
                raise DataError(f"line {lineno} of {path.name} is not an object", field=f"line {lineno}", expected="a JSON object", found=type(rec).__name__)
            records.append(rec)
    return records


def _beir_texts(path: Path, with_title: bool) -> pd.DataFrame:
    import pandas as pd

    if not path.exists() and not path.is_symlink():  # a folder, a dangling link or a loop: read_guard says which
        raise DataError(f"{path.name} not found", field="data.source", expected=f"a BEIR folder with {path.name}", found=str(path.parent))
    records = read_jsonl_records(path)
    ids, texts = [], []
    first_seen: dict[str, int] = {}
    for i, rec in enumerate(records, start=1):
        if rec.get("_id") is None or not str(rec["_id"]).strip():
            raise DataError(f"record {i} of {path.name} has no _id", field=f"{path.name}._id", expected="an _id on every record", found=sorted(rec)[:5] if "_id" not in rec else repr(rec["_id"]))
        doc_id = str(rec["_id"])
        if doc_id in first_seen:
            raise DataError(
                f"{path.name} has the _id {doc_id[:60]!r} twice (records {first_seen[doc_id]} and {i})",
                field=f"{path.name}._id",
                expected="each _id once (judgements name records by _id)",
                found=repr(doc_id[:60]),
            )
        first_seen[doc_id] = i
        text = str(rec.get("text") or "")
        title = str(rec.get("title") or "") if with_title else ""
        ids.append(doc_id)
        texts.append(f"{title}. {text}".strip(". ") if title and text else (title or text))
    return pd.DataFrame({"id": ids, "text": texts})


def _read_qrels(path: Path) -> pd.DataFrame:
    """A qrels TSV, read like every other data file; a line with fields missing is an error naming it."""
    import pandas as pd

    with read_guard(path, "qrels TSV", "data.qrels"):
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""])
    known = [c for c in ("query-id", "corpus-id", "score") if c in table.columns]
    if {"query-id", "corpus-id"} <= set(known):
        short = table[known].isna().any(axis=1).to_numpy()
        if short.any():
            row = int(np.flatnonzero(short)[0])
            values = [v for v in table.iloc[row].tolist() if isinstance(v, str)]
            raise DataError(
                f"qrels row {row + 1} (line {row + 2}) of {path.name} has {len(values)} of {len(table.columns)} fields",
                field="data.qrels",
                expected=f"{', '.join(known)} on every line, tab-separated",
                found=repr("\t".join(values)[:80]),
            )
    return table


def load_beir(folder: str | Path, qrels: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Read a BEIR-style folder: (pairs, corpus, queries without judgements).

    ``qrels`` defaults to every ``qrels/*.tsv`` file whose header has ``query-id``,
    ``corpus-id`` and ``score``. Documents with neither title nor text are left out of the
    corpus; judgements on them are dropped (and counted) by the builder.
    """
    import pandas as pd

    folder = Path(folder)
    corpus = _beir_texts(folder / "corpus.jsonl", with_title=True).rename(columns={"id": "doc_id"})
    queries = _beir_texts(folder / "queries.jsonl", with_title=False).rename(columns={"id": "query_id"})
    if qrels is not None:  # as given, else inside the BEIR folder (qrels/test.tsv or test.tsv)
        given = Path(qrels).expanduser()
        inside = [c for c in (folder / given, folder / "qrels" / given) if not given.is_absolute() and c.is_file()]
        files = [given if given.is_file() or not inside else inside[0]]
    else:
        files = sorted((folder / "qrels").glob("*.tsv"))
    frames = []
    for f in files:
        table = _read_qrels(f)
        if not {"query-id", "corpus-id"} <= set(table.columns):
            if qrels is not None:
                raise DataError(f"{f.name} is not a qrels file", field="data.qrels", expected="columns query-id, corpus-id[, score]", found=list(table.columns))
            continue
        if "score" not in table.columns:
            logger.info("skipping %s: no score column (not judgements)", f)
            continue
        frames.append(table.rename(columns={"query-id": "query_id", "corpus-id": "doc_id"}))
    if not frames:
        raise DataError("no qrels file found", field="data.qrels", expected="qrels/*.tsv with query-id, corpus-id, score", found=str(folder))
    table = pd.concat(frames, ignore_index=True)
    pairs, unjudged = qrels_to_pairs(corpus, queries, table)
    # Judgements on a document with no text stay in the pairs with an empty positive, so the
    # builder drops and counts them (dropped_empty_text); the corpus keeps only documents with text.
    empty = corpus["text"].str.strip() == ""
    if empty.any():
        logger.warning("%d corpus document(s) have no title or text; left out of the corpus", int(empty.sum()))
        corpus = corpus[~empty].reset_index(drop=True)
    return pairs, corpus, unjudged
