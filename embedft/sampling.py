"""Length-grouped training batches: fewer padded tokens per step (``training.group_by_length``).

sentence-transformers pads each text column of a batch to its longest text, so a batch of
short questions with one long one costs as much as a batch of long ones. Grouping rows of
similar length into a batch (what ``transformers``' ``group_by_length`` does for its own
trainer) cuts the padded tokens, and so the time per epoch: on the Quora pairs 2.0x
fewer tokens than random batches of 32 (1.6x when grouped by characters). The order stays random where it matters: the rows
are shuffled each epoch, sorted by length only within a window of ``window`` batches, and
the batches are shuffled again.

The sampler plugs into sentence-transformers' trainer as its ``batch_sampler`` (a callable
it supports); :func:`batch_sampler` gives that callable::

    >>> sampler = batch_sampler(group_by_length=True, no_duplicates=False)
    >>> callable(sampler)
    True

Growing training data (``training.data_growth``, which a search with ``pruner.grow_train_data``
sets to its rungs): before rung ``r`` (``first_step`` x ``factor``^k optimizer steps) batches
are drawn only from the first ``ceil(rows x r / total_steps)`` rows of one fixed, label-stratified
order (seeded by ``data.seed``), and after the last rung below the run's end from every row. A
trial stopped at its first rung has trained on a small pool; pools are nested, and rows not drawn
yet come first, so a run of at least one epoch draws every row at least once (when its batches
are full: no-duplicate packing over repeated texts leaves part-filled batches). A pool is the
run's share of the rows at its rung, so trials of the same length (batch size, epochs, training
set) reach a rung with the same rows. :func:`growth_pools` gives the schedule::

    >>> growth_pools(rows=480, total_steps=30, first_step=3, factor=3, batch_size=16)
    [(3, 48), (9, 144), (27, 432)]
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["batch_sampler", "row_lengths", "growth_pools", "growth_order"]

logger = logging.getLogger(__name__)

WINDOW_BATCHES = 50
"""How many batches' worth of shuffled rows are sorted by length together."""


def row_lengths(dataset: Any, label_columns: list[str] | None = None, tokenizer: Any = None) -> list[int]:
    """Tokens of each row's longest text (``tokenizer``), or its characters without one.

    On Quora, batches grouped by tokens carry 2.0x fewer tokens than random batches, grouped by
    characters 1.6x: a word's characters say little about its word pieces.
    """
    skip = set(label_columns or [])
    columns: list[list[Any]] = [list(dataset[c]) for c in dataset.column_names if c not in skip]
    if tokenizer is not None:
        try:
            columns = [[len(ids) for ids in tokenizer([str(t) for t in col], add_special_tokens=True, truncation=True)["input_ids"]] for col in columns]
        except Exception:  # a tokenizer that cannot take these texts: characters stand in
            logger.debug("length-grouped batches: lengths in characters (the tokenizer failed)", exc_info=True)
    return [max((v if isinstance(v, int) else len(v) for v in row if isinstance(v, (int, str))), default=0) for row in zip(*columns, strict=True)]


def batch_sampler(*, group_by_length: bool, no_duplicates: bool, tokenizer: Any = None, growth: tuple[int, int, float, int | None, int] | None = None) -> Any:
    """The ``batch_sampler`` argument of ``SentenceTransformerTrainingArguments`` for these choices.

    Without ``group_by_length`` or ``growth`` it is sentence-transformers' own choice (``NO_DUPLICATES``
    for losses with in-batch negatives, else the default sampler); with either, embedft's sampler:
    length-grouped batches (lengths in ``tokenizer``'s tokens, else in characters) when asked, pools
    that grow at the rungs when ``growth`` is ``(first_step, factor, epochs, max_steps, order_seed)``
    (the run's steps are ``max_steps``, else ``epochs`` x the sampler's batches per epoch), and a
    text kept out of a batch that already holds it when ``no_duplicates``.
    """
    from sentence_transformers.base.sampler import BatchSamplers

    if not group_by_length and growth is None:
        return BatchSamplers.NO_DUPLICATES if no_duplicates else BatchSamplers.BATCH_SAMPLER
    return functools.partial(_sampler_class(), no_duplicates=no_duplicates, tokenizer=tokenizer, group_by_length=group_by_length, growth=growth)


def growth_pools(*, rows: int, total_steps: int, first_step: int, factor: int, batch_size: int) -> list[tuple[int, int]]:
    """``[(rung, pool rows), ...]``: before optimizer step ``rung``, batches come from the first ``pool rows`` rows.

    Rungs are ``first_step`` x ``factor``^k below ``total_steps``; a pool is the run's share of
    rows at its rung (``ceil(rows x rung / total_steps)``), at least one batch, at most all rows.
    After the last rung every row is drawn.
    """
    pools, rung = [], first_step
    while rung < total_steps:
        pools.append((rung, min(rows, max(batch_size, math.ceil(rows * rung / total_steps)))))
        rung *= factor
    return pools


def growth_order(labels: list[Any] | None, n: int, seed: int) -> list[int]:
    """The order rows join the growing pools: seeded, and stratified by label so every prefix keeps the label shares.

    Each label's rows are shuffled and spread evenly over the order (a row at rank ``i`` of its
    label's ``m`` rows sits at ``(i + 0.5) / m``); rows without a label of few values (scores,
    none) are one stratum.

    >>> order = growth_order([1, 0, 0, 0, 1, 0, 0, 0], 8, seed=0)
    >>> sorted(order) == list(range(8)), sum(i in (0, 4) for i in order[:4])
    (True, 1)
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    keys = [repr(v) for v in labels] if labels is not None and len(set(map(repr, labels))) <= 10 else ["" for _ in range(n)]
    strata: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        strata.setdefault(key, []).append(i)
    placed: list[tuple[float, float, int]] = []
    for key in sorted(strata):
        members = strata[key]
        for rank, j in enumerate(rng.permutation(len(members)).tolist()):
            placed.append(((rank + 0.5) / len(members), float(rng.random()), members[j]))
    return [i for _, _, i in sorted(placed)]


@functools.lru_cache(maxsize=1)
def _sampler_class() -> type:
    import torch
    from sentence_transformers.base.sampler import DefaultBatchSampler

    def shuffled(rows: list[int], g: Any) -> list[int]:
        return [rows[i] for i in torch.randperm(len(rows), generator=g).tolist()]

    class EmbedftBatchSampler(DefaultBatchSampler):
        """Batches in random order, the same for the same seed and epoch: length-grouped, from growing pools, without repeated texts, as asked."""

        def __init__(
            self,
            dataset: Any,
            batch_size: int,
            drop_last: bool,
            valid_label_columns: list[str] | None = None,
            generator: Any = None,
            seed: int = 0,
            no_duplicates: bool = False,
            tokenizer: Any = None,
            group_by_length: bool = True,
            growth: tuple[int, int, float, int | None, int] | None = None,
        ) -> None:
            super().__init__(dataset, batch_size=batch_size, drop_last=drop_last, valid_label_columns=valid_label_columns, generator=generator, seed=seed)
            self.n = len(dataset)
            self.lengths = row_lengths(dataset, valid_label_columns, tokenizer) if group_by_length else None
            self.no_duplicates = no_duplicates
            skip = set(valid_label_columns or [])
            self._texts: Callable[[int], set[Any]] | None = None
            if no_duplicates:
                columns = [list(dataset[c]) for c in dataset.column_names if c not in skip]  # lists: a dataset column is slow to index row by row
                self._texts = lambda i: {col[i] for col in columns}
            self.pools: list[tuple[int, int]] = []
            self.order = list(range(self.n))
            self.total_steps = 0
            self._plan: list[list[int]] | None = None
            if growth is not None:
                first_step, factor, epochs, max_steps, order_seed = growth
                self.total_steps = max_steps or math.ceil(epochs * len(self))  # the trainer's own count: batches per epoch x epochs
                self.pools = growth_pools(rows=self.n, total_steps=self.total_steps, first_step=first_step, factor=factor, batch_size=batch_size)
                label = next((c for c in (valid_label_columns or []) if c in dataset.column_names), None)
                self.order = growth_order(list(dataset[label]) if label else None, self.n, order_seed)

        def __len__(self) -> int:
            return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

        def __iter__(self) -> Iterator[list[int]]:
            g = torch.Generator()
            g.manual_seed(int(self.seed) + int(self.epoch))
            if not self.pools:  # one shuffled pass over every row per epoch
                yield from self._pass(list(range(self.n)), g)[: len(self)]
                return
            if self._plan is None:
                self._plan = self._grown_plan()
            start = int(self.epoch) * len(self)  # the optimizer step of this epoch's first batch
            yield from self._plan[start : start + len(self)] if start < len(self._plan) else self._pass(list(range(self.n)), g)[: len(self)]

        def _grown_plan(self) -> list[list[int]]:
            """Every batch of the run, epoch after epoch: before each rung from its pool, then from every row.

            Rows not drawn yet come first (and first within each length-sorted window), so a run
            of at least one epoch draws every row at least once when its batches are full; the
            part-filled batches of no-duplicate packing over repeated texts can leave a few out.
            """
            g = torch.Generator()
            g.manual_seed(int(self.seed))
            drawn = [False] * self.n
            plan: list[list[int]] = []
            whole = max(1, math.ceil(self.total_steps / max(1, len(self)))) * len(self)  # the last epoch in full (the trainer stops at total_steps)
            for pool, count in [*self._segments(self.total_steps), *([(self.n, whole - self.total_steps)] if whole > self.total_steps else [])]:
                rows = self.order[:pool]
                while count > 0:
                    queue = shuffled([r for r in rows if not drawn[r]], g) + shuffled([r for r in rows if drawn[r]], g)
                    # the batches of the rows not drawn yet first; part-filled ones kept when drop_last would leave none
                    batches = self._batched(queue, stale=drawn)[:count] or self._batched(queue, stale=drawn, keep_partial=True)[:count]
                    if not batches:  # no rows at all
                        break
                    for batch in batches:
                        for r in batch:
                            drawn[r] = True
                    plan += shuffled(batches, g)  # type: ignore[arg-type]
                    count -= len(batches)
            return plan

        def _segments(self, steps: int) -> list[tuple[int, int]]:
            """``(pool rows, batches)`` for the steps ``0..steps`` of the run."""
            out, step = [], 0
            for rung, pool in self.pools:
                if step < min(rung, steps):
                    out.append((pool, min(rung, steps) - step))
                    step = min(rung, steps)
            if step < steps:
                out.append((self.n, steps - step))
            return out

        def _pass(self, rows: list[int], g: Any) -> list[list[int]]:
            """One shuffled pass over ``rows`` as batches, in random order."""
            batches = self._batched(shuffled(rows, g))
            return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

        def _batched(self, order: list[int], stale: list[bool] | None = None, keep_partial: bool = False) -> list[list[int]]:
            """``order`` cut into batches, a window of ``WINDOW_BATCHES`` batches at a time, sorted by length within it
            when grouping (the rows ``stale`` marks after the others); ``drop_last`` drops part-filled ones unless ``keep_partial``."""
            window = self.batch_size * WINDOW_BATCHES
            batches: list[list[int]] = []
            for start in range(0, len(order), window):
                chunk = order[start : start + window]
                if self.lengths is not None:
                    chunk = sorted(chunk, key=lambda i: (stale is not None and stale[i], -self.lengths[i]))  # type: ignore[index]
                batches += self._batches(chunk)
            if self.drop_last and not keep_partial:
                batches = [b for b in batches if len(b) == self.batch_size]
            return batches

        def _batches(self, rows: list[int]) -> list[list[int]]:
            if self._texts is None:
                return [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
            out, pending = [], rows
            while pending:  # each pass fills one batch with rows whose texts it does not hold yet
                batch: list[int] = []
                seen: set[Any] = set()
                later: list[int] = []
                for i in pending:
                    texts = self._texts(i)
                    if len(batch) < self.batch_size and not texts & seen:
                        batch.append(i)
                        seen |= texts
                    else:
                        later.append(i)
                out.append(batch)
                pending = later
            return out

    return EmbedftBatchSampler
