"""The built dataset: train/dev/test frames, the build report, and their saved form."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from embedft.data.cleaning import normalize_text
from embedft.data.splitting import SPLITS, data_warnings, stratified_cap
from embedft.errors import DataError, EmbedftError
from embedft.files import OutputError, check_output_dir, new_scratch, remove_owned, replace_dir
from embedft.tasks import TaskSpec, get_task

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import pandas as pd

__all__ = ["BuiltDataset", "DataReport", "SplitStats", "split_stats"]


class SplitStats(BaseModel):
    """Size and label balance of one split (``positives``/``negatives`` for 0/1 labels, ``mean_score`` for scores)."""

    pairs: int
    positives: int | None = None
    negatives: int | None = None
    positive_rate: float | None = None
    mean_score: float | None = None
    components: int
    texts: int


def split_stats(frame: pd.DataFrame, task: TaskSpec) -> SplitStats:
    """The :class:`SplitStats` of one split's frame."""
    n = len(frame)
    extra: dict[str, Any] = {}
    if task.label_type == "binary":
        p = int(frame["label"].sum())
        extra = {"positives": p, "negatives": n - p, "positive_rate": p / n if n else 0.0}
    elif task.label_type == "score":
        extra = {"mean_score": float(frame["label"].mean()) if n else 0.0}
    texts = {normalize_text(t) for c in task.text_columns for t in frame[c]}
    return SplitStats(pairs=n, components=int(frame["component"].nunique()), texts=len(texts), **extra)


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
            lines.append(f"scores normalised to [0, 1] from the {self.score_range_source} range [{self.score_range[0]:g}, {self.score_range[1]:g}]")
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
        lines.append(f"leakage check (texts shared between splits) {'LEAK' if any(self.leakage.values()) else 'OK'}: {leak}")
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
        """The frame of split ``name`` (``train``, ``dev`` or ``test``)."""
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
        train = stratified_cap(self.train, cap, seed, spec)
        frames = {"train": train, "dev": self.dev, "test": self.test}
        update = {
            "splits": {**self.report.splits, "train": split_stats(train, spec)},
            "max_train_pairs": cap,
            # the build's warnings stand (dev and test are unchanged); the cap may add one about train
            "warnings": list(dict.fromkeys([*self.report.warnings, *data_warnings(frames, spec, self.report.conflicting_pairs, self.report.kept)])),
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
            raise DataError(f"{spec.name} trains on positive pairs and the {name} split has none", field="label", expected="at least one pair labelled 1", found=0)
        return Dataset.from_dict(data)

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
        except Exception as exc:  # noqa: BLE001 - pyarrow, pydantic and the OS raise their own types for a damaged folder
            raise DataError(
                f"cannot read saved splits: {type(exc).__name__}: {exc}",
                field="data_dir",
                expected="a folder written by BuiltDataset.save (train/dev/test.parquet, report.json, task.txt)",
                found=str(path),
            ) from None
        get_task(task)
        return cls(**frames, report=report, task=task, corpus=corpus)
