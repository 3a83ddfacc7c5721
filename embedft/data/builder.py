"""DatasetBuilder: load, map, clean and split, cached by a fingerprint of the rows and the settings."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from embedft.config import DataConfig, validate_config
from embedft.data.built import BuiltDataset, DataReport, split_stats
from embedft.data.cleaning import clean_rows, normalise_scores, with_corpus
from embedft.data.loading import Loaded, load_source
from embedft.data.splitting import SPLITS, assign_splits, balance_key, check_splittable, components, corpus_warnings, data_warnings, leakage, reused_ids, stratified_cap
from embedft.errors import DataError
from embedft.files import prepare_cache_root
from embedft.tasks import TaskSpec, get_task

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["DatasetBuilder"]

logger = logging.getLogger(__name__)

_FORMAT_VERSION = "3"  # bump when the cleaning/splitting logic changes, to invalidate caches


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
            raise DataError(
                "DatasetBuilder takes a DataConfig or a dict (the data itself goes to build() or source=)",
                field="config",
                expected="a DataConfig, a dict or None",
                found=type(config).__name__,
            )
        base = config.model_dump() if isinstance(config, DataConfig) else dict(config or {})
        base.update(overrides)
        self.config: DataConfig = validate_config(DataConfig, base, "DatasetBuilder")
        self.task: TaskSpec = get_task(task)

    def build(self, source: Any = None) -> BuiltDataset:
        """Build the splits from ``source`` (or ``config.source``); cached by fingerprint."""
        src = self.config.source if source is None else source
        if src is None:
            raise DataError("no data source given", field="data.source", expected="a file path, a Hugging Face dataset id, a DataFrame or a list of rows", found=None)
        loaded = load_source(src, self.task, self.config)
        cfg = self.config.model_dump(mode="json", exclude={"source", "cache", "cache_dir", "hf_split", "hf_config", "format", "mine_hard_negatives"})
        payload = json.dumps({"v": _FORMAT_VERSION, "task": self.task.name, "source": loaded.fingerprint, "config": cfg}, sort_keys=True)
        fingerprint = hashlib.sha256(payload.encode()).hexdigest()[:20]
        cache_path = prepare_cache_root(self.config.cache_dir) / "datasets" / fingerprint if self.config.cache else None
        if cache_path is not None and (cache_path / "report.json").is_file():
            try:
                built = BuiltDataset.load(cache_path)
            except DataError as exc:
                logger.warning("the cached splits in %s cannot be read (%s); rebuilding them", cache_path, exc.message)
            else:
                built.report.from_cache = True
                logger.info("loaded cached splits %s", cache_path)
                return built
        built = self._build_frame(loaded, fingerprint)
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

        return mine_hard_negatives(built, model, config or self.config.mine_hard_negatives or MiningConfig())

    def load_frame(self, source: Any = None) -> pd.DataFrame:
        """Load and map the source into canonical columns, before cleaning."""
        return load_source(self.config.source if source is None else source, self.task, self.config).frame

    def _build_frame(self, loaded: Loaded, fingerprint: str) -> BuiltDataset:
        task, frame = self.task, loaded.frame
        score_range, range_source = None, None
        if task.label_type == "score":
            frame, score_range, range_source = normalise_scores(frame, self.config.score_range)
        cleaned, counts = clean_rows(frame, task)
        if cleaned.empty:
            expected = f"at least one row with non-empty, different texts in {list(task.text_columns)}"
            raise DataError("no rows left after cleaning", field="data.source", expected=expected, found=f"{len(frame)} rows read, {counts}")
        corpus = None
        if task.uses_corpus:
            cleaned, corpus = with_corpus(cleaned, loaded.corpus)
        cleaned["component"] = comp = components(cleaned, task)
        assignment = assign_splits(cleaned, self.config.splits.model_dump(), self.config.seed, balance_key(cleaned, task))
        frames = {name: cleaned[assignment == name].reset_index(drop=True) for name in SPLITS}
        reused = reused_ids(cleaned, task)
        try:
            check_splittable(frames, int(comp.max()) + 1, task)
        except DataError as exc:
            if not reused:
                raise
            raise DataError(exc.message, field=exc.field, expected=exc.expected, found=exc.found, hint=f"{reused}; check the id columns, or leave them out of data.columns") from None
        train_before, cap = len(frames["train"]), self.config.max_train_pairs
        if cap is not None and cap < train_before:
            frames["train"] = stratified_cap(frames["train"], cap, self.config.seed, task)
        report = DataReport(
            source=loaded.description,
            fingerprint=fingerprint,
            rows_read=len(frame),
            **counts,
            kept=len(cleaned),
            components=int(comp.max()) + 1,
            largest_component=int(np.bincount(comp).max()),
            splits={name: split_stats(f, task) for name, f in frames.items()},
            leakage=leakage(frames, task.group_columns),
            train_pairs_before_cap=train_before,
            max_train_pairs=cap,
            task=task.name,
            score_range=score_range,
            score_range_source=range_source,
            corpus_docs=None if corpus is None else len(corpus),
            unjudged_queries=loaded.unjudged,
            shared_relevant_docs=leakage(frames, ("positive",)) if task.uses_corpus else {},
            warnings=[
                *data_warnings(frames, task, counts["conflicting_pairs"], len(cleaned)),
                *([reused + ": the rows they link are grouped (and split) together"] if reused else []),
                *corpus_warnings(corpus),
            ],
        )
        if any(report.leakage.values()):  # pragma: no cover - guarded by construction
            raise DataError("splits share texts", field="splits", expected="0 shared texts", found=report.leakage)
        logger.info("built splits\n%s", report.summary())
        return BuiltDataset(**frames, report=report, task=task.name, corpus=corpus)
