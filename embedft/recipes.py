"""Recipes: named sets of ordinary config values per task (``training.recipe``).

A recipe is plain config. ``training.recipe: quality`` fills the fields a config leaves unset
with the recipe's values for the run's task; fields the config sets win. The expansion happens
when the config is validated, so ``config.yaml`` (and a search's ``best_config.yaml``) record
every value the recipe chose and the run reproduces without the recipe. One value is sized to
the data when training starts and recorded as a number then: ``model.max_seq_length: auto``.

``default``
    Nothing: the task's default loss and the field defaults (one epoch, learning rate 2e-5).
``quality``
    What the field knows works for each task, chosen for the best model the data can give
    (see docs/guide.md, "Recipes"): every training pair (no cap), length-grouped batches
    and a sequence length sized to the data (fewer padded tokens, so more data per minute),
    two passes with a shorter warm-up, and per task the loss setup below.

    >>> from embedft.recipes import recipe_values
    >>> values = recipe_values("quality", "paraphrase-mining")
    >>> values["training.loss"], values["training.extra_losses"]
    ('MultipleNegativesRankingLoss', ['OnlineContrastiveLoss'])
    >>> recipe_values("default", "sts")
    {}
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from embedft.errors import ConfigError

__all__ = ["RECIPES", "QUALITY", "recipe_values", "expand_recipe", "describe_recipe"]

# Shared by every task's quality recipe: more data per minute, all of it, two passes.
_THROUGHPUT: dict[str, Any] = {
    "data.max_train_pairs": None,  # every training pair: data size carries Quora from 0.815 (4k) to 0.850 (all)
    "model.max_seq_length": "auto",  # sized to the training texts when training starts
    "training.group_by_length": True,  # 2.0x fewer padded tokens per epoch on Quora
    "training.epochs": 2,  # a second pass where the time allows (a time budget shortens it)
    "training.warmup_ratio": 0.05,  # many more steps than the default run: a shorter warm-up
}

QUALITY: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        # Classification of labelled pairs: OnlineContrastiveLoss on every labelled pair (the hardest
        # positives and negatives of each batch). MNRL + OCL multi-task scored no better on Quora dev
        # (0.829 vs 0.831 at 8k pairs) and costs ~55% more per epoch, so the time goes to data instead.
        "pair-classification": MappingProxyType({**_THROUGHPUT, "training.loss": "OnlineContrastiveLoss", "training.learning_rate": 3e-5}),
        # Mining duplicates in a pool is ranking: MNRL on the positives with the labelled negatives as hard
        # negatives, plus OnlineContrastiveLoss on the labelled pairs (multi-task, proportional batches).
        "paraphrase-mining": MappingProxyType(
            {
                **_THROUGHPUT,
                "training.loss": "MultipleNegativesRankingLoss",
                "training.hard_negatives": True,
                "training.extra_losses": ["OnlineContrastiveLoss"],
                "training.multi_dataset_batch_sampler": "proportional",
                "training.batch_size": 64,
            }
        ),
        # Scores: CoSENT on every pair; STS sets are small, so more passes.
        "sts": MappingProxyType({**_THROUGHPUT, "training.loss": "CoSENTLoss", "training.epochs": 4, "training.warmup_ratio": 0.1}),
        # Given negatives as hard negatives in MNRL, plus one mined negative per row with false-negative
        # control (skip the 10 nearest, and anything within 5% of the positive's similarity).
        "triplets": MappingProxyType(
            {
                **_THROUGHPUT,
                "training.loss": "MultipleNegativesRankingLoss",
                "training.batch_size": 64,
                "data.mine_hard_negatives": {"num_negatives": 1, "range_min": 10, "relative_margin": 0.05},
            }
        ),
        "retrieval": MappingProxyType(
            {
                **_THROUGHPUT,
                "training.loss": "MultipleNegativesRankingLoss",
                "training.batch_size": 64,
                "data.mine_hard_negatives": {"num_negatives": 1, "range_min": 10, "relative_margin": 0.05},
            }
        ),
    }
)

RECIPES: Mapping[str, Mapping[str, Mapping[str, Any]]] = MappingProxyType({"default": MappingProxyType({}), "quality": QUALITY})
"""Recipe name -> task -> dotted config field -> value. A task missing from a recipe gets nothing from it."""


def recipe_values(recipe: str, task: str) -> dict[str, Any]:
    """The dotted config values ``recipe`` gives ``task`` (a copy: safe to change)."""
    if recipe not in RECIPES:
        raise ConfigError("unknown recipe", field="training.recipe", expected=f"one of {sorted(RECIPES)}", found=recipe)
    return copy.deepcopy(dict(RECIPES[recipe].get(task, {})))


def expand_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """A raw config dict with its recipe's values put into the fields it leaves unset.

    Reads ``training.recipe`` and ``task`` from ``data``; a field counts as set when its key is in
    the dict (a section given as a config object counts its explicitly set fields). Returns ``data``
    itself when there is nothing to add, else a new dict::

        >>> cfg = expand_recipe({"training": {"recipe": "quality", "epochs": 1}})
        >>> cfg["training"]["epochs"], cfg["training"]["group_by_length"], cfg["data"]["max_train_pairs"]
        (1, True, None)
    """
    training = data.get("training")
    recipe = _get(training, "recipe")
    if recipe in (None, "default") or not isinstance(recipe, str):
        return data
    task = data.get("task", "pair-classification")
    values = recipe_values(recipe, task) if isinstance(task, str) else {}
    if not values:
        return data
    out = {key: _as_dict(value) if key in ("data", "model", "training") else value for key, value in data.items()}
    for dotted, value in values.items():
        node = out
        *sections, name = dotted.split(".")
        for section in sections:
            node[section] = _as_dict(node.get(section) if node.get(section) is not None else {})
            node = node[section]
        if name not in node:
            node[name] = copy.deepcopy(value)
    return out


def describe_recipe(recipe: str, task: str) -> str:
    """The recipe's values for a task, one ``field: value`` per line (what ``config.yaml`` will record)."""
    values = recipe_values(recipe, task)
    if not values:
        return f"recipe {recipe!r} sets nothing for task {task!r}"
    return "\n".join(f"{key}: {value!r}" for key, value in values.items())


def _get(section: Any, name: str) -> Any:
    if isinstance(section, dict):
        return section.get(name)
    fields_set = getattr(section, "model_fields_set", None)
    return getattr(section, name) if fields_set is not None and name in fields_set else None


def _as_dict(section: Any) -> Any:
    """A section as a new dict of its set fields (a config object), a copy of a dict, else unchanged."""
    if isinstance(section, dict):
        return dict(section)
    if hasattr(section, "model_dump") and hasattr(section, "model_fields_set"):
        return section.model_dump(exclude_unset=True)
    return section
