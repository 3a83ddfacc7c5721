"""Reading data files safely: whatever a reader raises becomes one :class:`~embedft.errors.DataError`.

Every data file embedft reads (CSV/TSV, JSONL, Parquet, each file of a BEIR folder) is read
inside :func:`read_guard`, so a bad file is one line naming the field, what was expected and
what was found, never a traceback.
"""

from __future__ import annotations

import csv
import errno
import gzip
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from embedft.errors import DataError

__all__ = ["read_guard", "open_binary", "check_line_lengths", "MAX_LINE_BYTES"]

MAX_LINE_BYTES = 4_000_000
"""The longest line of a text data file read (a row holds a few texts of at most 100,000 characters each)."""

logger = logging.getLogger(__name__)


@contextmanager
def read_guard(path: Path, fmt: str, field: str = "data.source") -> Iterator[None]:
    """Turn whatever reading ``path`` raises into one :class:`DataError` (field, expected, found).

    Every data file embedft reads (CSV/TSV, JSONL, Parquet, each file of a BEIR folder) is
    read inside it: an undecodable byte (reported at its real line and byte offset), a
    missing file, a folder or a symlink loop where a file is expected, a broken or truncated
    compressed file, an empty or malformed table::

        >>> try:
        ...     with read_guard(Path("no-such-file.csv"), "csv"):
        ...         open("no-such-file.csv")
        ... except DataError as err:
        ...     print(err.field, "/", err.expected)
        data.source / an existing csv file
    """
    import pandas as pd

    name = path.name
    try:
        yield
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot decode {name}", field=field, expected="UTF-8 text", found=_undecodable_at(path, exc)) from None
    except FileNotFoundError:
        raise DataError(f"{name} not found", field=field, expected=f"an existing {fmt} file", found=str(path)) from None
    except IsADirectoryError:
        raise DataError(f"{name} is a folder", field=field, expected=f"a {fmt} file", found=str(path)) from None
    except (gzip.BadGzipFile, EOFError, OSError) as exc:
        if getattr(exc, "errno", None) == errno.ELOOP:
            reason = "a symlink loop"
        else:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
        raise DataError(f"cannot read {name}: {reason}", field=field, expected=f"a readable {fmt} file", found=str(path)) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{name} is empty", field=field, expected=f"a {fmt} file with a header and rows", found="an empty file") from None
    except (pd.errors.ParserError, ValueError, csv.Error) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = 'an unclosed quote (") at the start of a field?' if "inside string" in first else None
        raise DataError(f"cannot parse {name}: {first}", field=field, expected=f"a well-formed {fmt} file", found=str(path), hint=hint) from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own types for garbled parquet
        raise DataError(f"cannot read {name}: {type(exc).__name__}: {exc}", field=field, expected=f"a readable {fmt} file", found=str(path)) from None


def open_binary(path: Path) -> Any:
    """``path`` opened for reading bytes, decompressed as pandas infers it from the suffix (gzip, bz2, xz)."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        import bz2

        return bz2.open(path, "rb")
    if suffix == ".xz":
        import lzma

        return lzma.open(path, "rb")
    return open(path, "rb")


def _undecodable_at(path: Path, exc: UnicodeDecodeError) -> str:
    """Where the first byte that is not UTF-8 is, as line and byte offset of the (decompressed) file.

    The offset in ``exc`` is within whatever block the reader decoded (pandas decodes in
    chunks), so the file is scanned again line by line: no UTF-8 sequence contains a newline
    byte, so a valid file decodes line by line.
    """
    try:
        with open_binary(path) as fh:
            offset = 0
            for lineno, line in enumerate(fh, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as err:
                    return f"byte {line[err.start : err.start + 1]!r} at line {lineno}, offset {offset + err.start}"
                offset += len(line)
    except Exception:  # the scan only improves the message
        logger.debug("could not locate the undecodable byte in %s", path, exc_info=True)
    return f"byte {exc.object[exc.start : exc.start + 1]!r} (position in the file unknown)"


def check_line_lengths(path: Path, limit: int = MAX_LINE_BYTES, field: str = "data.source") -> None:
    """Refuse a (decompressed) line longer than ``limit`` bytes, reading at most ``limit`` bytes at a time.

    A few kilobytes of gzip can hold a gigabyte-long line; this finds it in bounded memory
    before a parser tries to hold it.
    """
    with open_binary(path) as fh:
        lineno = 0
        while True:
            line = fh.readline(limit + 1)
            if not line:
                return
            if len(line) > limit and not line.endswith(b"\n"):
                raise DataError(
                    f"line {lineno + 1} of {path.name} is longer than {limit:,} bytes",
                    field=field,
                    expected=f"lines of at most {limit:,} bytes (texts of at most 100,000 characters)",
                    found=f"line {lineno + 1}",
                )
            if line.endswith(b"\n"):
                lineno += 1
