"""DatasetBuilder: raw pairs in, validated, leak-free train/dev/test splits out.

Sources: a local CSV/TSV/JSONL/Parquet file (optionally gzipped), a Hugging Face
dataset id, a pandas DataFrame, or a list of dicts or ``(text1, text2, label)``
tuples. Texts linked by any pair form connected components, and a component never
crosses splits, so no text appears in two splits, even transitively::

    >>> from embedft import DatasetBuilder
    >>> rows = [(f"question {i}", f"same question {i}", i % 2) for i in range(40)]
    >>> built = DatasetBuilder(splits={"train": 0.6, "dev": 0.2, "test": 0.2}, cache=False).build(rows)
    >>> sum(built.report.leakage.values())
    0
    >>> len(built.train) + len(built.dev) + len(built.test)
    40
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from embedft.config import DataConfig, _validate
from embedft.errors import DataError
from embedft.tasks import TaskSpec, get_task

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import pandas as pd

__all__ = ["DatasetBuilder", "BuiltDataset", "DataReport", "SplitStats", "normalize_text"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
_FORMAT_VERSION = "1"  # bump when the cleaning/splitting logic changes, to invalidate caches
_SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def normalize_text(text: str) -> str:
    """Lower-case and collapse whitespace: the key used to link and compare texts."""
    return " ".join(text.lower().split())


class SplitStats(BaseModel):
    """Size and label balance of one split."""

    pairs: int
    positives: int
    negatives: int
    positive_rate: float
    components: int
    texts: int


class DataReport(BaseModel):
    """What a build read, dropped, kept and how it split, with its leakage check."""

    source: str
    fingerprint: str
    rows_read: int
    dropped_missing_text: int
    dropped_empty_text: int
    dropped_self_pairs: int
    dropped_duplicates: int
    conflicting_duplicates: int
    kept: int
    components: int
    largest_component: int
    splits: dict[str, SplitStats]
    leakage: dict[str, int]
    train_pairs_before_cap: int
    max_train_pairs: int | None = None
    from_cache: bool = False

    def summary(self) -> str:
        """A short human-readable table of the report."""
        lines = [
            f"source: {self.source}",
            f"rows read {self.rows_read}, kept {self.kept} (dropped: missing text {self.dropped_missing_text}, "
            f"empty text {self.dropped_empty_text}, self-pairs {self.dropped_self_pairs}, "
            f"duplicate pairs {self.dropped_duplicates}; conflicting labels among duplicates {self.conflicting_duplicates})",
            f"components {self.components} (largest {self.largest_component} pairs)",
            f"{'split':<6} {'pairs':>7} {'pos':>6} {'neg':>6} {'pos rate':>8} {'groups':>7} {'texts':>7}",
        ]
        for name, s in self.splits.items():
            lines.append(
                f"{name:<6} {s.pairs:>7} {s.positives:>6} {s.negatives:>6} {s.positive_rate:>8.3f} {s.components:>7} {s.texts:>7}"
            )
        if self.max_train_pairs is not None:
            lines.append(f"train capped at {self.max_train_pairs} pairs (from {self.train_pairs_before_cap})")
        leak = ", ".join(f"{k}: {v}" for k, v in self.leakage.items())
        status = "OK" if not any(self.leakage.values()) else "LEAK"
        lines.append(f"leakage check (texts shared between splits) {status}: {leak}")
        return "\n".join(lines)


@dataclass
class BuiltDataset:
    """Train/dev/test frames (columns ``text1``, ``text2``, ``label``, ``component``) and the build report."""

    train: pd.DataFrame
    dev: pd.DataFrame
    test: pd.DataFrame
    report: DataReport
    task: str = "pair-classification"

    def split(self, name: str) -> pd.DataFrame:
        if name not in SPLITS:
            raise DataError("unknown split", field="split", expected=list(SPLITS), found=name)
        return getattr(self, name)

    def cap_train(self, cap: int | None, seed: int = 0) -> BuiltDataset:
        """The same splits with train cut to ``cap`` pairs (label-stratified, seeded); dev and test unchanged.

        Gives the same train split as building with ``max_train_pairs=cap`` and the same seed,
        so a search builds once and each trial takes its own training-set size.
        """
        if cap is None or cap >= len(self.train):
            return self
        train = _stratified_cap(self.train, cap, seed)
        report = self.report.model_copy(
            update={"splits": {**self.report.splits, "train": _stats(train)}, "max_train_pairs": cap}
        )
        return BuiltDataset(train=train, dev=self.dev, test=self.test, report=report, task=self.task)

    def examples(self, name: str = "train") -> list:
        """The split as sentence-transformers ``InputExample`` pairs."""
        from sentence_transformers import InputExample

        frame = self.split(name)
        return [
            InputExample(texts=[a, b], label=float(y))
            for a, b, y in zip(frame["text1"], frame["text2"], frame["label"], strict=True)
        ]

    def dataset(self, name: str = "train", loss: str | None = None, hard_negatives: bool = False, seed: int = 0) -> datasets.Dataset:
        """The split as a ``datasets.Dataset`` with the columns ``loss`` expects.

        Labelled-pair losses get ``sentence1, sentence2, label``. Positive-pair losses
        (MultipleNegativesRankingLoss) get ``anchor, positive`` from the positive pairs,
        plus ``negative`` when ``hard_negatives``: a text labelled as not-duplicate of the
        anchor or positive where the data has one, else a random text from another group.
        """
        from datasets import Dataset

        spec = get_task(self.task).loss(loss)
        frame = self.split(name)
        if spec.input_format == "labelled-pairs":
            return Dataset.from_dict(
                {
                    "sentence1": frame["text1"].tolist(),
                    "sentence2": frame["text2"].tolist(),
                    "label": frame["label"].astype(float).tolist(),
                }
            )
        positives = frame[frame["label"] == 1]
        data: dict[str, list[str]] = {"anchor": positives["text1"].tolist(), "positive": positives["text2"].tolist()}
        if hard_negatives:
            data["negative"], found = _hard_negatives(frame, positives, seed)
            logger.info("hard negatives: %d of %d from labelled negatives, the rest random", found, len(positives))
        if not data["anchor"]:
            raise DataError(
                f"{spec.name} trains on positive pairs and the {name} split has none",
                field="label",
                expected="at least one pair labelled 1",
                found=0,
            )
        return Dataset.from_dict(data)

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the splits (Parquet) and the report (JSON) to ``path`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            for name in SPLITS:
                self.split(name).to_parquet(tmp / f"{name}.parquet", index=False)
            (tmp / "report.json").write_text(self.report.model_dump_json(indent=2), encoding="utf-8")
            (tmp / "task.txt").write_text(self.task, encoding="utf-8")
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> BuiltDataset:
        """Read splits written by :meth:`save`."""
        import pandas as pd

        path = Path(path)
        frames = {name: pd.read_parquet(path / f"{name}.parquet") for name in SPLITS}
        report = DataReport.model_validate_json((path / "report.json").read_text(encoding="utf-8"))
        task = (path / "task.txt").read_text(encoding="utf-8").strip()
        return cls(**frames, report=report, task=task)


def _hard_negatives(frame: pd.DataFrame, positives: pd.DataFrame, seed: int) -> tuple[list[str], int]:
    partners: dict[str, list[str]] = {}
    for a, b in zip(frame.loc[frame["label"] == 0, "text1"], frame.loc[frame["label"] == 0, "text2"], strict=True):
        partners.setdefault(a, []).append(b)
        partners.setdefault(b, []).append(a)
    rng = np.random.default_rng(seed)
    texts = np.array(sorted(set(frame["text1"]) | set(frame["text2"])))
    comp_of = {t: c for col in ("text1", "text2") for t, c in zip(frame[col], frame["component"], strict=True)}
    out, found = [], 0
    for a, p, comp in zip(positives["text1"], positives["text2"], positives["component"], strict=True):
        options = partners.get(a, []) + partners.get(p, [])
        if options:
            out.append(options[int(rng.integers(len(options)))])
            found += 1
            continue
        for _ in range(20):
            cand = str(texts[int(rng.integers(len(texts)))])
            if comp_of[cand] != comp:
                break
        out.append(cand)
    return out, found


class DatasetBuilder:
    """Load, map, clean and split pair data into leak-free train/dev/test.

    Args:
        config: a :class:`DataConfig`; keyword arguments override its fields
            (``DatasetBuilder(source="pairs.csv", max_train_pairs=1000)``).
        task: the registered task whose columns and label type apply.

    Example::

        built = DatasetBuilder(source="quora.tsv.gz").build()
        print(built.report.summary())
        train = built.dataset("train")  # a datasets.Dataset for the default loss
    """

    def __init__(self, config: DataConfig | dict[str, Any] | None = None, *, task: str = "pair-classification", **overrides: Any) -> None:
        base = config.model_dump() if isinstance(config, DataConfig) else dict(config or {})
        base.update(overrides)
        self.config: DataConfig = _validate(DataConfig, base, "DatasetBuilder")
        self.task: TaskSpec = get_task(task)

    # ------------------------------------------------------------------ build
    def build(self, source: Any = None) -> BuiltDataset:
        """Build the splits from ``source`` (or ``config.source``); cached by fingerprint."""
        src = self.config.source if source is None else source
        if src is None:
            raise DataError("no data source given", field="data.source", expected="a file path, a Hugging Face dataset id, a DataFrame or a list of rows", found=None)
        frame, description, source_fp = self._load(src)
        fingerprint = self._fingerprint(source_fp)
        cache_path = self._cache_path(fingerprint)
        if cache_path is not None and (cache_path / "report.json").is_file():
            built = BuiltDataset.load(cache_path)
            built.report.from_cache = True
            logger.info("loaded cached splits %s", cache_path)
            return built
        built = self._build_frame(frame, description, fingerprint)
        if cache_path is not None:
            built.save(cache_path)
        return built

    def load_frame(self, source: Any = None) -> pd.DataFrame:
        """Load and map the source into canonical columns, before cleaning."""
        frame, _, _ = self._load(self.config.source if source is None else source)
        return frame

    def _fingerprint(self, source_fp: str) -> str:
        cfg = self.config.model_dump(mode="json", exclude={"source", "cache", "cache_dir", "hf_split", "hf_config", "format"})
        payload = json.dumps({"v": _FORMAT_VERSION, "task": self.task.name, "source": source_fp, "config": cfg}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    def _cache_path(self, fingerprint: str) -> Path | None:
        if not self.config.cache:
            return None
        root = self.config.cache_dir or os.environ.get("EMBEDFT_CACHE_DIR") or Path.home() / ".cache" / "embedft"
        return Path(root) / "datasets" / fingerprint

    # ------------------------------------------------------------------ load
    def _load(self, src: Any) -> tuple[pd.DataFrame, str, str]:
        import pandas as pd

        if isinstance(src, pd.DataFrame):
            raw, description = src.copy(), f"DataFrame ({len(src)} rows)"
        elif isinstance(src, (str, os.PathLike)):
            raw, description = self._load_path_or_hub(str(src))
        elif isinstance(src, Sequence) and not isinstance(src, (str, bytes)):
            raw, description = _frame_from_rows(src), f"list ({len(src)} rows)"
        else:
            raise DataError("unsupported data source", field="data.source", expected="path, dataset id, DataFrame or list of rows", found=type(src).__name__)
        raw = _expand_nested_questions(raw)
        mapped = self._map_columns(raw)
        source_fp = _hash_frame(mapped)
        return mapped, description, source_fp

    def _load_path_or_hub(self, src: str) -> tuple[pd.DataFrame, str]:
        path = Path(src).expanduser()
        fmt = self.config.format
        looks_local = path.exists() or path.suffix.lower() in (*_SUFFIX_FORMATS, ".gz") or src.startswith((".", "/", "~"))
        if fmt == "hf" or (fmt == "auto" and not looks_local):
            return _load_hub(src, self.config.hf_config, self.config.hf_split), f"hf:{src}"
        if not path.is_file():
            raise DataError("data file not found", field="data.source", expected="an existing file", found=str(path))
        if fmt == "auto":
            suffixes = [s.lower() for s in path.suffixes]
            inner = suffixes[-2] if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
            fmt = _SUFFIX_FORMATS.get(inner)
            if fmt is None:
                raise DataError("cannot tell the file format from its name", field="data.format", expected="csv, tsv, jsonl or parquet (or a matching suffix)", found=path.name)
        return _read_file(path, fmt), str(path)

    def _map_columns(self, raw: pd.DataFrame) -> pd.DataFrame:
        explicit = self.config.columns
        found = [str(c) for c in raw.columns]
        for role, col in explicit.items():
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
        required = [c for c in self.task.input_columns]
        for role in (*required, "id1", "id2"):
            if role in explicit:
                mapping[role] = explicit[role]
                continue
            aliases = self.task.column_aliases.get(role, (role,))
            hit = next((a for a in aliases if a in raw.columns), None)
            if hit is None:
                lowered = {c.lower(): c for c in found}
                hit = next((lowered[a.lower()] for a in aliases if a.lower() in lowered), None)
            if hit is not None:
                mapping[role] = hit
            elif role in required:
                unused = [c for c in found if c not in mapping.values()]
                guess = get_close_matches(role, unused, n=1) or unused[:1]
                suggestion = f"columns={{'{role}': '{guess[0]}'}}" if guess else f"columns={{'{role}': '<your column>'}}"
                raise DataError(
                    f"no column for {role!r}",
                    field=f"data.columns.{role}",
                    expected=f"one of {list(aliases)} or an explicit mapping",
                    found=f"columns {found}",
                    hint=f"map it explicitly, e.g. {suggestion} (CLI: --set data.columns.{role}=...)",
                )
        if ("id1" in mapping) != ("id2" in mapping):
            mapping.pop("id1", None)
            mapping.pop("id2", None)
        out = raw[[mapping[r] for r in mapping]].copy()
        out.columns = list(mapping)
        return out.reset_index(drop=True)

    # ------------------------------------------------------------------ clean + split
    def _build_frame(self, frame: pd.DataFrame, description: str, fingerprint: str) -> BuiltDataset:
        rows_read = len(frame)
        cleaned, counts = _clean(frame, self.task.label_type)
        if cleaned.empty:
            raise DataError(
                "no pairs left after cleaning",
                field="data.source",
                expected="at least one pair with two non-empty, different texts",
                found=f"{rows_read} rows read, {counts}",
            )
        comp = _components(cleaned)
        cleaned["component"] = comp
        assignment = _assign_splits(cleaned, self.config.splits.model_dump(), self.config.seed)
        frames = {name: cleaned[assignment == name].reset_index(drop=True) for name in SPLITS}
        _check_splittable(frames, int(comp.max()) + 1)
        train_before = len(frames["train"])
        cap = self.config.max_train_pairs
        if cap is not None and cap < train_before:
            frames["train"] = _stratified_cap(frames["train"], cap, self.config.seed)
        report = DataReport(
            source=description,
            fingerprint=fingerprint,
            rows_read=rows_read,
            **counts,
            kept=len(cleaned),
            components=int(comp.max()) + 1,
            largest_component=int(np.bincount(comp).max()),
            splits={name: _stats(f) for name, f in frames.items()},
            leakage=_leakage(frames),
            train_pairs_before_cap=train_before,
            max_train_pairs=cap,
        )
        if any(report.leakage.values()):  # pragma: no cover - guarded by construction
            raise DataError("splits share texts", field="splits", expected="0 shared texts", found=report.leakage)
        logger.info("built splits\n%s", report.summary())
        return BuiltDataset(**frames, report=report, task=self.task.name)


# ---------------------------------------------------------------------- loading helpers
def _frame_from_rows(rows: Sequence[Any]) -> pd.DataFrame:
    import pandas as pd

    if not rows:
        return pd.DataFrame(columns=["text1", "text2", "label"])
    first = rows[0]
    if isinstance(first, dict):
        return pd.DataFrame(list(rows))
    if isinstance(first, (tuple, list)):
        widths = {len(r) for r in rows}
        if widths == {3}:
            return pd.DataFrame([tuple(r) for r in rows], columns=["text1", "text2", "label"])
        if widths == {5}:
            return pd.DataFrame([tuple(r) for r in rows], columns=["text1", "text2", "label", "id1", "id2"])
        raise DataError("rows have the wrong number of fields", field="data.source", expected="(text1, text2, label) or (text1, text2, label, id1, id2) tuples", found=f"lengths {sorted(widths)}")
    raise DataError("unsupported row type", field="data.source", expected="dicts or tuples", found=type(first).__name__)


def _read_file(path: Path, fmt: str) -> pd.DataFrame:
    import pandas as pd

    try:
        if fmt in ("csv", "tsv"):
            return pd.read_csv(path, sep="," if fmt == "csv" else "\t", dtype=str, keep_default_na=False, na_values=[""], compression="infer", encoding="utf-8")
        if fmt == "jsonl":
            return _read_jsonl(path)
        return pd.read_parquet(path)
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot decode {path.name}", field="data.source", expected="UTF-8 text", found=f"byte {exc.object[exc.start:exc.start + 1]!r} at offset {exc.start}") from None
    except (gzip.BadGzipFile, EOFError, OSError) as exc:
        raise DataError(f"cannot read {path.name}: {exc}", field="data.source", expected=f"a readable {fmt} file", found=str(path)) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path.name} is empty", field="data.source", expected=f"a {fmt} file with a header and rows", found="an empty file") from None
    except (pd.errors.ParserError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot parse {path.name}: {first}", field="data.source", expected=f"a well-formed {fmt} file", found=str(path)) from None
    except Exception as exc:  # pyarrow raises its own types for garbled parquet
        raise DataError(f"cannot read {path.name}: {type(exc).__name__}: {exc}", field="data.source", expected=f"a readable {fmt} file", found=str(path)) from None


def _read_jsonl(path: Path) -> pd.DataFrame:
    import pandas as pd

    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    with opener(path, "rt", encoding="utf-8") as fh:
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
    return pd.DataFrame(records)


def _load_hub(name: str, config: str | None, split: str) -> pd.DataFrame:
    from embedft.errors import require

    datasets = require("datasets")
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # offline, unknown id, bad split: the hub raises many types
        raise DataError(
            f"cannot load Hugging Face dataset {name!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            field="data.source",
            expected="an existing local file, or a dataset id reachable on the hub (is HF_DATASETS_OFFLINE set?)",
            found=name,
        ) from None
    return ds.to_pandas()


def _expand_nested_questions(raw: pd.DataFrame) -> pd.DataFrame:
    """The HF ``quora`` form: ``questions = {"id": [a, b], "text": [a, b]}``, ``is_duplicate``."""
    if "questions" not in raw.columns or raw.empty:
        return raw
    first = raw["questions"].iloc[0]
    if not isinstance(first, dict) or "text" not in first:
        return raw
    out = raw.drop(columns=["questions"]).copy()
    texts = [list(q["text"]) for q in raw["questions"]]
    out["question1"] = [t[0] if len(t) > 0 else None for t in texts]
    out["question2"] = [t[1] if len(t) > 1 else None for t in texts]
    if "id" in first:
        ids = [list(q["id"]) for q in raw["questions"]]
        out["qid1"] = [i[0] if len(i) > 0 else None for i in ids]
        out["qid2"] = [i[1] if len(i) > 1 else None for i in ids]
    return out


def _hash_frame(frame: pd.DataFrame) -> str:
    buf = io.StringIO()
    frame.astype(str).to_csv(buf, index=False)
    return hashlib.sha256(buf.getvalue().encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------- cleaning
_LABEL_STRINGS = {"0": 0, "1": 1}


def _parse_label(value: Any, row: int) -> int:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return int(value)
    if isinstance(value, (float, np.floating)) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str) and value.strip() in _LABEL_STRINGS:
        return _LABEL_STRINGS[value.strip()]
    raise DataError(
        f"invalid label in row {row}",
        field="label",
        expected="0/1, true/false or '0'/'1'",
        found=repr(value),
    )


# Longer than any sentence or question an embedding model reads; in practice an unclosed quote
# that swallowed the rest of a CSV file.
MAX_TEXT_CHARS = 100_000


def _clean(frame: pd.DataFrame, label_type: str) -> tuple[pd.DataFrame, dict[str, int]]:
    counts = dict(dropped_missing_text=0, dropped_empty_text=0, dropped_self_pairs=0, dropped_duplicates=0, conflicting_duplicates=0)
    has_ids = "id1" in frame.columns
    seen: dict[tuple[str, str], int] = {}
    keep_rows: list[dict[str, Any]] = []
    for i, rec in enumerate(frame.to_dict("records")):
        row = i + 1
        t1, t2 = rec["text1"], rec["text2"]
        if label_type == "binary":
            raw_label = rec["label"]
            if raw_label is None or (isinstance(raw_label, float) and np.isnan(raw_label)):
                raise DataError(f"missing label in row {row}", field="label", expected="0/1, true/false or '0'/'1'", found="an empty value")
            label = _parse_label(raw_label, row)
        else:  # pragma: no cover - other label types arrive with their tasks
            label = rec.get("label")
        if _missing(t1) or _missing(t2):
            counts["dropped_missing_text"] += 1
            continue
        if not isinstance(t1, str) or not isinstance(t2, str):
            raise DataError(f"text is not a string in row {row}", field="text1" if not isinstance(t1, str) else "text2", expected="a string", found=type(t1 if not isinstance(t1, str) else t2).__name__)
        t1, t2 = t1.strip(), t2.strip()
        if not t1 or not t2:
            counts["dropped_empty_text"] += 1
            continue
        for role, text in (("text1", t1), ("text2", t2)):
            if len(text) > MAX_TEXT_CHARS:
                raise DataError(
                    f"text too long in row {row} (an unclosed quote in a CSV file?)",
                    field=role,
                    expected=f"at most {MAX_TEXT_CHARS} characters",
                    found=f"{len(text)} characters starting {text[:40]!r}",
                )
        n1, n2 = normalize_text(t1), normalize_text(t2)
        if n1 == n2 or (has_ids and not _missing(rec["id1"]) and str(rec["id1"]) == str(rec["id2"])):
            counts["dropped_self_pairs"] += 1
            continue
        key = (n1, n2) if n1 <= n2 else (n2, n1)
        if key in seen:
            counts["dropped_duplicates"] += 1
            if keep_rows[seen[key]]["label"] != label:
                counts["conflicting_duplicates"] += 1
            continue
        seen[key] = len(keep_rows)
        out = {"text1": t1, "text2": t2, "label": label}
        if has_ids:
            out["id1"] = None if _missing(rec["id1"]) else str(rec["id1"])
            out["id2"] = None if _missing(rec["id2"]) else str(rec["id2"])
        keep_rows.append(out)
    import pandas as pd

    columns = ["text1", "text2", "label"] + (["id1", "id2"] if has_ids else [])
    return pd.DataFrame(keep_rows, columns=columns), counts


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


# ---------------------------------------------------------------------- splitting
def _components(frame: pd.DataFrame) -> np.ndarray:
    """Connected-component id per pair: texts (normalised) and ids linked by any pair."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb

    has_ids = "id1" in frame.columns
    for rec in frame.itertuples(index=False):
        a, b = "t:" + normalize_text(rec.text1), "t:" + normalize_text(rec.text2)
        union(a, b)
        if has_ids:
            if rec.id1 is not None:
                union(a, "i:" + rec.id1)
            if rec.id2 is not None:
                union(b, "i:" + rec.id2)
    roots = [find("t:" + normalize_text(t)) for t in frame["text1"]]
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(r, len(ids)) for r in roots], dtype=np.int64)


def _assign_splits(frame: pd.DataFrame, ratios: dict[str, float], seed: int) -> np.ndarray:
    """Assign whole components to splits, matching pair counts and label balance per split."""
    comp = frame["component"].to_numpy()
    labels = frame["label"].to_numpy(dtype=np.int64)
    n_comp = int(comp.max()) + 1
    size = np.bincount(comp, minlength=n_comp)
    pos = np.bincount(comp, weights=labels, minlength=n_comp)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_comp)
    order = order[np.argsort(-size[order], kind="stable")]  # big groups first, ties in seeded order
    total, total_pos = len(frame), labels.sum()
    names = list(SPLITS)
    target = np.array([ratios[n] * total for n in names])
    target_pos = np.array([ratios[n] * total_pos for n in names])
    target_neg = target - target_pos
    cur, cur_pos = np.zeros(3), np.zeros(3)
    where = np.empty(n_comp, dtype=np.int64)
    for c in order:
        frac_pos = pos[c] / size[c]
        deficit = (
            (target - cur) / np.maximum(target, 1)
            + frac_pos * (target_pos - cur_pos) / np.maximum(target_pos, 1)
            + (1 - frac_pos) * (target_neg - (cur - cur_pos)) / np.maximum(target_neg, 1)
        )
        s = int(np.argmax(deficit))
        where[c] = s
        cur[s] += size[c]
        cur_pos[s] += pos[c]
    return np.array(names, dtype=object)[where[comp]]


def _check_splittable(frames: dict[str, pd.DataFrame], n_components: int) -> None:
    for name, f in frames.items():
        labels = set(f["label"].tolist())
        need = {0, 1} if name in ("dev", "test") else set()
        if f.empty or not need <= labels:
            raise DataError(
                f"too few groups of linked texts to make a {name} split"
                + ("" if f.empty else " with both labels"),
                field=f"data.splits.{name}",
                expected="enough independent groups for non-empty train/dev/test splits with both labels in dev and test",
                found=f"{n_components} group(s); {name} got {len(f)} pair(s), labels {sorted(labels)}",
                hint="add more data or change data.splits",
            )


def _stratified_cap(frame: pd.DataFrame, cap: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = frame["label"].to_numpy()
    chosen = []
    n_pos = int(round(cap * labels.mean()))
    for value, n in ((1, n_pos), (0, cap - n_pos)):
        idx = np.flatnonzero(labels == value)
        chosen.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
    keep = np.sort(np.concatenate(chosen))
    return frame.iloc[keep].reset_index(drop=True)


def _stats(frame: pd.DataFrame) -> SplitStats:
    n, p = len(frame), int(frame["label"].sum())
    return SplitStats(
        pairs=n,
        positives=p,
        negatives=n - p,
        positive_rate=p / n if n else 0.0,
        components=int(frame["component"].nunique()),
        texts=len(_texts(frame)),
    )


def _texts(frame: pd.DataFrame) -> set[str]:
    return {normalize_text(t) for t in frame["text1"]} | {normalize_text(t) for t in frame["text2"]}


def _leakage(frames: dict[str, pd.DataFrame]) -> dict[str, int]:
    texts = {n: _texts(f) for n, f in frames.items()}
    return {f"{a}/{b}": len(texts[a] & texts[b]) for a, b in (("train", "dev"), ("train", "test"), ("dev", "test"))}

