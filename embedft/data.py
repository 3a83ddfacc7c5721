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

import csv
import functools
import hashlib
import io
import json
import logging
import os
import re
import shlex
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from embedft.config import DataConfig, validate_config
from embedft.errors import DataError, EmbedftError
from embedft.readers import check_line_lengths, open_binary, read_guard
from embedft.files import OutputError, check_output_dir, new_scratch, prepare_cache_root, remove_owned, replace_dir
from embedft.tasks import TaskSpec, get_task

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import pandas as pd

__all__ = ["DatasetBuilder", "BuiltDataset", "DataReport", "SplitStats", "normalize_text", "read_guard"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
_FORMAT_VERSION = "3"  # bump when the cleaning/splitting logic changes, to invalidate caches
_SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


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


class SplitStats(BaseModel):
    """Size and label balance of one split (``positives``/``negatives`` for 0/1 labels, ``mean_score`` for scores)."""

    pairs: int
    positives: int | None = None
    negatives: int | None = None
    positive_rate: float | None = None
    mean_score: float | None = None
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
    task: str = "pair-classification"
    score_range: tuple[float, float] | None = None
    score_range_source: str | None = None
    corpus_docs: int | None = None
    unjudged_queries: int = 0
    shared_relevant_docs: dict[str, int] = {}
    conflicting_pairs: int = 0
    """Distinct pairs seen with both labels (``conflicting_duplicates`` counts the rows)."""
    warnings: list[str] = []
    """Legal but weak data: splits too small to measure or with one class, contradictory labels."""

    def summary(self) -> str:
        """A short human-readable table of the report."""
        lines = [
            f"source: {self.source} (task {self.task})",
            f"rows read {self.rows_read}, kept {self.kept} (dropped: missing text {self.dropped_missing_text}, "
            f"empty text {self.dropped_empty_text}, self-pairs {self.dropped_self_pairs}, "
            f"duplicate rows {self.dropped_duplicates}; conflicting labels among duplicates {self.conflicting_duplicates})",
            f"components {self.components} (largest {self.largest_component} rows)",
        ]
        if self.score_range is not None:
            lo, hi = self.score_range
            lines.append(f"scores normalised to [0, 1] from the {self.score_range_source} range [{lo:g}, {hi:g}]")
        if self.corpus_docs is not None:
            lines.append(f"corpus {self.corpus_docs} documents; queries without judgements dropped: {self.unjudged_queries}")
        binary = all(s.positives is not None for s in self.splits.values())
        head = f"{'pos':>6} {'neg':>6} {'pos rate':>8}" if binary else f"{'mean score':>10}"
        lines.append(f"{'split':<6} {'rows':>7} {head} {'groups':>7} {'texts':>7}")
        for name, s in self.splits.items():
            if binary:
                mid = f"{s.positives:>6} {s.negatives:>6} {s.positive_rate:>8.3f}"
            else:
                mid = f"{s.mean_score:>10.3f}" if s.mean_score is not None else f"{'-':>10}"
            lines.append(f"{name:<6} {s.pairs:>7} {mid} {s.components:>7} {s.texts:>7}")
        if self.max_train_pairs is not None:
            lines.append(f"train capped at {self.max_train_pairs} pairs (from {self.train_pairs_before_cap})")
        leak = ", ".join(f"{k}: {v}" for k, v in self.leakage.items())
        status = "OK" if not any(self.leakage.values()) else "LEAK"
        lines.append(f"leakage check (texts shared between splits) {status}: {leak}")
        if self.shared_relevant_docs:
            shared = ", ".join(f"{k}: {v}" for k, v in self.shared_relevant_docs.items())
            lines.append(f"relevant documents shared between splits (allowed: splits are by query): {shared}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


@dataclass
class BuiltDataset:
    """Train/dev/test frames and the build report.

    Frames hold the task's columns (``text1, text2, label`` for pair tasks and STS, with
    STS scores in [0, 1]; ``anchor, positive, negative`` for triplets; ``query_id, query,
    doc_id, positive`` for retrieval) plus ``component``, the group id that never crosses
    splits. Retrieval also carries ``corpus`` (``doc_id, text``): every split retrieves
    from all of it.
    """

    train: pd.DataFrame
    dev: pd.DataFrame
    test: pd.DataFrame
    report: DataReport
    task: str = "pair-classification"
    corpus: pd.DataFrame | None = None

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
        spec = get_task(self.task)
        train = _stratified_cap(self.train, cap, seed, spec)
        frames = {"train": train, "dev": self.dev, "test": self.test}
        update = {
            "splits": {**self.report.splits, "train": _stats(train, spec)},
            "max_train_pairs": cap,
            # the build's warnings stand (dev and test are unchanged); the cap may add one about train
            "warnings": list(dict.fromkeys([*self.report.warnings, *_data_warnings(frames, spec, self.report.conflicting_pairs, self.report.kept)])),
        }
        return replace(self, train=train, report=self.report.model_copy(update=update))

    def with_train(self, train: pd.DataFrame) -> BuiltDataset:
        """The same dataset with another train frame (e.g. with mined hard negatives added)."""
        return replace(self, train=train)

    def examples(self, name: str = "train") -> list:
        """The split as sentence-transformers ``InputExample`` objects (texts of the task, plus the label if any)."""
        from sentence_transformers import InputExample

        spec = get_task(self.task)
        frame = self.split(name)
        columns = [frame[c].tolist() for c in spec.text_columns]
        if spec.label_type == "none":
            return [InputExample(texts=list(texts)) for texts in zip(*columns, strict=True)]
        return [InputExample(texts=list(texts), label=float(y)) for *texts, y in zip(*columns, frame["label"], strict=True)]

    def dataset(self, name: str = "train", loss: str | None = None, hard_negatives: bool = False, seed: int = 0) -> datasets.Dataset:
        """The split as a ``datasets.Dataset`` with the columns ``loss`` expects.

        Labelled-pair losses get ``sentence1, sentence2, label``; scored-pair losses
        ``sentence1, sentence2, score``. Positive-pair losses (MultipleNegativesRankingLoss
        and kin) get ``anchor, positive``, plus negative columns: for pair classification,
        with ``hard_negatives``, a text labelled as not-duplicate of the anchor or positive
        where the data has one (else a random text from another group); for triplets and
        retrieval the given negatives; and any mined ones (``mined_1..k`` in the frame).
        """
        from datasets import Dataset

        task = get_task(self.task)
        spec = task.loss(loss)
        data = task.train_columns(self.split(name), spec, hard_negatives, seed)
        if not next(iter(data.values()), []):
            raise DataError(
                f"{spec.name} trains on positive pairs and the {name} split has none",
                field="label",
                expected="at least one pair labelled 1",
                found=0,
            )
        return Dataset.from_dict(data)

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, field: str = "path") -> Path:
        """Write the splits (Parquet) and the report (JSON) to ``path`` atomically.

        ``path`` must be new, empty or splits that embedft saved before (replaced once the new
        copy is complete); any other folder is refused (``field`` names the setting in the error).
        """
        path = Path(path).expanduser()
        check_output_dir(path, kind="splits", field=field, overwrite=True)
        tmp = new_scratch(path)
        try:
            for name in SPLITS:
                self.split(name).to_parquet(tmp / f"{name}.parquet", index=False)
            (tmp / "report.json").write_text(self.report.model_dump_json(indent=2), encoding="utf-8")
            (tmp / "task.txt").write_text(self.task, encoding="utf-8")
            if self.corpus is not None:
                self.corpus.to_parquet(tmp / "corpus.parquet", index=False)
            replace_dir(tmp, path, kind="splits")
        except OSError as exc:
            if isinstance(exc, EmbedftError):
                raise
            raise OutputError(f"cannot save the splits: {exc.strerror or exc}", field=field, expected="a writable folder with free space", found=str(path)) from None
        finally:
            remove_owned(tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> BuiltDataset:
        """Read splits written by :meth:`save`; a missing or damaged file is a :class:`DataError`."""
        import pandas as pd

        if not isinstance(path, (str, os.PathLike)):
            raise DataError("saved splits are a folder path", field="data_dir", expected="a folder written by BuiltDataset.save", found=type(path).__name__)
        path = Path(path).expanduser()
        try:
            frames = {name: pd.read_parquet(path / f"{name}.parquet") for name in SPLITS}
            report = DataReport.model_validate_json((path / "report.json").read_text(encoding="utf-8"))
            task = (path / "task.txt").read_text(encoding="utf-8").strip()
            corpus = pd.read_parquet(path / "corpus.parquet") if (path / "corpus.parquet").is_file() else None
        except Exception as exc:  # pyarrow, pydantic and the OS raise their own types for a damaged folder
            raise DataError(
                f"cannot read saved splits: {type(exc).__name__}: {exc}",
                field="data_dir",
                expected="a folder written by BuiltDataset.save (train/dev/test.parquet, report.json, task.txt)",
                found=str(path),
            ) from None
        get_task(task)
        return cls(**frames, report=report, task=task, corpus=corpus)


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
        if config is not None and not isinstance(config, (DataConfig, dict)):
            raise DataError("DatasetBuilder takes a DataConfig or a dict (the data itself goes to build() or source=)", field="config", expected="a DataConfig, a dict or None", found=type(config).__name__)
        base = config.model_dump() if isinstance(config, DataConfig) else dict(config or {})
        base.update(overrides)
        self.config: DataConfig = validate_config(DataConfig, base, "DatasetBuilder")
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
            try:
                built = BuiltDataset.load(cache_path)
            except DataError as exc:
                logger.warning("the cached splits in %s cannot be read (%s); rebuilding them", cache_path, exc.message)
            else:
                built.report.from_cache = True
                logger.info("loaded cached splits %s", cache_path)
                return built
        built = self._build_frame(frame, description, fingerprint)
        if cache_path is not None:
            built.save(cache_path, field="data.cache_dir")
        return built

    def mine_hard_negatives(self, built: BuiltDataset, model: Any, config: Any = None) -> tuple[BuiltDataset, Any]:
        """Add mined hard negatives to ``built``'s train split with ``model`` (see :mod:`embedft.mining`).

        ``config`` is a :class:`~embedft.config.MiningConfig` (default: ``data.mine_hard_negatives``
        of this builder's config, else one negative per row). Returns the new dataset and a
        :class:`~embedft.mining.MiningReport`.
        """
        from embedft.config import MiningConfig
        from embedft.mining import mine_hard_negatives

        cfg = config or self.config.mine_hard_negatives or MiningConfig()
        return mine_hard_negatives(built, model, cfg)

    def load_frame(self, source: Any = None) -> pd.DataFrame:
        """Load and map the source into canonical columns, before cleaning."""
        frame, _, _ = self._load(self.config.source if source is None else source)
        return frame

    def _fingerprint(self, source_fp: str) -> str:
        cfg = self.config.model_dump(mode="json", exclude={"source", "cache", "cache_dir", "hf_split", "hf_config", "format", "mine_hard_negatives"})
        payload = json.dumps({"v": _FORMAT_VERSION, "task": self.task.name, "source": source_fp, "config": cfg}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    def _cache_path(self, fingerprint: str) -> Path | None:
        if not self.config.cache:
            return None
        return prepare_cache_root(self.config.cache_dir) / "datasets" / fingerprint

    # ------------------------------------------------------------------ load
    def _load(self, src: Any) -> tuple[pd.DataFrame, str, str]:
        import pandas as pd

        self._corpus = None
        self._unjudged = 0
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
            if not self.task.uses_corpus:
                raise DataError("a folder is a source only for the retrieval task (BEIR layout)", field="data.source", expected="a data file", found=str(src))
            from embedft.convert import load_beir

            raw, self._corpus, self._unjudged = load_beir(Path(src).expanduser(), self.config.qrels)
            description = f"BEIR folder {src}"
        elif isinstance(src, (str, os.PathLike)):
            raw, description = self._load_path_or_hub(str(src))
        elif isinstance(src, Sequence) and not isinstance(src, (str, bytes)):
            raw, description = _frame_from_rows(src, self.task), f"list ({len(src)} rows)"
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
        raw = _expand_nested_questions(raw)
        mapped = self._map_columns(raw)
        source_fp = _hash_frame(mapped) + ("" if self._corpus is None else _hash_frame(self._corpus))
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
        task = self.task
        found = [str(c) for c in raw.columns]
        for role, col in explicit.items():
            if role not in task.roles:
                raise DataError(
                    f"column role {role!r} is not used by task {task.name!r}",
                    field=f"data.columns.{role}",
                    expected=f"one of {list(task.roles)}",
                    found=role,
                )
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
        required = list(task.input_columns)
        missing: list[str] = []
        for role in task.roles:
            if role in explicit:
                mapping[role] = explicit[role]
                continue
            aliases = task.column_aliases.get(role, (role,))
            taken = set(mapping.values())
            hit = next((a for a in aliases if a in raw.columns and a not in taken), None)
            if hit is None:
                lowered = {c.lower(): c for c in found if c not in taken}
                hit = next((lowered[a.lower()] for a in aliases if a.lower() in lowered), None)
            if hit is not None:
                mapping[role] = hit
            elif role in required:
                missing.append(role)
        if missing:
            guess = _guess_columns(raw, task, missing, set(mapping.values()))
            pairs = [(r, guess.get(r, "<your column>")) for r in missing]
            suggestion = "columns={" + ", ".join(f"{r!r}: {c!r}" for r, c in pairs) + "}"
            cli = " ".join("--set " + shlex.quote(f"data.columns.{r}={c if r in guess else '...'}") for r, c in pairs)
            aliases = {r: list(task.column_aliases.get(r, (r,))) for r in missing}
            if len(missing) == 1:
                expected = f"one of {aliases[missing[0]]} or an explicit mapping"
            else:
                expected = "a column per role, named e.g. " + ", ".join(f"{a[0]!r} ({r})" for r, a in aliases.items()) + ", or an explicit mapping"
            raise DataError(
                f"no column for {', '.join(repr(r) for r in missing)} (task {task.name})",
                field=f"data.columns.{missing[0]}",
                expected=expected,
                found=f"columns {found}",
                hint=f"map {'it' if len(missing) == 1 else 'them'} explicitly, e.g. {suggestion} (CLI: {cli})",
            )
        if task.symmetric:  # ids link texts only when both sides have one
            ids = [mapping.get(i) for i in task.id_columns.values()]
            if None in ids:
                for i in task.id_columns.values():
                    mapping.pop(i, None)
        out = raw[[mapping[r] for r in mapping]].copy()
        out.columns = ["label" if r == "score" else r for r in mapping]
        return out.reset_index(drop=True)

    # ------------------------------------------------------------------ clean + split
    def _build_frame(self, frame: pd.DataFrame, description: str, fingerprint: str) -> BuiltDataset:
        task = self.task
        rows_read = len(frame)
        score_range, range_source = None, None
        if task.label_type == "score":
            frame, score_range, range_source = _normalise_scores(frame, self.config.score_range)
        cleaned, counts = _clean(frame, task)
        if cleaned.empty:
            raise DataError(
                "no rows left after cleaning",
                field="data.source",
                expected=f"at least one row with non-empty, different texts in {list(task.text_columns)}",
                found=f"{rows_read} rows read, {counts}",
            )
        corpus = None
        if task.uses_corpus:
            cleaned, corpus = _with_corpus(cleaned, self._corpus)
        comp = _components(cleaned, task)
        cleaned["component"] = comp
        assignment = _assign_splits(cleaned, self.config.splits.model_dump(), self.config.seed, _balance_key(cleaned, task))
        frames = {name: cleaned[assignment == name].reset_index(drop=True) for name in SPLITS}
        reused = _reused_ids(cleaned, task)
        try:
            _check_splittable(frames, int(comp.max()) + 1, task)
        except DataError as exc:
            if not reused:
                raise
            raise DataError(exc.message, field=exc.field, expected=exc.expected, found=exc.found, hint=f"{reused}; check the id columns, or leave them out of data.columns") from None
        train_before = len(frames["train"])
        cap = self.config.max_train_pairs
        if cap is not None and cap < train_before:
            frames["train"] = _stratified_cap(frames["train"], cap, self.config.seed, task)
        report = DataReport(
            source=description,
            fingerprint=fingerprint,
            rows_read=rows_read,
            **counts,
            kept=len(cleaned),
            components=int(comp.max()) + 1,
            largest_component=int(np.bincount(comp).max()),
            splits={name: _stats(f, task) for name, f in frames.items()},
            leakage=_leakage(frames, task.group_columns),
            train_pairs_before_cap=train_before,
            max_train_pairs=cap,
            task=task.name,
            score_range=score_range,
            score_range_source=range_source,
            corpus_docs=None if corpus is None else len(corpus),
            unjudged_queries=self._unjudged,
            shared_relevant_docs=_leakage(frames, ("positive",)) if task.uses_corpus else {},
            warnings=[
                *_data_warnings(frames, task, counts["conflicting_pairs"], len(cleaned)),
                *([reused + ": the rows they link are grouped (and split) together"] if reused else []),
                *_corpus_warnings(corpus),
            ],
        )
        if any(report.leakage.values()):  # pragma: no cover - guarded by construction
            raise DataError("splits share texts", field="splits", expected="0 shared texts", found=report.leakage)
        logger.info("built splits\n%s", report.summary())
        return BuiltDataset(**frames, report=report, task=task.name, corpus=corpus)


# ---------------------------------------------------------------------- loading helpers
def _column_kind(values: pd.Series) -> tuple[str, float]:
    """What a column looks like from its first non-missing values: binary, number, id, text or empty; and its mean length."""
    import pandas as pd

    sample = [v for v in values.head(1000).tolist() if not _missing(v)][:200]
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
    from difflib import SequenceMatcher

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


def _frame_from_rows(rows: Sequence[Any], task: TaskSpec) -> pd.DataFrame:
    import pandas as pd

    columns = list(task.input_columns)
    if not rows:
        return pd.DataFrame(columns=columns)
    first = rows[0]
    if isinstance(first, dict):
        return pd.DataFrame(list(rows))
    if isinstance(first, (tuple, list)):
        widths = {len(r) for r in rows}
        layouts = {len(columns): columns, len(columns) + len(task.id_columns): [*columns, *task.id_columns.values()]}
        if task.name == "retrieval":
            layouts[3] = [*columns, "negative"]
        if len(widths) == 1 and next(iter(widths)) in layouts:
            return pd.DataFrame([tuple(r) for r in rows], columns=layouts[next(iter(widths))])
        shapes = " or ".join("(" + ", ".join(v) + ")" for v in layouts.values())
        raise DataError("rows have the wrong number of fields", field="data.source", expected=f"{shapes} tuples", found=f"lengths {sorted(widths)}")
    raise DataError("unsupported row type", field="data.source", expected="dicts or tuples", found=type(first).__name__)


def _read_file(path: Path, fmt: str) -> pd.DataFrame:
    import pandas as pd

    with read_guard(path, fmt):
        if fmt in ("csv", "tsv", "jsonl"):
            check_line_lengths(path)  # before a parser holds a gigabyte "line" (e.g. from a tiny .gz) in memory
        if fmt in ("csv", "tsv"):
            sep = "," if fmt == "csv" else "\t"
            frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], compression="infer", encoding="utf-8")
            _check_swallowed_rows(frame, path, fmt, sep)
            return frame
        if fmt == "jsonl":
            return _read_jsonl(path)
        return pd.read_parquet(path)


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
        for i in np.flatnonzero(broken.to_numpy(dtype=bool)):
            if any(line.count(sep) >= need for line in re.split(r"\r\n|\r|\n", values.iloc[i])[1:]):
                suspects.setdefault(int(i), col)
    if not suspects:
        return
    i, lines = _first_unclean_record(path, sep, sorted(suspects))
    if i is None:
        return
    col = suspects[i]
    text = str(frame[col].iloc[i])
    where = f"lines {lines[0]}-{lines[1]}" if lines else "several lines"
    raise DataError(
        f"row {i + 1}{f' (line {lines[0]})' if lines else ''} of {path.name} swallowed the rows after it: "
        f"its {str(col)!r} field holds line breaks and whole rows",
        field="data.source",
        expected=f"a well-formed {fmt} file (one row per line; quotes closed)",
        found=f"{where} read as one row, the field starting {text[:40]!r}",
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
    except Exception:  # noqa: BLE001 - a file pandas read but the csv module cannot: trust the delimiter count
        logger.debug("could not scan %s for swallowed rows", path, exc_info=True)
        return rows[0], None
    return None, None


def _read_jsonl(path: Path) -> pd.DataFrame:
    import pandas as pd

    from embedft.convert import read_jsonl_records

    return pd.DataFrame(read_jsonl_records(path))


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
# The documented spellings of a 0/1 label in a text file, compared case-insensitively.
_LABEL_STRINGS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}


def _parse_label(value: Any, row: int) -> int:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return int(value)
    if isinstance(value, (float, np.floating)) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in _LABEL_STRINGS:
        return _LABEL_STRINGS[value.strip().lower()]
    raise DataError(
        f"invalid label in row {row}",
        field="label",
        expected="0/1, true/false (any case) or '0'/'1'",
        found=repr(value),
    )


# Longer than any sentence or question an embedding model reads; in practice an unclosed quote
# that swallowed the rest of a CSV file.
MAX_TEXT_CHARS = 100_000


def _normalise_scores(frame: pd.DataFrame, given: tuple[float, float] | None) -> tuple[pd.DataFrame, tuple[float, float], str]:
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
    out = frame.copy()
    out["label"] = ((values - lo) / (hi - lo)).astype(float)
    return out, (float(lo), float(hi)), source


def _clean(frame: pd.DataFrame, task: TaskSpec) -> tuple[pd.DataFrame, dict[str, int]]:
    counts = dict(dropped_missing_text=0, dropped_empty_text=0, dropped_self_pairs=0, dropped_duplicates=0, conflicting_duplicates=0)
    text_cols = list(task.text_columns)
    extra_texts = [c for c in ("negative",) if c in frame.columns and c not in text_cols]
    id_cols = [c for c in task.id_columns.values() if c in frame.columns]
    has_label = task.label_type != "none"
    seen: dict[tuple[str, ...], int] = {}
    conflicting: set[tuple[str, ...]] = set()
    keep_rows: list[dict[str, Any]] = []
    for i, rec in enumerate(frame.to_dict("records")):
        row = i + 1
        label = None
        if task.label_type == "binary":
            raw_label = rec["label"]
            if _missing(raw_label):
                raise DataError(f"missing label in row {row}", field="label", expected="0/1, true/false or '0'/'1'", found="an empty value")
            label = _parse_label(raw_label, row)
        elif task.label_type == "score":
            label = float(rec["label"])
        texts = [rec[c] for c in text_cols]
        if any(_missing(t) for t in texts):
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
        extras = {}
        for role in extra_texts:
            value = rec[role]
            if _missing(value) or (isinstance(value, str) and not normalize_text(value)):
                extras[role] = None
            elif not isinstance(value, str):
                raise DataError(f"text is not a string in row {row}", field=role, expected="a string", found=type(value).__name__)
            else:
                extras[role] = value.strip()
        for role, text in [*zip(text_cols, texts, strict=True), *((r, t) for r, t in extras.items() if t)]:
            if len(text) > MAX_TEXT_CHARS:
                raise DataError(
                    f"text too long in row {row} (an unclosed quote in a CSV file?)",
                    field=role,
                    expected=f"at most {MAX_TEXT_CHARS} characters",
                    found=f"{len(text)} characters starting {text[:40]!r}",
                )
        ids = {c: _id_key(rec[c]) for c in id_cols}
        same_ids = task.symmetric and len(ids) == 2 and None not in ids.values() and len(set(ids.values())) == 1
        if norms[0] == norms[1] or same_ids:
            counts["dropped_self_pairs"] += 1
            continue
        negative = norms[2] if "negative" in text_cols else (normalize_text(extras["negative"]) if extras.get("negative") else None)
        if negative is not None and negative in norms[:2]:
            clash = "positive" if negative == norms[1] else text_cols[0]
            raise DataError(
                f"negative equals the {clash} in row {row}",
                field="negative",
                expected=f"a negative different from the {clash}",
                found=repr((extras.get("negative") or texts[-1])[:60]),
            )
        key = tuple(sorted(norms)) if task.symmetric else tuple(norms)
        if key in seen:
            counts["dropped_duplicates"] += 1
            if has_label and keep_rows[seen[key]]["label"] != label:
                counts["conflicting_duplicates"] += 1
                conflicting.add(key)
            continue
        seen[key] = len(keep_rows)
        out: dict[str, Any] = dict(zip(text_cols, texts, strict=True))
        out.update(extras)
        if has_label:
            out["label"] = label
        out.update(ids)
        keep_rows.append(out)
    import pandas as pd

    columns = text_cols + extra_texts + (["label"] if has_label else []) + id_cols
    counts["conflicting_pairs"] = len(conflicting)
    return pd.DataFrame(keep_rows, columns=columns), counts


def _missing(value: Any) -> bool:
    """None, NaN (float or numpy), ``pd.NA`` or ``pd.NaT``."""
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    return type(value).__name__ in ("NAType", "NaTType")


# Spellings of "no id" that files and DataFrames use, compared case-insensitively.
_BLANK_IDS = frozenset({"", "nan", "none", "null", "na", "n/a", "<na>", "nat"})


def _id_key(value: Any) -> str | None:
    """The id a text is linked by, or None when the value means "no id".

    Missing values (None, NaN, ``pd.NA``), empty or whitespace-only strings and the
    placeholders ``nan``, ``none``, ``null``, ``na``, ``n/a`` (any case) are no id: a row
    without ids is grouped by its texts only, never through a shared blank. Whole floats
    read as ints, so ``7.0`` and ``7`` are one id::

        >>> [_id_key(v) for v in (" ", "N/A", None, 7.0, " q7 ")]
        [None, None, None, '7', 'q7']
    """
    if _missing(value):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    text = str(value).strip()
    return None if text.lower() in _BLANK_IDS else text


def _with_corpus(frame: pd.DataFrame, corpus: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
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
    else:
        frame["doc_id"] = None
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


# ---------------------------------------------------------------------- splitting
def _components(frame: pd.DataFrame, task: TaskSpec) -> np.ndarray:
    """Connected-component id per row: its group texts (normalised) and their ids, linked by any row."""
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

    cols = list(task.group_columns)
    id_of = {c: task.id_columns[c] for c in cols if c in task.id_columns and task.id_columns[c] in frame.columns}
    texts = {c: ["t:" + normalize_text(t) for t in frame[c]] for c in cols}
    ids = {c: [_id_key(v) for v in frame[i]] for c, i in id_of.items()}  # a blank id links nothing
    for r in range(len(frame)):
        first = texts[cols[0]][r]
        find(first)
        for c in cols[1:]:
            union(first, texts[c][r])
        for c, values in ids.items():
            if values[r] is not None:
                union(texts[c][r], f"i:{c}:{values[r]}" if not task.symmetric else "i:" + values[r])
    roots = [find(t) for t in texts[cols[0]]]
    index: dict[str, int] = {}
    return np.array([index.setdefault(r, len(index)) for r in roots], dtype=np.int64)


def _balance_key(frame: pd.DataFrame, task: TaskSpec) -> np.ndarray:
    """What splits and caps keep in proportion: the 0/1 label, score >= 0.5, or nothing."""
    if task.label_type == "binary":
        return frame["label"].to_numpy(dtype=np.int64)
    if task.label_type == "score":
        return (frame["label"].to_numpy(dtype=np.float64) >= 0.5).astype(np.int64)
    return np.zeros(len(frame), dtype=np.int64)


def _assign_splits(frame: pd.DataFrame, ratios: dict[str, float], seed: int, labels: np.ndarray) -> np.ndarray:
    """Assign whole components to splits, matching row counts and the balance of ``labels`` (0/1) per split."""
    comp = frame["component"].to_numpy()
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


def _check_splittable(frames: dict[str, pd.DataFrame], n_components: int, task: TaskSpec) -> None:
    binary = task.label_type == "binary"
    for name, f in frames.items():
        labels = set(f["label"].tolist()) if binary else set()
        need = {0, 1} if name in ("dev", "test") and binary else set()
        if f.empty or not need <= labels:
            raise DataError(
                f"too few groups of linked texts to make a {name} split"
                + ("" if f.empty else " with both labels"),
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


# What the data report warns about (legal data, weak results).
MIN_EVAL_PAIRS = 50  # below it, one pair moves accuracy by more than 2 points
MAX_CONFLICT_SHARE = 0.05  # of distinct pairs seen with both labels


def _corpus_warnings(corpus: pd.DataFrame | None) -> list[str]:
    """A retrieval corpus so small that ranking metrics at k count all of it."""
    if corpus is None or len(corpus) > 100:
        return []
    trivial = "every @10 and @100 metric" if len(corpus) <= 10 else "every @100 metric (MAP@100, recall@100)"
    return [f"the corpus has {len(corpus)} documents: {trivial} ranks the whole corpus, so high scores say little about the model"]


def _reused_ids(frame: pd.DataFrame, task: TaskSpec) -> str | None:
    """Say so when an id names several different texts (a reused or shifted id column), else None."""
    texts: dict[str, set[str]] = {}
    for text_col, id_col in task.id_columns.items():
        if id_col not in frame.columns or text_col not in frame.columns:
            continue
        prefix = "" if task.symmetric else f"{id_col}:"
        for ident, text in zip(frame[id_col], frame[text_col], strict=True):
            if ident is not None:
                texts.setdefault(prefix + str(ident), set()).add(normalize_text(text))
    reused = {i: len(t) for i, t in texts.items() if len(t) > 1}
    if not reused:
        return None
    worst = max(reused, key=reused.get)
    return f"{len(reused)} id(s) name more than one different text (id {worst!r} names {reused[worst]})"


def _data_warnings(frames: dict[str, pd.DataFrame], task: TaskSpec, conflicting_pairs: int, kept: int) -> list[str]:
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
                only = "positive (1)" if labels == {1} else "negative (0)"
                out.append(
                    f"the {name} split has only {only} pairs: losses that contrast positives with labelled "
                    f"negatives (OnlineContrastiveLoss, ContrastiveLoss) have nothing to compare"
                    + ("" if name == "train" else "; its classification metrics are meaningless")
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
        for name in ("dev", "test"):
            levels = frames[name]["label"].nunique()
            if levels == 2:
                out.append(
                    f"the {name} split's gold scores take only 2 values: Spearman correlation then only says how well "
                    "the model separates two classes (consider task pair-classification, which reports AP)"
                )
    return out


def _stratified_cap(frame: pd.DataFrame, cap: int, seed: int, task: TaskSpec) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = _balance_key(frame, task)
    chosen = []
    n_pos = int(round(cap * labels.mean()))
    for value, n in ((1, n_pos), (0, cap - n_pos)):
        idx = np.flatnonzero(labels == value)
        chosen.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
    keep = np.sort(np.concatenate(chosen))
    return frame.iloc[keep].reset_index(drop=True)


def _stats(frame: pd.DataFrame, task: TaskSpec) -> SplitStats:
    n = len(frame)
    extra: dict[str, Any] = {}
    if task.label_type == "binary":
        p = int(frame["label"].sum())
        extra = {"positives": p, "negatives": n - p, "positive_rate": p / n if n else 0.0}
    elif task.label_type == "score":
        extra = {"mean_score": float(frame["label"].mean()) if n else 0.0}
    return SplitStats(pairs=n, components=int(frame["component"].nunique()), texts=len(_texts(frame, task.text_columns)), **extra)


def _texts(frame: pd.DataFrame, columns: Sequence[str]) -> set[str]:
    return {normalize_text(t) for c in columns for t in frame[c]}


def _leakage(frames: dict[str, pd.DataFrame], columns: Sequence[str]) -> dict[str, int]:
    texts = {n: _texts(f, columns) for n, f in frames.items()}
    return {f"{a}/{b}": len(texts[a] & texts[b]) for a, b in (("train", "dev"), ("train", "test"), ("dev", "test"))}

