"""Loading: a file, a Hugging Face dataset, a BEIR folder, a DataFrame or rows, mapped to the task's columns.

Files are CSV/TSV/JSONL/Parquet (optionally gzipped), read inside
:func:`~embedft.readers.read_guard`; a CSV/TSV field that swallowed the rows after it (an
unclosed quote) is refused with the line numbers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from embedft.config import DataConfig
from embedft.convert import load_beir, read_jsonl_records
from embedft.data.cleaning import map_columns
from embedft.errors import DataError, require
from embedft.readers import check_line_lengths, open_binary, read_guard
from embedft.tasks import TaskSpec

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["Loaded", "load_source"]

logger = logging.getLogger(__name__)

_SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


class Loaded(NamedTuple):
    """A source read and mapped to the task's columns, before cleaning."""

    frame: pd.DataFrame
    description: str
    fingerprint: str  # a hash of the mapped rows (and the corpus): the source's part of the cache key
    corpus: pd.DataFrame | None = None  # a BEIR folder's documents (doc_id, text)
    unjudged: int = 0  # a BEIR folder's queries without any judgement (dropped)


def load_source(src: Any, task: TaskSpec, config: DataConfig) -> Loaded:
    """Read ``src`` (path, hub id, BEIR folder, DataFrame, or rows) and map its columns for ``task`` as ``config`` says."""
    import pandas as pd

    corpus, unjudged = None, 0
    if isinstance(src, (str, os.PathLike)):
        try:
            os.stat(Path(src).expanduser())
        except FileNotFoundError:
            pass  # maybe a hub id; said below
        except OSError as exc:  # a name too long, a loop of symlinks, no permission on a folder
            raise DataError(f"cannot use the data path: {exc.strerror or exc}", field="data.source", expected="a readable file or folder path", found=str(src)) from None
    if isinstance(src, pd.DataFrame):
        raw, description = src.copy(), f"DataFrame ({len(src)} rows)"
    elif isinstance(src, (str, os.PathLike)) and Path(src).expanduser().is_dir():
        if not task.uses_corpus:
            raise DataError("a folder is a source only for the retrieval task (BEIR layout)", field="data.source", expected="a data file", found=str(src))
        raw, corpus, unjudged = load_beir(Path(src).expanduser(), config.qrels)
        description = f"BEIR folder {src}"
    elif isinstance(src, (str, os.PathLike)):
        raw, description = _load_path_or_hub(str(src), config)
    elif isinstance(src, Sequence) and not isinstance(src, (str, bytes)):
        raw, description = _frame_from_rows(src, task), f"list ({len(src)} rows)"
    else:
        raise DataError("unsupported data source", field="data.source", expected="path, dataset id, DataFrame or list of rows", found=type(src).__name__)
    duplicated = list(dict.fromkeys(str(c) for c in raw.columns[raw.columns.duplicated()]))
    if duplicated:
        raise DataError(
            "the data has duplicated column names",
            field="data.columns",
            expected="each column name once",
            found=f"{', '.join(repr(c) for c in duplicated[:5])} more than once in {[str(c) for c in raw.columns][:20]}",
            hint="rename or drop the duplicated columns",
        )
    mapped = map_columns(_expand_nested_questions(raw), task, config.columns)
    return Loaded(mapped, description, _hash_frame(mapped) + ("" if corpus is None else _hash_frame(corpus)), corpus, unjudged)


def _load_path_or_hub(src: str, config: DataConfig) -> tuple[pd.DataFrame, str]:
    path = Path(src).expanduser()
    fmt: str = config.format
    looks_local = path.exists() or path.suffix.lower() in (*_SUFFIX_FORMATS, ".gz") or src.startswith((".", "/", "~"))
    if fmt == "hf" or (fmt == "auto" and not looks_local):
        return _load_hub(src, config.hf_config, config.hf_split), f"hf:{src}"
    if not path.is_file():
        raise DataError("data file not found", field="data.source", expected="an existing file", found=str(path))
    if fmt == "auto":
        suffixes = [s.lower() for s in path.suffixes]
        inner = suffixes[-2] if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
        guessed = _SUFFIX_FORMATS.get(inner)
        if guessed is None:
            raise DataError("cannot tell the file format from its name", field="data.format", expected="csv, tsv, jsonl or parquet (or a matching suffix)", found=path.name)
        fmt = guessed
    return _read_file(path, fmt), str(path)


def _frame_from_rows(rows: Sequence[Any], task: TaskSpec) -> pd.DataFrame:
    import pandas as pd

    columns = list(task.input_columns)
    if not rows:
        return pd.DataFrame(columns=columns)
    first = rows[0]
    if isinstance(first, dict):
        return pd.DataFrame(list(rows))
    if not isinstance(first, (tuple, list)):
        raise DataError("unsupported row type", field="data.source", expected="dicts or tuples", found=type(first).__name__)
    widths = {len(r) for r in rows}
    layouts = {len(columns): columns, len(columns) + len(task.id_columns): [*columns, *task.id_columns.values()]}
    if task.name == "retrieval":
        layouts[3] = [*columns, "negative"]
    if len(widths) == 1 and next(iter(widths)) in layouts:
        return pd.DataFrame([tuple(r) for r in rows], columns=layouts[next(iter(widths))])
    shapes = " or ".join("(" + ", ".join(v) + ")" for v in layouts.values())
    raise DataError("rows have the wrong number of fields", field="data.source", expected=f"{shapes} tuples", found=f"lengths {sorted(widths)}")


def _read_file(path: Path, fmt: str) -> pd.DataFrame:
    import pandas as pd

    with read_guard(path, fmt):
        if fmt in ("csv", "tsv", "jsonl"):
            check_line_lengths(path)  # before a parser holds a gigabyte "line" (e.g. from a tiny .gz) in memory
        if fmt == "jsonl":
            return pd.DataFrame(read_jsonl_records(path))
        if fmt == "parquet":
            return pd.read_parquet(path)
        sep = "," if fmt == "csv" else "\t"
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], compression="infer", encoding="utf-8")
        _check_swallowed_rows(frame, path, fmt, sep)
        return frame


def _check_swallowed_rows(frame: pd.DataFrame, path: Path, fmt: str, sep: str) -> None:
    """Refuse a field that holds a line break followed by a line with a whole row's delimiters.

    That is what an unclosed quote does: the quoted field runs on over the following rows,
    delimiters and newlines included, until some later quote ends it, and those rows vanish.
    A legitimately quoted multi-line text has no line holding (columns - 1) delimiters, or if
    it has (commas in a CSV text), its closing quote ends the field cleanly; the quote that
    ends a swallowing field sits inside some later text.
    """
    import pandas as pd

    need = max(1, len(frame.columns) - 1)
    suspects: dict[int, str] = {}  # row index -> column
    for col in frame.columns:
        values = frame[col]
        if not pd.api.types.is_string_dtype(values) and not pd.api.types.is_object_dtype(values):
            continue
        try:
            broken = values.str.contains("\n|\r", regex=True, na=False)
        except (AttributeError, TypeError):  # no strings in this column
            continue
        for k in np.flatnonzero(broken.to_numpy(dtype=bool)):
            if any(line.count(sep) >= need for line in re.split(r"\r\n|\r|\n", values.iloc[k])[1:]):
                suspects.setdefault(int(k), col)
    i, lines = _first_unclean_record(path, sep, sorted(suspects)) if suspects else (None, None)
    if i is None:
        return
    where = f"lines {lines[0]}-{lines[1]}" if lines else "several lines"
    raise DataError(
        f"row {i + 1}{f' (line {lines[0]})' if lines else ''} of {path.name} swallowed the rows after it: its {str(suspects[i])!r} field holds line breaks and whole rows",
        field="data.source",
        expected=f"a well-formed {fmt} file (one row per line; quotes closed)",
        found=f"{where} read as one row, the field starting {str(frame[suspects[i]].iloc[i])[:40]!r}",
        hint='an unclosed quote (") at the start of that field? Close it, or quote the field and double the quotes inside',
    )


def _first_unclean_record(path: Path, sep: str, rows: list[int]) -> tuple[int | None, tuple[int, int] | None]:
    """The first of data ``rows`` (0-based) whose quotes do not close cleanly, with its first and last line.

    One pass of the csv module over the file (it splits records as pandas does; blank lines
    skipped); a record is clean when it also parses with ``strict=True`` (a closing quote
    followed by a delimiter or line end). When the file cannot be scanned, the first row is
    returned without lines.
    """
    wanted = set(rows)
    try:
        with open_binary(path) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as fh:
            buffer: list[str] = []

            def lines() -> Iterator[str]:
                for line in fh:
                    buffer.append(line)
                    yield line

            reader = csv.reader(lines(), delimiter=sep)
            end, n = 0, -1  # the header is record -1
            for record in reader:
                start, end = end + 1, reader.line_num
                if record:
                    if n in wanted:
                        try:
                            clean = len(list(csv.reader(io.StringIO("".join(buffer)), delimiter=sep, strict=True))) == 1
                        except csv.Error:
                            clean = False
                        if not clean:
                            return n, (start, end)
                        wanted.discard(n)
                        if not wanted:
                            return None, None
                    n += 1
                buffer.clear()
    except Exception:  # a file pandas read but the csv module cannot: trust the delimiter count
        logger.debug("could not scan %s for swallowed rows", path, exc_info=True)
        return rows[0], None
    return None, None


def _load_hub(name: str, config: str | None, split: str) -> pd.DataFrame:
    datasets = require("datasets")
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, bad split: the hub raises many types
        raise DataError(
            f"cannot load Hugging Face dataset {name!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            field="data.source",
            expected="an existing local file, or a dataset id reachable on the hub (is HF_DATASETS_OFFLINE set?)",
            found=name,
        ) from None
    return ds.to_pandas()


def _expand_nested_questions(raw: pd.DataFrame) -> pd.DataFrame:
    """The HF ``quora`` form: ``questions = {"id": [a, b], "text": [a, b]}``, ``is_duplicate``."""
    first = raw["questions"].iloc[0] if "questions" in raw.columns and not raw.empty else None
    if not isinstance(first, dict) or "text" not in first:
        return raw
    out = raw.drop(columns=["questions"]).copy()
    for key, names in (("text", ("question1", "question2")), ("id", ("qid1", "qid2"))):
        if key in first:
            values = [list(q[key]) for q in raw["questions"]]
            for i, name in enumerate(names):
                out[name] = [v[i] if len(v) > i else None for v in values]
    return out


def _hash_frame(frame: pd.DataFrame) -> str:
    buf = io.StringIO()
    frame.astype(str).to_csv(buf, index=False)
    return hashlib.sha256(buf.getvalue().encode("utf-8")).hexdigest()
