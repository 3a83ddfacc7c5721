"""Hard-negative mining: a DatasetBuilder step that needs a model.

For each training (anchor, positive) row, sentence-transformers' ``mine_hard_negatives``
ranks candidate texts with the base model and keeps ``num_negatives`` that are close to
the anchor but not its positive. Candidates are train-split texts (plus, for retrieval,
corpus documents) that appear in **no dev or test row**, so mining never moves a dev or
test text into training. Mined texts land in ``mined_1..k`` columns
of the train frame; the task's training columns turn them into negatives::

    built, report = mine_hard_negatives(built, model, MiningConfig(num_negatives=2))
    print(report.summary())
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydantic import BaseModel

from embedft.config import MiningConfig
from embedft.data.cleaning import normalize_text
from embedft.errors import ConfigError, DataError
from embedft.tasks import get_task

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

    from embedft.data.built import BuiltDataset

__all__ = ["MiningReport", "mine_hard_negatives"]

logger = logging.getLogger(__name__)


class MiningReport(BaseModel):
    """What mining found: rows in, rows kept with all their negatives, negatives per row, candidates."""

    rows: int
    rows_with_negatives: int
    num_negatives: int
    negatives_found: int
    candidates: int
    dropped_rows: int

    def summary(self) -> str:
        """One line for logs and reports."""
        return (
            f"hard-negative mining: {self.negatives_found} negatives for {self.rows_with_negatives} of {self.rows} training rows "
            f"({self.num_negatives} each, from {self.candidates} train-split candidates); "
            f"{self.dropped_rows} rows without enough negatives dropped"
        )


def _candidates(built: BuiltDataset) -> list[str]:
    """Train-split texts (and, for retrieval, corpus documents) that appear in no dev or test row."""
    task = get_task(built.task)
    if not task.supports_mining:
        raise ConfigError("hard-negative mining is for retrieval and triplets", field="data.mine_hard_negatives", expected="task retrieval or triplets", found=task.name)
    columns = [c for c in ("positive", "negative") if c in built.train.columns]
    held_out = {normalize_text(t) for name in ("dev", "test") for c in columns for t in built.split(name)[c].dropna()}
    texts = [t for c in columns for t in built.train[c].dropna()]
    if built.corpus is not None:
        texts += built.corpus["text"].tolist()
    return [t for t in dict.fromkeys(texts) if normalize_text(t) not in held_out]


def mine_hard_negatives(built: BuiltDataset, model: SentenceTransformer, config: MiningConfig) -> tuple[BuiltDataset, MiningReport]:
    """``built`` with ``mined_1..k`` columns on its train frame, and the :class:`MiningReport`.

    Rows for which the model finds fewer than ``num_negatives`` candidates within the
    range/score/margin limits are dropped from train (counted in the report); dev and
    test are unchanged.
    """
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives as st_mine

    task = get_task(built.task)
    anchor_col = "query" if task.name == "retrieval" else "anchor"
    train = built.train
    corpus = _candidates(built)
    k = config.num_negatives
    pairs = Dataset.from_dict({"anchor": train[anchor_col].tolist(), "positive": train["positive"].tolist()})
    # every MiningConfig field is an argument of sentence-transformers' mine_hard_negatives, by name
    mined = st_mine(pairs, model, corpus=corpus, output_format="n-tuple", verbose=False, **config.model_dump())
    columns = [c for c in mined.column_names if c.startswith("negative")]
    found: dict[tuple[str, str], list[str]] = {}
    for row in mined:
        negatives = [row[c] for c in columns]
        own = {normalize_text(row["anchor"]), normalize_text(row["positive"])}
        if len(negatives) == k and not own & {normalize_text(n) for n in negatives}:
            found.setdefault((row["anchor"], row["positive"]), negatives)
    keep = [(a, p) in found for a, p in zip(train[anchor_col], train["positive"], strict=True)]
    out = train[keep].reset_index(drop=True).copy()
    if out.empty:
        raise DataError(
            "hard-negative mining found no negatives for any training row",
            field="data.mine_hard_negatives",
            expected=f"{k} candidate(s) per row within the range/score/margin limits",
            found=f"0 of {len(train)} rows; {len(corpus)} candidates",
            hint="lower num_negatives, widen range_max or relax max_score/margins",
        )
    for i in range(k):
        out[f"mined_{i + 1}"] = [found[(a, p)][i] for a, p in zip(out[anchor_col], out["positive"], strict=True)]
    report = MiningReport(rows=len(train), rows_with_negatives=len(out), num_negatives=k, negatives_found=len(out) * k, candidates=len(corpus), dropped_rows=len(train) - len(out))
    logger.info("%s", report.summary())
    return built.with_train(out), report
