"""Search presets: ``space: auto`` fills a task-aware search space sized to the budget.

:func:`auto_space` reads the task (its losses and their flags), the base config and the budget
(``n_trials``) and returns an ordinary space, so ``embedft search --preset auto --data pairs.tsv``
needs no space written by hand. The filled space is what the search saves in ``search.yaml``:
a rerun reads it as written, whatever a later embedft's preset would choose.

The more trials, the more parameters (each added one needs trials to be learnt about):

========== ===============================================================================
n_trials   searched
========== ===============================================================================
1-5        ``training.learning_rate`` (log scale)
6-9        + ``training.loss`` (the task's losses that fit the base config)
10-19      + ``training.batch_size``, ``training.warmup_ratio``
20-39      + ``training.epochs`` (1-3), hard negatives, the quality recipe's switches
40+        + ``training.weight_decay``, ``training.scheduler``
========== ===============================================================================

Hard negatives: ``training.hard_negatives`` when every loss choice takes them (a flat space
cannot switch them per loss), and the mining's false-negative control
(``data.mine_hard_negatives.range_min``, ``.relative_margin``) when the base config mines.
The quality recipe's switches are its on/off fields that a search can vary (``training.group_by_length``,
``model.max_seq_length: auto``); the recipe itself is not a search key, since a search's trials
start from a complete base config and a recipe fills only unset fields.
A ``timeout`` ends the search early but does not change the space (how long a trial takes is
not known before the first one)::

    >>> from embedft.config import RunConfig
    >>> sorted(auto_space(RunConfig(), n_trials=8))
    ['training.learning_rate', 'training.loss']
    >>> auto_space(RunConfig(), n_trials=8)["training.loss"]["choices"]
    ['OnlineContrastiveLoss', 'ContrastiveLoss', 'CoSENTLoss', 'MultipleNegativesRankingLoss']
"""

from __future__ import annotations

import logging
from typing import Any

from embedft.config import RunConfig, validate_config
from embedft.errors import EmbedftError
from embedft.tasks import LossSpec, get_task

__all__ = ["PRESETS", "TIERS", "auto_space", "loss_choices"]

logger = logging.getLogger(__name__)

PRESETS = ("auto",)
"""The names ``space:`` (and ``embedft search --preset``) accepts in place of a space."""

TIERS = (1, 6, 10, 20, 40)
"""The ``n_trials`` at which :func:`auto_space` adds its next group of parameters."""

# Losses that compute the same loss as another one in the table (only memory differs): not a choice of their own.
_SAME_AS = {"CachedMultipleNegativesRankingLoss": "MultipleNegativesRankingLoss"}


def _valid(base: dict[str, Any], **changes: Any) -> bool:
    """Whether ``base`` (a config dict) with the dotted ``changes`` is a valid run config."""
    import copy

    data = copy.deepcopy(base)
    for key, value in changes.items():
        *sections, name = key.split(".")
        node = data
        for section in sections:
            if not isinstance(node.get(section), dict):
                node[section] = {}
            node = node[section]
        node[name] = value
    try:
        validate_config(RunConfig, data, "auto space")
    except EmbedftError:
        return False
    return True


def loss_choices(base: RunConfig) -> list[str]:
    """The task's losses a search of ``base`` can choose among: valid with the base config, one of each kind.

    A loss that needs a guide model is a choice only when ``training.guide_model`` is set; on a
    frozen backbone with cached embeddings, only losses that train a head on them.
    """
    task = get_task(base.task)
    data = base.to_dict()
    frozen = base.model.freeze_backbone and base.training.cache_frozen_embeddings

    def usable(spec: LossSpec) -> bool:
        if _SAME_AS.get(spec.name) in task.losses and spec.name != base.loss_name:
            return False
        if spec.needs_guide and not base.training.guide_model:
            return False
        if frozen and spec.not_on_cached_embeddings:
            return False
        return _valid(data, **{"training.loss": spec.name})

    names = [task.default_loss, *(n for n in task.losses if n != task.default_loss)]
    return [n for n in names if usable(task.losses[n])]


def auto_space(base: RunConfig, n_trials: int, timeout: float | None = None) -> dict[str, dict[str, Any]]:
    """A search space for ``base``'s task sized to ``n_trials`` (see the module's table); plain dicts of params."""
    task = get_task(base.task)
    t = base.training
    tier = sum(n_trials >= step for step in TIERS)
    space: dict[str, dict[str, Any]] = {"training.learning_rate": {"type": "float", "low": 5e-6, "high": 2e-4, "log": True}}
    losses = loss_choices(base)
    specs = [task.losses[n] for n in losses] or [task.loss(t.loss)]
    if tier >= 2 and len(losses) > 1:
        space["training.loss"] = {"type": "categorical", "choices": losses}
    if tier >= 3:
        in_batch = all(s.uses_in_batch_negatives for s in specs)
        space["training.batch_size"] = {"type": "categorical", "choices": [32, 64, 128] if in_batch else [16, 32, 64]}
        space["training.warmup_ratio"] = {"type": "float", "low": 0.0, "high": 0.2}
    if tier >= 4:
        space["training.epochs"] = {"type": "int", "low": 1, "high": 3}
        space.update(_hard_negatives(base, specs))
        space.update(_recipe_switches(base, space))
    if tier >= 5:
        space["training.weight_decay"] = {"type": "float", "low": 0.0, "high": 0.1}
        space["training.scheduler"] = {"type": "categorical", "choices": ["linear", "cosine"]}
    if timeout is not None:
        logger.debug("space: auto is sized to n_trials=%d; the timeout (%gs) only ends the search", n_trials, timeout)
    return space


def _hard_negatives(base: RunConfig, specs: list[LossSpec]) -> dict[str, dict[str, Any]]:
    """Hard-negative parameters that change every trial: the flag (pair tasks: labelled negatives) and the mining's margins."""
    out: dict[str, dict[str, Any]] = {}
    task = get_task(base.task)
    if all(s.uses_hard_negatives for s in specs) and task.label_type == "binary" and not base.training.hard_negatives:
        out["training.hard_negatives"] = {"type": "categorical", "choices": [False, True]}
    if base.data.mine_hard_negatives is not None:
        out["data.mine_hard_negatives.range_min"] = {"type": "int", "low": 0, "high": 20, "step": 5}
        out["data.mine_hard_negatives.relative_margin"] = {"type": "categorical", "choices": [None, 0.05, 0.1]}
    return out


def _recipe_switches(base: RunConfig, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The quality recipe's single-valued fields (a switch, not a range) that differ from the base config, as two-way choices."""
    try:
        from embedft.recipes import recipe_values
    except ImportError:  # pragma: no cover - an embedft without recipes
        return {}
    data = base.to_dict()
    out: dict[str, dict[str, Any]] = {}
    for key, value in recipe_values("quality", base.task).items():
        if key in space or key.startswith("data.") or key in ("training.loss", "training.hard_negatives") or not isinstance(value, (bool, str)):
            continue  # ranges, the loss and hard negatives are searched above; data is fixed per search; lists cannot be a choice
        section, _, name = key.partition(".")
        current = (data.get(section) or {}).get(name, value)
        if current != value and _valid(data, **{key: value}):
            out[key] = {"type": "categorical", "choices": [current, value]}
    return out
