"""Cleaning and columns: the one text key, label and score parsing, the column mapping and its guesses.

Texts are compared, deduplicated and linked by :func:`normalize_text`; :func:`map_columns`
maps a source's columns onto the task's roles (or says which mapping to write);
:func:`clean_rows` drops missing, empty, self- and duplicate pairs and counts them.
"""

from __future__ import annotations

import functools
import re
import shlex
import sys
import unicodedata
from collections.abc import Sequence
from difflib import SequenceMatcher, get_close_matches
from itertools import chain
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from embedft.errors import DataError
from embedft.tasks import TaskSpec

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["normalize_text", "is_missing", "id_key", "map_columns", "normalise_scores", "clean_rows", "with_corpus", "MAX_TEXT_CHARS"]

# Longer than any sentence or question an embedding model reads; in practice an unclosed quote
# that swallowed the rest of a CSV file.
MAX_TEXT_CHARS = 100_000
# The documented spellings of a 0/1 label in a text file, compared case-insensitively.
_LABEL_STRINGS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}
# Spellings of "no id" that files and DataFrames use, compared case-insensitively.
_BLANK_IDS = frozenset({"", "nan", "none", "null", "na", "n/a", "<na>", "nat"})


def normalize_text(text: str) -> str:
    """The one key texts are linked, deduplicated, compared and leak-checked by.

    Unicode NFKC, invisible characters removed (format characters such as zero-width spaces
    and joiners, the BOM and soft hyphens; control characters), case folded, every run of
    Unicode whitespace (NBSP, ideographic space, line breaks) one space, ends stripped. A
    text whose key is empty is an empty text::

        >>> normalize_text("Cafe\\u0301\\u00a0ROOM\\u200b ")
        'café room'
        >>> normalize_text("\\ufeff\\u200d\\u00ad")
        ''
    """
    if text.isascii():  # NFKC and case folding change no ASCII character but the letters' case
        return " ".join((text if text.isprintable() else _ASCII_CONTROLS.sub("", text)).lower().split())
    text = _invisible_characters().sub("", unicodedata.normalize("NFKC", text))
    return " ".join(unicodedata.normalize("NFKC", text.casefold()).split())


_ASCII_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1b\x7f]")
# Invisible yet neither format nor control characters: combining grapheme joiner, Hangul
# fillers, Khmer inherent vowels, variation selectors.
_OTHER_INVISIBLE = "\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0\ufe00-\ufe0f\U000e0100-\U000e01ef"


@functools.cache
def _invisible_characters() -> re.Pattern[str]:
    """Every format character (category Cf), every control character (Cc) that is not whitespace, and the other invisibles."""
    ranges: list[list[int]] = []
    for c in range(sys.maxunicode + 1):
        if unicodedata.category(chr(c)) in ("Cf", "Cc") and not chr(c).isspace():
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
    return re.compile("[" + "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges) + _OTHER_INVISIBLE + "]")


def is_missing(value: Any) -> bool:
    """None, NaN (float or numpy), ``pd.NA`` or ``pd.NaT``."""
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    return type(value).__name__ in ("NAType", "NaTType")


def id_key(value: Any) -> str | None:
    """The id a text is linked by, or None when the value means "no id".

    Missing values (None, NaN, ``pd.NA``), empty or whitespace-only strings and the
    placeholders ``nan``, ``none``, ``null``, ``na``, ``n/a`` (any case) are no id: a row
    without ids is grouped by its texts only, never through a shared blank. Whole floats
    read as ints, so ``7.0`` and ``7`` are one id::

        >>> [id_key(v) for v in (" ", "N/A", None, 7.0, " q7 ")]
        [None, None, None, '7', 'q7']
    """
    if is_missing(value):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    text = str(value).strip()
    return None if text.lower() in _BLANK_IDS else text


# ---------------------------------------------------------------------- columns
def map_columns(raw: pd.DataFrame, task: TaskSpec, explicit: dict[str, str]) -> pd.DataFrame:
    """``raw``'s columns for the task's roles, renamed to them (a ``score`` column becomes ``label``).

    A role takes its ``explicit`` column, else the first of its aliases found (exact name,
    then any case). A required role with no column is a :class:`DataError` whose hint is a
    mapping to paste, built from the columns that look like the missing roles.
    """
    found = [str(c) for c in raw.columns]
    for role, col in explicit.items():
        if role not in task.roles:
            raise DataError(f"column role {role!r} is not used by task {task.name!r}", field=f"data.columns.{role}", expected=f"one of {list(task.roles)}", found=role)
        if col not in raw.columns:
            close = get_close_matches(col, found, n=1)
            raise DataError(
                f"the column mapped to {role!r} is not in the data",
                field=f"data.columns.{role}",
                expected=f"one of the columns found: {found}",
                found=col,
                hint=f"did you mean {close[0]!r}?" if close else None,
            )
    mapping: dict[str, str] = {}
    missing: list[str] = []
    for role in task.roles:
        if role in explicit:
            mapping[role] = explicit[role]
            continue
        aliases, taken = task.column_aliases.get(role, (role,)), set(mapping.values())
        lowered = {c.lower(): c for c in found if c not in taken}
        exact = (a for a in aliases if a in raw.columns and a not in taken)
        hit = next(chain(exact, (lowered[a.lower()] for a in aliases if a.lower() in lowered)), None)  # else in any case
        if hit is not None:
            mapping[role] = hit
        elif role in task.input_columns:
            missing.append(role)
    if missing:
        guess = _guess_columns(raw, task, missing, set(mapping.values()))
        pairs = [(r, guess.get(r, "<your column>")) for r in missing]
        cli = " ".join("--set " + shlex.quote(f"data.columns.{r}={c if r in guess else '...'}") for r, c in pairs)
        names = {r: list(task.column_aliases.get(r, (r,))) for r in missing}
        each = "a column per role, named e.g. " + ", ".join(f"{a[0]!r} ({r})" for r, a in names.items()) + ", or an explicit mapping"
        raise DataError(
            f"no column for {', '.join(repr(r) for r in missing)} (task {task.name})",
            field=f"data.columns.{missing[0]}",
            expected=f"one of {names[missing[0]]} or an explicit mapping" if len(missing) == 1 else each,
            found=f"columns {found}",
            hint=f"map {'it' if len(missing) == 1 else 'them'} explicitly, e.g. columns={{{', '.join(f'{r!r}: {c!r}' for r, c in pairs)}}} (CLI: {cli})",
        )
    if task.symmetric and None in [mapping.get(i) for i in task.id_columns.values()]:  # ids link texts only when both sides have one
        for i in task.id_columns.values():
            mapping.pop(i, None)
    out = raw[list(mapping.values())].copy()
    out.columns = ["label" if r == "score" else r for r in mapping]
    return out.reset_index(drop=True)


def _column_kind(values: pd.Series) -> tuple[str, float]:
    """What a column looks like from its first non-missing values: binary, number, id, text or empty; and its mean length."""
    import pandas as pd

    sample = [v for v in values.head(1000).tolist() if not is_missing(v)][:200]
    if not sample:
        return "empty", 0.0
    strings = [str(v).strip() for v in sample]
    length = sum(map(len, strings)) / len(strings)
    if all(isinstance(v, (bool, np.bool_)) or s.lower() in _LABEL_STRINGS for v, s in zip(sample, strings, strict=True)):
        return "binary", length
    if any(isinstance(v, (list, dict, tuple)) for v in sample):
        return "other", length
    numbers = pd.to_numeric(pd.Series(strings), errors="coerce").astype(float)
    if numbers.notna().all() and np.isfinite(numbers).all():
        integral = bool((numbers == numbers.round()).all())
        many = numbers.nunique() > 0.9 * len(numbers) and len(numbers) > 2
        return ("id" if integral and (many or numbers.max() > 100) else "number"), length
    if length < 15 and not any(any(ch.isspace() for ch in s) for s in strings):
        return "token", length  # short tokens: ids or codes (or one-word texts)
    return "text", length


def _guess_columns(raw: pd.DataFrame, task: TaskSpec, missing: Sequence[str], taken: set[str]) -> dict[str, str]:
    """The likely column for each missing role, each column used once: what a mapping hint suggests.

    Texts are string columns with longer values (a 1/2 in the name picks text1/text2, else
    column order follows the roles' order); a 0/1 label is a column of 0/1/true/false; a
    score is a numeric column; short numeric or token columns look like ids and are
    suggested for nothing else. Names close to the role or its aliases weigh in.
    """
    text_roles = [*task.text_columns, *(["negative"] if "negative" in task.roles and "negative" not in task.text_columns else [])]
    columns = [c for c in raw.columns if c not in taken][:100]  # a hint, not a search: bounded work on odd headers
    kinds = {c: _column_kind(raw[c]) for c in columns}
    text_rank = {c: i for i, c in enumerate(c for c in columns if kinds[c][0] == "text")}
    candidates = []
    for role in missing:
        names = [role, *task.column_aliases.get(role, ())]
        for position, col in enumerate(columns):
            kind, length = kinds[col]
            if role in text_roles:
                fit = {"text": 10 + min(length, 200) / 100, "token": 3.0}.get(kind, 0.0)  # never a numeric id column
            elif role == "label" and task.label_type == "binary":
                fit = 10.0 if kind == "binary" else 0.0
            elif role in ("score", "label"):
                fit = {"number": 10.0, "binary": 6.0, "id": 2.0}.get(kind, 0.0)
            else:
                fit = 1.0 if kind in ("id", "token") else 0.0
            if not fit:
                continue
            name = str(col).lower()[:60]
            tokens = set(re.findall(r"[a-z]+\d*|\d+", name))  # "anchor_text" -> anchor, text; "q1text" -> q1, text
            fit += 6 if role in tokens else 4 if tokens & {n.lower() for n in names} else 0
            fit += 2 * max(SequenceMatcher(None, name, n.lower()).ratio() for n in names)
            digits = set(re.findall(r"\d", name))
            if role[-1].isdigit() and digits:
                fit += 4 if digits == {role[-1]} else -4
            if role in text_roles and text_rank.get(col) == text_roles.index(role):
                fit += 1
            candidates.append((-fit, missing.index(role), position, role, col))
    guess: dict[str, str] = {}
    used: set[Any] = set()
    for *_, role, col in sorted(candidates):
        if role not in guess and col not in used:
            guess[role] = str(col)
            used.add(col)
    return guess


# ---------------------------------------------------------------------- labels, scores, rows
def _parse_label(value: Any, row: int) -> int:
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer, float, np.floating)) and value in (0, 1)):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in _LABEL_STRINGS:
        return _LABEL_STRINGS[value.strip().lower()]
    raise DataError(f"invalid label in row {row}", field="label", expected="0/1, true/false (any case) or '0'/'1'", found=repr(value))


def normalise_scores(frame: pd.DataFrame, given: tuple[float, float] | None) -> tuple[pd.DataFrame, tuple[float, float], str]:
    """Scores to floats in [0, 1] from the given range, or one inferred from the data (0-1, 0-5, 0-10, 0-100, else min-max)."""
    import pandas as pd

    raw = frame["label"]
    values = pd.to_numeric(raw, errors="coerce").astype(float)
    bad = (values.isna() & raw.notna()) | np.isinf(values)  # words, 'nan' and 'inf' written in the data
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
        raise DataError(f"invalid score in row {row}", field="score", expected="a number (not inf or nan)", found=repr(raw.iloc[row - 1]))
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0]) + 1
        raise DataError(f"missing score in row {row}", field="score", expected="a number", found="an empty value")
    lo_seen, hi_seen = float(values.min()), float(values.max())
    if given is not None:
        lo, hi = given
        outside = (values < lo) | (values > hi)
        if outside.any():
            row = int(np.flatnonzero(outside.to_numpy())[0]) + 1
            raise DataError(
                f"score outside the declared range in row {row} ({int(outside.sum())} rows in all)",
                field="data.score_range",
                expected=f"scores in [{lo:g}, {hi:g}]",
                found=f"{values.iloc[row - 1]:g} (data range [{lo_seen:g}, {hi_seen:g}])",
            )
        source = "given"
    else:
        lo, hi = next(((0.0, top) for top in (1.0, 5.0, 10.0, 100.0) if lo_seen >= 0 and hi_seen <= top), (lo_seen, hi_seen))
        if hi <= lo:
            raise DataError("all scores are equal; cannot infer a score range", field="data.score_range", expected="[low, high] (set data.score_range)", found=f"every score is {lo_seen:g}")
        source = "inferred"
    return frame.assign(label=((values - lo) / (hi - lo)).astype(float)), (float(lo), float(hi)), source


class DropCounts(TypedDict):
    """What :func:`clean_rows` dropped or found, by reason: fields of :class:`~embedft.data.DataReport`."""

    dropped_missing_text: int
    dropped_empty_text: int
    dropped_self_pairs: int
    dropped_duplicates: int
    conflicting_duplicates: int
    conflicting_pairs: int


def clean_rows(frame: pd.DataFrame, task: TaskSpec) -> tuple[pd.DataFrame, DropCounts]:
    """The rows worth keeping (texts stripped, labels parsed, ids as :func:`id_key`) and the drop counts of the report.

    Rows with a missing or empty text, self-pairs (same text, or same id) and duplicates
    (swapped too, for symmetric tasks; the first is kept) are dropped and counted; a bad
    label, a text that is not a string or too long, and a negative equal to its anchor
    or positive are errors naming the row.
    """
    import pandas as pd

    counts = DropCounts(dropped_missing_text=0, dropped_empty_text=0, dropped_self_pairs=0, dropped_duplicates=0, conflicting_duplicates=0, conflicting_pairs=0)
    text_cols = list(task.text_columns)
    extra_texts = [c for c in ("negative",) if c in frame.columns and c not in text_cols]
    id_cols = [c for c in task.id_columns.values() if c in frame.columns]
    has_label = task.label_type != "none"
    seen: dict[tuple[str, ...], int] = {}
    conflicting: set[tuple[str, ...]] = set()
    keep_rows: list[dict[str, Any]] = []
    for row, rec in enumerate(frame.to_dict("records"), start=1):
        label: float | None = None
        if task.label_type == "binary":
            if is_missing(rec["label"]):
                raise DataError(f"missing label in row {row}", field="label", expected="0/1, true/false or '0'/'1'", found="an empty value")
            label = _parse_label(rec["label"], row)
        elif task.label_type == "score":
            label = float(rec["label"])
        texts = [rec[c] for c in text_cols]
        if any(is_missing(t) for t in texts):
            counts["dropped_missing_text"] += 1
            continue
        for role, text in zip(text_cols, texts, strict=True):
            if not isinstance(text, str):
                raise DataError(f"text is not a string in row {row}", field=role, expected="a string", found=type(text).__name__)
        texts = [t.strip() for t in texts]
        norms = [normalize_text(t) for t in texts]
        if not all(norms):  # empty, blank, or nothing but invisible characters
            counts["dropped_empty_text"] += 1
            continue
        extras = {r: None if is_missing(rec[r]) or (isinstance(rec[r], str) and not normalize_text(rec[r])) else rec[r] for r in extra_texts}
        for role, text in extras.items():
            if text is not None and not isinstance(text, str):
                raise DataError(f"text is not a string in row {row}", field=role, expected="a string", found=type(text).__name__)
        extras = {r: t and t.strip() for r, t in extras.items()}
        for role, text in [*zip(text_cols, texts, strict=True), *((r, t) for r, t in extras.items() if t)]:
            if len(text) > MAX_TEXT_CHARS:
                raise DataError(
                    f"text too long in row {row} (an unclosed quote in a CSV file?)",
                    field=role,
                    expected=f"at most {MAX_TEXT_CHARS} characters",
                    found=f"{len(text)} characters starting {text[:40]!r}",
                )
        ids = {c: id_key(rec[c]) for c in id_cols}
        same_ids = task.symmetric and len(ids) == 2 and None not in ids.values() and len(set(ids.values())) == 1
        if norms[0] == norms[1] or same_ids:
            counts["dropped_self_pairs"] += 1
            continue
        negative = norms[2] if "negative" in text_cols else (normalize_text(extra) if (extra := extras.get("negative")) else None)
        if negative is not None and negative in norms[:2]:
            clash = "positive" if negative == norms[1] else text_cols[0]
            raise DataError(f"negative equals the {clash} in row {row}", field="negative", expected=f"a negative different from the {clash}", found=repr((extras.get("negative") or texts[-1])[:60]))
        key = tuple(sorted(norms)) if task.symmetric else tuple(norms)
        if key in seen:
            counts["dropped_duplicates"] += 1
            if has_label and keep_rows[seen[key]]["label"] != label:
                counts["conflicting_duplicates"] += 1
                conflicting.add(key)
            continue
        seen[key] = len(keep_rows)
        keep_rows.append({**dict(zip(text_cols, texts, strict=True)), **extras, **({"label": label} if has_label else {}), **ids})
    counts["conflicting_pairs"] = len(conflicting)
    return pd.DataFrame(keep_rows, columns=text_cols + extra_texts + (["label"] if has_label else []) + id_cols), counts


def with_corpus(frame: pd.DataFrame, corpus: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Retrieval: query and document ids on every row, and the corpus every split retrieves from.

    With a BEIR corpus, it is used as is. From (query, positive[, negative]) rows the corpus
    is every distinct positive and negative text; ids are given ones or assigned by text.
    """
    import pandas as pd

    frame = frame.copy()
    if "query_id" not in frame.columns or frame["query_id"].isna().any():
        ids: dict[str, str] = {}
        frame["query_id"] = [ids.setdefault(normalize_text(q), f"q{len(ids)}") for q in frame["query"]]
    if corpus is not None:
        return frame, corpus[["doc_id", "text"]].reset_index(drop=True)
    by_key: dict[str, tuple[str, str]] = {}  # normalised text -> (doc id, first spelling seen): one document per text
    if "doc_id" in frame.columns and frame["doc_id"].notna().all():
        for d, t in zip(frame["doc_id"], frame["positive"], strict=True):
            by_key.setdefault(normalize_text(t), (str(d), t))
    texts = [*frame["positive"], *(frame["negative"].dropna() if "negative" in frame.columns else [])]
    taken = {d for d, _ in by_key.values()}
    for t in texts:
        key = normalize_text(t)
        if key not in by_key:
            n = len(by_key)
            while f"d{n}" in taken:
                n += 1
            by_key[key] = (f"d{n}", t)
            taken.add(f"d{n}")
    frame["doc_id"] = [by_key[normalize_text(t)][0] for t in frame["positive"]]
    return frame, pd.DataFrame({"doc_id": [d for d, _ in by_key.values()], "text": [t for _, t in by_key.values()]})
