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
    >>> sorted(TASKS)
    ['pair-classification', 'paraphrase-mining', 'retrieval', 'sts', 'triplets']
"""

from __future__ import annotations

import ast
import inspect
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from embedft.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from sentence_transformers import SentenceTransformer

__all__ = ["LossSpec", "TaskSpec", "TASKS", "get_task", "register_task"]

# The training-data layouts a loss can ask for:
# ``labelled-pairs``  (sentence1, sentence2, label) with 0/1 labels;
# ``scored-pairs``    (sentence1, sentence2, score) with scores in [0, 1];
# ``positive-pairs``  (anchor, positive[, negative...]): in-batch negatives, plus hard negatives
#                     (labelled, given or mined) as extra columns;
# ``triplets``        (anchor, positive, negative): exactly one negative per row.
InputFormat = Literal["labelled-pairs", "scored-pairs", "positive-pairs", "triplets"]
# Per task, how a split frame becomes the loss's training columns:
# ``(frame, loss_spec, hard_negatives, seed) -> {column: values}``.
TrainColumns = Callable[..., dict[str, list[Any]]]


@dataclass(frozen=True)
class LossSpec:
    """A loss a task allows: how to build it and which training columns it reads."""

    name: str
    factory: Callable[..., Any]
    input_format: InputFormat
    description: str
    uses_hard_negatives: bool = False
    uses_in_batch_negatives: bool = False  # other rows are negatives: batches never repeat a text (NO_DUPLICATES)
    needs_guide: bool = False
    not_on_cached_embeddings: str | None = None  # why it cannot train a head on cached backbone embeddings (None: it can)

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The keyword arguments a config may give this loss (``training.loss_kwargs``).

        Read from the loss class's ``__init__`` (a factory names it in ``loss_class``), or
        from the factory itself; the arguments embedft supplies (the model, a guide model)
        are left out. Imports sentence-transformers for its losses.
        """
        target = getattr(self.factory, "loss_class", None)
        if isinstance(target, str):
            from sentence_transformers.sentence_transformer import losses

            target = getattr(losses, target)
        function = target.__init__ if isinstance(target, type) else (target or self.factory)  # type: ignore[misc]  # the class's own __init__: its signature is what a config may pass
        params = list(inspect.signature(function).parameters.values())
        if params and params[0].name == "self":
            params = params[1:]
        return {p.name: p for p in params[1:] if p.kind is not inspect.Parameter.VAR_POSITIONAL and p.name not in _SUPPLIED_ARGUMENTS}

    def prepare_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """``training.loss_kwargs`` checked against the loss's signature, names of functions resolved.

        Unknown names and values of the wrong type (per the annotation, or the default's
        type) raise :class:`ConfigError`; a distance metric or similarity function given by
        name (``distance_metric: EUCLIDEAN``, ``similarity_fct: dot_score``) becomes the
        function. Runs without a model, so a config is checked before one loads::

            >>> spec = get_task("pair-classification").loss("ContrastiveLoss")
            >>> sorted(spec.prepare_kwargs({"margin": 1, "distance_metric": "cosine_distance"}))
            ['distance_metric', 'margin']
            >>> spec.prepare_kwargs({"margin": "big"})
            Traceback (most recent call last):
            ...
            embedft.errors.ConfigError: wrong type for ContrastiveLoss argument 'margin' (field: training.loss_kwargs.margin; expected: a finite number (float); found: 'big' (str))
        """
        return _prepare_loss_kwargs(self, dict(kwargs))

    def build(self, model: SentenceTransformer, *, guide: Any = None, **kwargs: Any) -> Any:
        """Instantiate the loss for ``model``; ``kwargs`` (checked by :meth:`prepare_kwargs`) go to the loss constructor."""
        kwargs = self.prepare_kwargs(kwargs)
        if self.needs_guide:
            kwargs["guide"] = guide
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

    ``input_columns`` are the roles every row must have (``text1, text2, label`` for pair
    classification); ``optional_columns`` may be present (ids, a negative). ``text_columns``
    are the roles holding texts; ``group_columns`` are the texts (and ``id_columns`` their
    ids) that link rows into groups that never cross splits. ``evaluator_factory(dev, name,
    batch_size, corpus)`` gives the sentence-transformers evaluator used during training;
    ``evaluate(model, dev, test, batch_size, show_progress, corpus)`` gives the
    before/after report, choosing any threshold on dev only. ``train_columns`` turns a split
    into the columns of a loss's input format.
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
    train_columns: TrainColumns
    greater_is_better: bool = True
    column_aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    optional_columns: tuple[str, ...] = ()
    text_columns: tuple[str, ...] = ("text1", "text2")
    group_columns: tuple[str, ...] = ("text1", "text2")
    id_columns: Mapping[str, str] = field(default_factory=dict)
    symmetric: bool = True
    uses_corpus: bool = False
    supports_mining: bool = False
    report_metrics: tuple[str, ...] = ()

    def loss(self, name: str | None) -> LossSpec:
        """The loss spec called ``name`` (the default when None)."""
        key = name or self.default_loss
        if key not in self.losses:
            raise ConfigError(
                f"loss {key!r} is not allowed for task {self.name!r}; allowed: {sorted(self.losses)}",
                field="training.loss",
                expected=f"one of {sorted(self.losses)}",
                found=key,
            )
        return self.losses[key]

    @property
    def roles(self) -> tuple[str, ...]:
        """Every column role this task reads (required and optional)."""
        return (*self.input_columns, *self.optional_columns)


# --------------------------------------------------------------------------- losses
def _st_loss(class_name: str) -> Callable[..., Any]:
    """A factory ``(model, **kwargs) -> loss`` for a sentence-transformers loss, imported when called."""

    def factory(model: SentenceTransformer, **kw: Any) -> Any:
        from sentence_transformers.sentence_transformer import losses

        return getattr(losses, class_name)(model, **kw)

    factory.__name__ = f"_{class_name}"
    factory.loss_class = class_name  # type: ignore[attr-defined]  # read by LossSpec.parameters
    return factory


def _gist(model: SentenceTransformer, guide: Any = None, **kw: Any) -> Any:
    from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss

    if guide is None:
        raise ConfigError("GISTEmbedLoss needs a guide model", field="training.guide_model", expected="a model id or path", found=None)
    return GISTEmbedLoss(model, guide, **kw)


_gist.loss_class = "GISTEmbedLoss"  # type: ignore[attr-defined]

# Loss arguments embedft fills in itself, and the setting each comes from.
_SUPPLIED_ARGUMENTS = {"guide": "training.guide_model"}


# ------------------------------------------------------------ loss keyword arguments
def _prepare_loss_kwargs(spec: LossSpec, kwargs: dict[str, Any]) -> dict[str, Any]:
    """See :meth:`LossSpec.prepare_kwargs`."""
    if not kwargs:
        return {}
    params = spec.parameters()
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {n: p for n, p in params.items() if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    prepared = {}
    for name, value in kwargs.items():
        field_name = f"training.loss_kwargs.{name}"
        if name in _SUPPLIED_ARGUMENTS:
            raise ConfigError(f"{spec.name} argument {name!r} is set by embedft", field=field_name, expected=f"the setting {_SUPPLIED_ARGUMENTS[name]}", found=name)
        if name not in named:
            if takes_any:
                prepared[name] = value
                continue
            raise ConfigError(
                f"unknown keyword argument for {spec.name}",
                field=field_name,
                expected=f"one of {sorted(named)}" if named else "no arguments",
                found=name,
            )
        ok, converted, expected = _match_argument(named[name], value)
        if not ok:
            raise ConfigError(f"wrong type for {spec.name} argument {name!r}", field=field_name, expected=expected, found=_shown(value))
        prepared[name] = converted
    return prepared


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{text if len(text) <= 80 else text[:77] + '...'} ({type(value).__name__})"


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == sep and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return parts


def _annotation_text(annotation: Any) -> str | None:
    if annotation is inspect.Parameter.empty:
        return None
    text = annotation if isinstance(annotation, str) else annotation.__name__ if isinstance(annotation, type) else str(annotation)
    for prefix in ("typing.", "typing_extensions.", "collections.abc."):
        text = text.replace(prefix, "")
    return text


def _match_argument(param: inspect.Parameter, value: Any) -> tuple[bool, Any, str]:
    """``(ok, value to pass, what was expected)`` for one loss argument.

    The annotation decides; an argument without one is compared with its default.
    """
    default = None if param.default is inspect.Parameter.empty else param.default
    text = _annotation_text(param.annotation)
    if text is None:
        if default is None:
            return True, value, "any value"
        if isinstance(default, (bool, int, float, str)):
            text = type(default).__name__
        elif callable(default) and not hasattr(default, "parameters"):  # a function, not a torch module
            text = "Callable"
        else:
            text = type(default).__name__
    return _match_type(text, value, default)


def _match_type(text: str, value: Any, default: Any) -> tuple[bool, Any, str]:
    alternatives = _split_top(text, "|")
    if len(alternatives) > 1:
        wanted = []
        for alt in alternatives:
            ok, converted, expected = _match_type(alt, value, default)
            if ok:
                return ok, converted, expected
            wanted.append(expected)
        return False, value, " or ".join(dict.fromkeys(wanted))
    head, _, inner = text.partition("[")
    inner = inner[:-1] if inner.endswith("]") else inner
    plain = isinstance(value, (bool, int, float, str, list, tuple, dict)) or value is None
    if head in ("Optional", "Union"):
        return _match_type(" | ".join([*_split_top(inner, ","), *(["None"] if head == "Optional" else [])]), value, default)
    if head in ("Any", "object"):
        return True, value, "any value"
    if head == "None":
        return value is None, value, "null"
    if head == "bool":
        return isinstance(value, bool), value, "true or false"
    if head == "int":
        return isinstance(value, int) and not isinstance(value, bool), value, "an integer"
    if head == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value, "a finite number (float)"
    if head == "str":
        return isinstance(value, str), value, "a string"
    if head == "Literal":
        try:
            choices = ast.literal_eval(f"({inner},)")
        except (ValueError, SyntaxError):  # not plain literals: leave it to the loss
            return True, value, text
        ok = any(value == c and type(value) is type(c) for c in choices)
        return ok, value, f"one of {list(choices)}"
    if head in ("dict", "Mapping"):
        return isinstance(value, dict), value, "a mapping"
    if head in ("tuple", "list", "Sequence", "Iterable"):
        items = _split_top(inner, ",") if inner else ["Any"]
        if not isinstance(value, (list, tuple)):
            return False, value, f"a list ({text})"
        if head == "tuple" and items[-1] != "..." and len(items) != len(value):
            return False, value, f"a list of {len(items)} ({text})"
        kinds = items if head == "tuple" and items[-1] != "..." else [items[0]] * len(value)
        converted = []
        for kind, item in zip(kinds, value, strict=True):
            ok, item, expected = _match_type(kind, item, None)
            if not ok:
                return False, value, f"a list of {expected}"
            converted.append(item)
        return True, tuple(converted) if head == "tuple" else converted, f"a list ({text})"
    if head == "Callable":
        choices = _named_functions(default)
        expected = f"one of {sorted(choices)} (or, in Python, a function)" if choices else "a function (Python API only)"
        if isinstance(value, str):
            found = {name.lower(): fn for name, fn in choices.items()}.get(value.lower())
            return found is not None, found if found is not None else value, expected
        return callable(value) and not isinstance(value, type), value, expected
    # a class: an object of it (only the Python API can pass one)
    name = head.rsplit(".", 1)[-1]
    ok = not plain and any(c.__name__ == name for c in type(value).__mro__)
    return ok, value, f"a {head} object (Python API only; or pass a loss object as Trainer(loss=...))"


def _named_functions(default: Any) -> dict[str, Any]:
    """The functions a config may name for an argument whose default is ``default``.

    A default like ``SiameseDistanceMetric.COSINE_DISTANCE`` (an enum, or a class of
    functions) offers its class's upper-case members; a similarity function from
    ``sentence_transformers.util`` offers its siblings of the same shape
    (``cos_sim``/``dot_score``/... or their ``pairwise_`` forms).
    """
    import enum

    if isinstance(default, enum.Enum):
        return dict(type(default).__members__)
    if default is None or not callable(default):
        return {}
    module = sys.modules.get(getattr(default, "__module__", None) or "")
    if module is None:
        return {}
    owner_name = getattr(default, "__qualname__", "").rpartition(".")[0]
    owner = getattr(module, owner_name, None) if owner_name else None
    if isinstance(owner, type):
        if issubclass(owner, enum.Enum) and owner.__members__:
            return dict(owner.__members__)
        return {n: v for n, v in vars(owner).items() if n.isupper() and callable(v)}
    if module.__name__.startswith("sentence_transformers.util"):
        pairwise = default.__name__.startswith("pairwise_")
        return {
            n: f
            for n, f in vars(module).items()
            if inspect.isfunction(f)
            and f.__module__ == module.__name__
            and n.startswith("pairwise_") == pairwise
            and n.endswith(("_sim", "_score"))
            and "maxsim" not in n
            and not n.startswith("pytorch_")
        }
    return {}


_online_contrastive = _st_loss("OnlineContrastiveLoss")
_contrastive = _st_loss("ContrastiveLoss")
_cosent = _st_loss("CoSENTLoss")
_mnrl = _st_loss("MultipleNegativesRankingLoss")
_cached_mnrl = _st_loss("CachedMultipleNegativesRankingLoss")
_angle = _st_loss("AnglELoss")
_cosine_similarity = _st_loss("CosineSimilarityLoss")
_triplet = _st_loss("TripletLoss")


# ------------------------------------------------------------------ evaluators (training-time)
def _pair_evaluator(dev: pd.DataFrame, name: str, batch_size: int, corpus: pd.DataFrame | None = None) -> Any:
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


def _sts_evaluator(dev: pd.DataFrame, name: str, batch_size: int, corpus: pd.DataFrame | None = None) -> Any:
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    return EmbeddingSimilarityEvaluator(
        dev["text1"].tolist(),
        dev["text2"].tolist(),
        [float(v) for v in dev["label"]],
        batch_size=batch_size,
        name=name,
        write_csv=False,
        similarity_fn_names=["cosine"],
        main_similarity="cosine",
    )


def _triplet_evaluator(dev: pd.DataFrame, name: str, batch_size: int, corpus: pd.DataFrame | None = None) -> Any:
    from sentence_transformers.sentence_transformer.evaluation import TripletEvaluator

    return TripletEvaluator(
        dev["anchor"].tolist(),
        dev["positive"].tolist(),
        dev["negative"].tolist(),
        name=name,
        batch_size=batch_size,
        write_csv=False,
        similarity_fn_names=["cosine"],
        main_similarity_function="cosine",
    )


def _retrieval_evaluator(dev: pd.DataFrame, name: str, batch_size: int, corpus: pd.DataFrame | None = None) -> Any:
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    if corpus is None:  # pragma: no cover - built datasets of this task always carry one
        raise ConfigError("retrieval evaluation needs the corpus", field="corpus", expected="a corpus frame", found=None)
    queries = {str(q): t for q, t in zip(dev["query_id"], dev["query"], strict=True)}
    relevant: dict[str, set[str]] = {}
    for q, d in zip(dev["query_id"], dev["doc_id"], strict=True):
        relevant.setdefault(str(q), set()).add(str(d))
    docs = {str(d): t for d, t in zip(corpus["doc_id"], corpus["text"], strict=True)}
    return InformationRetrievalEvaluator(
        queries,
        docs,
        relevant,
        name=name,
        batch_size=batch_size,
        write_csv=False,
        score_functions={"cosine": _cos_sim()},
        main_score_function="cosine",
        accuracy_at_k=[1, 5, 10],
        precision_recall_at_k=[1, 5, 10, 100],
    )


def _cos_sim() -> Any:
    from sentence_transformers.util import cos_sim

    return cos_sim


def _mining_evaluator(dev: pd.DataFrame, name: str, batch_size: int, corpus: pd.DataFrame | None = None) -> Any:
    from sentence_transformers.sentence_transformer.evaluation import ParaphraseMiningEvaluator

    texts = list(dict.fromkeys([*dev["text1"], *dev["text2"]]))
    ids = {t: str(i) for i, t in enumerate(texts)}
    positives = dev[dev["label"] == 1]
    return ParaphraseMiningEvaluator(
        {i: t for t, i in ids.items()},
        duplicates_list=[(ids[a], ids[b]) for a, b in zip(positives["text1"], positives["text2"], strict=True)],
        add_transitive_closure=True,
        top_k=25,
        batch_size=batch_size,
        name=name,
        write_csv=False,
    )


# ------------------------------------------------------------------ evaluation (before/after reports)
def _metrics(function_name: str, uses_corpus: bool = False) -> Callable[..., dict[str, dict[str, float]]]:
    """``evaluate(model, dev, test, batch_size, show_progress, corpus)`` calling ``embedft.metrics.<function_name>``."""

    def evaluate(model: Any, dev: pd.DataFrame, test: pd.DataFrame | None, batch_size: int, show_progress: bool = False, corpus: pd.DataFrame | None = None) -> dict[str, dict[str, float]]:
        from embedft import metrics

        extra = (corpus,) if uses_corpus else ()
        return getattr(metrics, function_name)(model, dev, test, *extra, batch_size=batch_size, show_progress=show_progress)

    return evaluate


_pair_evaluate = _metrics("evaluate_pair_classification")
_sts_evaluate = _metrics("evaluate_sts")
_triplet_evaluate = _metrics("evaluate_triplets")
_retrieval_evaluate = _metrics("evaluate_retrieval", uses_corpus=True)
_mining_evaluate = _metrics("evaluate_paraphrase_mining")


# ------------------------------------------------------------------ training columns
def _mined(frame: pd.DataFrame) -> list[str]:
    """Columns holding mined hard negatives (``mined_1..k``), added by hard-negative mining."""
    return sorted((c for c in frame.columns if c.startswith("mined_")), key=lambda c: int(c.split("_")[1]))


def _with_negatives(data: dict[str, list[Any]], negatives: list[list[str]], loss: LossSpec) -> dict[str, list[Any]]:
    """Add negative columns; a one-negative loss gets one row per (anchor, positive, negative)."""
    if not negatives:
        return data
    if loss.input_format == "triplets":
        anchors, positives, negs = [], [], []
        for column in negatives:
            anchors += data["anchor"]
            positives += data["positive"]
            negs += column
        return {"anchor": anchors, "positive": positives, "negative": negs}
    if len(negatives) == 1:
        return {**data, "negative": negatives[0]}
    return {**data, **{f"negative_{i + 1}": col for i, col in enumerate(negatives)}}


def _pair_train_columns(frame: pd.DataFrame, loss: LossSpec, hard_negatives: bool, seed: int) -> dict[str, list[Any]]:
    if loss.input_format == "labelled-pairs":
        return {"sentence1": frame["text1"].tolist(), "sentence2": frame["text2"].tolist(), "label": frame["label"].astype(float).tolist()}
    from embedft.convert import pairs_to_triplets

    positives = frame[frame["label"] == 1]
    data: dict[str, list[Any]] = {"anchor": positives["text1"].tolist(), "positive": positives["text2"].tolist()}
    negatives = []
    if hard_negatives:
        triplets = pairs_to_triplets(frame, seed=seed)
        negatives.append(triplets["negative"].tolist())
    negatives += [positives[c].tolist() for c in _mined(frame)]
    return _with_negatives(data, negatives, loss)


def _sts_train_columns(frame: pd.DataFrame, loss: LossSpec, hard_negatives: bool, seed: int) -> dict[str, list[Any]]:
    return {"sentence1": frame["text1"].tolist(), "sentence2": frame["text2"].tolist(), "score": frame["label"].astype(float).tolist()}


def _triplet_train_columns(frame: pd.DataFrame, loss: LossSpec, hard_negatives: bool, seed: int) -> dict[str, list[Any]]:
    data = {"anchor": frame["anchor"].tolist(), "positive": frame["positive"].tolist()}
    return _with_negatives(data, [frame["negative"].tolist()] + [frame[c].tolist() for c in _mined(frame)], loss)


def _retrieval_train_columns(frame: pd.DataFrame, loss: LossSpec, hard_negatives: bool, seed: int) -> dict[str, list[Any]]:
    data = {"anchor": frame["query"].tolist(), "positive": frame["positive"].tolist()}
    negatives = []
    if "negative" in frame.columns and frame["negative"].notna().all():
        negatives.append(frame["negative"].tolist())
    negatives += [frame[c].tolist() for c in _mined(frame)]
    return _with_negatives(data, negatives, loss)


# ------------------------------------------------------------------ loss tables
_MNRL = LossSpec(
    "MultipleNegativesRankingLoss",
    _mnrl,
    "positive-pairs",
    "In-batch negatives: each anchor must rank its positive above every other positive (and any hard negative) in the batch.",
    uses_hard_negatives=True,
    uses_in_batch_negatives=True,
)
_CACHED_MNRL = LossSpec(
    "CachedMultipleNegativesRankingLoss",
    _cached_mnrl,
    "positive-pairs",
    "MultipleNegativesRankingLoss with gradient caching: large batches (more in-batch negatives) at a fixed memory cost.",
    uses_hard_negatives=True,
    uses_in_batch_negatives=True,
    not_on_cached_embeddings="it re-embeds mini-batches of tokens (GradCache); on a frozen backbone MultipleNegativesRankingLoss computes the same loss",
)
_GIST = LossSpec(
    "GISTEmbedLoss",
    _gist,
    "positive-pairs",
    "In-batch negatives filtered by a guide model, so likely false negatives are not pushed away (needs training.guide_model).",
    uses_hard_negatives=True,
    uses_in_batch_negatives=True,
    needs_guide=True,
    not_on_cached_embeddings="it re-tokenizes each batch for its guide model",
)

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

_STS_LOSSES = {
    "CoSENTLoss": LossSpec("CoSENTLoss", _cosent, "scored-pairs", "Ranks pairs by cosine similarity in the order of their gold scores (the default)."),
    "AnglELoss": LossSpec("AnglELoss", _angle, "scored-pairs", "CoSENT on angle differences in complex space; avoids cosine saturation."),
    "CosineSimilarityLoss": LossSpec("CosineSimilarityLoss", _cosine_similarity, "scored-pairs", "Mean squared error between cosine similarity and the gold score in [0, 1]."),
}

_TRIPLET_LOSSES = {
    "MultipleNegativesRankingLoss": _MNRL,
    "CachedMultipleNegativesRankingLoss": _CACHED_MNRL,
    "TripletLoss": LossSpec("TripletLoss", _triplet, "triplets", "The anchor must be closer to the positive than to the negative by a margin."),
}

_RETRIEVAL_LOSSES = {
    "MultipleNegativesRankingLoss": _MNRL,
    "CachedMultipleNegativesRankingLoss": _CACHED_MNRL,
    "GISTEmbedLoss": _GIST,
}

_PAIR_ALIASES = {
    "text1": ("question1", "sentence1", "text1", "sentence_A", "sentence_a", "q1", "text_a"),
    "text2": ("question2", "sentence2", "text2", "sentence_B", "sentence_b", "q2", "text_b"),
    "label": ("is_duplicate", "label", "labels", "is_paraphrase", "duplicate"),
    "id1": ("qid1", "id1", "sid1"),
    "id2": ("qid2", "id2", "sid2"),
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


_PAIR_CLASSIFICATION = register_task(
    TaskSpec(
        name="pair-classification",
        description=(
            "Are two texts the same (e.g. duplicate questions)? Input columns: text1 (str), text2 (str), label (0/1). Scored by cosine similarity; accuracy and F1 use a threshold chosen on dev."
        ),
        input_columns=("text1", "text2", "label"),
        optional_columns=("id1", "id2"),
        id_columns=MappingProxyType({"text1": "id1", "text2": "id2"}),
        label_type="binary",
        default_loss="OnlineContrastiveLoss",
        losses=MappingProxyType(_PAIR_LOSSES),
        evaluator_factory=_pair_evaluator,
        evaluate=_pair_evaluate,
        train_columns=_pair_train_columns,
        primary_metric="cosine_ap",
        greater_is_better=True,
        column_aliases=MappingProxyType(_PAIR_ALIASES),
        report_metrics=("cosine_ap", "cosine_roc_auc", "cosine_f1", "cosine_accuracy"),
    )
)

# The same input and losses as pair-classification; evaluated by mining the duplicates of a pool.
register_task(
    replace(
        _PAIR_CLASSIFICATION,
        name="paraphrase-mining",
        description=(
            "Find the duplicates in a pool of texts (e.g. all questions of a forum). Input columns "
            "as pair-classification: text1, text2, label (0/1). Trains on the pairs (MNRL on the "
            "positives by default); evaluates by mining duplicates among all texts of the split: "
            "average precision of the ranked candidate pairs against the labelled duplicates and "
            "their transitive closure."
        ),
        default_loss="MultipleNegativesRankingLoss",
        evaluator_factory=_mining_evaluator,
        evaluate=_mining_evaluate,
        primary_metric="average_precision",
        report_metrics=("average_precision", "f1", "precision", "recall"),
    )
)

register_task(
    TaskSpec(
        name="sts",
        description=(
            "Semantic textual similarity: how similar are two texts? Input columns: text1 (str), "
            "text2 (str), score (number on any range; normalised to [0, 1] with data.score_range "
            "or the inferred range, stated in the data report). Scored by the Spearman "
            "correlation of cosine similarity with the gold scores."
        ),
        input_columns=("text1", "text2", "score"),
        optional_columns=("id1", "id2"),
        id_columns=MappingProxyType({"text1": "id1", "text2": "id2"}),
        label_type="score",
        default_loss="CoSENTLoss",
        losses=MappingProxyType(_STS_LOSSES),
        evaluator_factory=_sts_evaluator,
        evaluate=_sts_evaluate,
        train_columns=_sts_train_columns,
        primary_metric="spearman_cosine",
        column_aliases=MappingProxyType(
            {
                "text1": ("sentence1", "text1", "sentence_A", "sentence_a", "s1", "text_a"),
                "text2": ("sentence2", "text2", "sentence_B", "sentence_b", "s2", "text_b"),
                "score": ("score", "similarity", "relatedness_score", "relatedness", "label", "gold"),
                "id1": ("id1", "sid1"),
                "id2": ("id2", "sid2"),
            }
        ),
        report_metrics=("spearman_cosine", "pearson_cosine"),
    )
)

register_task(
    TaskSpec(
        name="triplets",
        description=(
            "Is the anchor closer to the positive than to the negative? Input columns: anchor, "
            "positive, negative (str). Scored by triplet accuracy (cosine). A negative equal to "
            "its positive or anchor is an error."
        ),
        input_columns=("anchor", "positive", "negative"),
        text_columns=("anchor", "positive", "negative"),
        group_columns=("anchor", "positive", "negative"),
        label_type="none",
        default_loss="MultipleNegativesRankingLoss",
        losses=MappingProxyType(_TRIPLET_LOSSES),
        evaluator_factory=_triplet_evaluator,
        evaluate=_triplet_evaluate,
        train_columns=_triplet_train_columns,
        primary_metric="cosine_accuracy",
        symmetric=False,
        supports_mining=True,
        column_aliases=MappingProxyType(
            {
                "anchor": ("anchor", "query", "sentence", "text"),
                "positive": ("positive", "pos", "entailment"),
                "negative": ("negative", "neg", "contradiction", "hard_negative"),
            }
        ),
        report_metrics=("cosine_accuracy", "mean_margin"),
    )
)

register_task(
    TaskSpec(
        name="retrieval",
        description=(
            "Find the documents relevant to a query. Input: (query, positive[, negative]) rows, or a "
            "BEIR-style folder (corpus.jsonl, queries.jsonl, qrels/*.tsv). Splits are disjoint by "
            "query; every split retrieves from the whole corpus. Scored by nDCG@10 (also MRR@10, "
            "MAP@100, recall@k)."
        ),
        input_columns=("query", "positive"),
        optional_columns=("negative", "query_id", "doc_id"),
        text_columns=("query", "positive"),
        group_columns=("query",),
        id_columns=MappingProxyType({"query": "query_id", "positive": "doc_id"}),
        label_type="none",
        default_loss="MultipleNegativesRankingLoss",
        losses=MappingProxyType(_RETRIEVAL_LOSSES),
        evaluator_factory=_retrieval_evaluator,
        evaluate=_retrieval_evaluate,
        train_columns=_retrieval_train_columns,
        primary_metric="cosine_ndcg@10",
        symmetric=False,
        uses_corpus=True,
        supports_mining=True,
        column_aliases=MappingProxyType(
            {
                "query": ("query", "question", "anchor", "queries"),
                "positive": ("positive", "passage", "document", "doc", "answer", "context", "pos"),
                "negative": ("negative", "hard_negative", "neg"),
                "query_id": ("query_id", "query-id", "qid"),
                "doc_id": ("doc_id", "corpus-id", "corpus_id", "pid", "docid"),
            }
        ),
        report_metrics=("cosine_ndcg@10", "cosine_mrr@10", "cosine_map@100", "cosine_recall@10", "cosine_recall@100"),
    )
)
