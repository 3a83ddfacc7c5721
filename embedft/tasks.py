"""The task registry: per task, its data format, losses, evaluator and primary metric.

The registry is data. Each :class:`TaskSpec` is frozen; adding a task is adding
one entry (and its tests). Loss and evaluator factories import
sentence-transformers only when called, so this module stays light::

    >>> from embedft.tasks import get_task
    >>> task = get_task("pair-classification")
    >>> task.default_loss, task.primary_metric, task.greater_is_better
    ('OnlineContrastiveLoss', 'cosine_ap', True)
    >>> sorted(task.losses)
    ['CoSENTLoss', 'ContrastiveLoss', 'MultipleNegativesRankingLoss', 'OnlineContrastiveLoss']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from embedft.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from sentence_transformers import SentenceTransformer

__all__ = ["LossSpec", "TaskSpec", "TASKS", "get_task", "register_task"]

# The training-data layouts a loss can ask for. ``labelled-pairs`` gives
# (sentence1, sentence2, label); ``positive-pairs`` gives (anchor, positive) built from
# the positive pairs, plus ``negative`` when hard negatives are asked for.
InputFormat = Literal["labelled-pairs", "positive-pairs"]


@dataclass(frozen=True)
class LossSpec:
    """A loss a task allows: how to build it and which training columns it reads."""

    name: str
    factory: Callable[..., Any]
    input_format: InputFormat
    description: str
    uses_hard_negatives: bool = False
    uses_in_batch_negatives: bool = False

    def build(self, model: SentenceTransformer, **kwargs: Any):
        """Instantiate the loss for ``model``; ``kwargs`` go to the loss constructor."""
        try:
            return self.factory(model, **kwargs)
        except TypeError as exc:
            raise ConfigError(
                f"bad keyword argument for {self.name}: {exc}",
                field="training.loss_kwargs",
                expected=f"arguments accepted by {self.name}",
                found=sorted(kwargs),
            ) from None


@dataclass(frozen=True)
class TaskSpec:
    """One task: input columns, label type, losses, evaluator and primary metric.

    ``evaluator_factory(dev_frame, name, batch_size)`` gives the sentence-transformers
    evaluator used during training; ``evaluate(model, dev, test, batch_size)`` gives the
    before/after report, choosing any threshold on dev only.
    """

    name: str
    description: str
    input_columns: tuple[str, ...]
    label_type: Literal["binary", "score", "none"]
    default_loss: str
    losses: Mapping[str, LossSpec]
    evaluator_factory: Callable[..., Any]
    evaluate: Callable[..., dict[str, dict[str, float]]]
    primary_metric: str
    greater_is_better: bool = True
    column_aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def loss(self, name: str | None) -> LossSpec:
        """The loss spec called ``name`` (the default when None)."""
        key = name or self.default_loss
        if key not in self.losses:
            raise ConfigError(
                f"loss not allowed for task {self.name!r}",
                field="training.loss",
                expected=f"one of {sorted(self.losses)}",
                found=key,
            )
        return self.losses[key]


# --------------------------------------------------------------------------- losses
def _online_contrastive(model, **kw):
    from sentence_transformers.sentence_transformer.losses import OnlineContrastiveLoss

    return OnlineContrastiveLoss(model, **kw)


def _contrastive(model, **kw):
    from sentence_transformers.sentence_transformer.losses import ContrastiveLoss

    return ContrastiveLoss(model, **kw)


def _cosent(model, **kw):
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss

    return CoSENTLoss(model, **kw)


def _mnrl(model, **kw):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    return MultipleNegativesRankingLoss(model, **kw)


# ------------------------------------------------------------------ pair evaluation
def _pair_evaluator(dev: pd.DataFrame, name: str, batch_size: int):
    from sentence_transformers.sentence_transformer.evaluation import BinaryClassificationEvaluator

    return BinaryClassificationEvaluator(
        sentences1=dev["text1"].tolist(),
        sentences2=dev["text2"].tolist(),
        labels=[int(v) for v in dev["label"]],
        name=name,
        batch_size=batch_size,
        write_csv=False,
        similarity_fn_names=["cosine"],
    )


def _pair_evaluate(model, dev, test, batch_size: int, show_progress: bool = False):
    from embedft.metrics import evaluate_pair_classification

    return evaluate_pair_classification(model, dev, test, batch_size=batch_size, show_progress=show_progress)


_PAIR_LOSSES = {
    "OnlineContrastiveLoss": LossSpec(
        "OnlineContrastiveLoss",
        _online_contrastive,
        "labelled-pairs",
        "Contrastive loss on the hardest positives and negatives of each batch (the default).",
    ),
    "ContrastiveLoss": LossSpec(
        "ContrastiveLoss",
        _contrastive,
        "labelled-pairs",
        "Pulls positives together and pushes negatives past a margin.",
    ),
    "CoSENTLoss": LossSpec(
        "CoSENTLoss",
        _cosent,
        "labelled-pairs",
        "Ranks every positive pair above every negative pair in the batch by cosine similarity.",
    ),
    "MultipleNegativesRankingLoss": LossSpec(
        "MultipleNegativesRankingLoss",
        _mnrl,
        "positive-pairs",
        "In-batch negatives on the positive pairs; labelled negatives become hard negatives when asked.",
        uses_hard_negatives=True,
        uses_in_batch_negatives=True,
    ),
}

_REGISTRY: dict[str, TaskSpec] = {}
TASKS: Mapping[str, TaskSpec] = MappingProxyType(_REGISTRY)


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task to the registry (name must be new)."""
    if spec.name in _REGISTRY:
        raise ConfigError("task already registered", field="task", expected="a new name", found=spec.name)
    if spec.default_loss not in spec.losses:
        raise ConfigError("default loss is not among the task's losses", field="default_loss", expected=sorted(spec.losses), found=spec.default_loss)
    _REGISTRY[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The registered task called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError("unknown task", field="task", expected=sorted(_REGISTRY), found=name) from None


register_task(
    TaskSpec(
        name="pair-classification",
        description=(
            "Are two texts the same (e.g. duplicate questions)? Input columns: text1 (str), "
            "text2 (str), label (0/1). Scored by cosine similarity; accuracy and F1 use a "
            "threshold chosen on dev."
        ),
        input_columns=("text1", "text2", "label"),
        label_type="binary",
        default_loss="OnlineContrastiveLoss",
        losses=MappingProxyType(_PAIR_LOSSES),
        evaluator_factory=_pair_evaluator,
        evaluate=_pair_evaluate,
        primary_metric="cosine_ap",
        greater_is_better=True,
        column_aliases=MappingProxyType(
            {
                "text1": ("question1", "sentence1", "text1", "sentence_A", "sentence_a", "q1", "text_a"),
                "text2": ("question2", "sentence2", "text2", "sentence_B", "sentence_b", "q2", "text_b"),
                "label": ("is_duplicate", "label", "labels", "is_paraphrase", "duplicate"),
                "id1": ("qid1", "id1", "sid1"),
                "id2": ("qid2", "id2", "sid2"),
            }
        ),
    )
)
