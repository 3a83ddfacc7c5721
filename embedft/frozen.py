"""The frozen-backbone fast path: embed each text once, then train only the head.

With ``model.freeze_backbone`` on, only the head (a ``Dense`` layer, maybe followed by
``Normalize``) learns, so the backbone's embedding of a text never changes. This module
keeps those embeddings in an on-disk cache and trains the head on them with the *same*
sentence-transformers loss, so an epoch costs a few matrix products instead of a pass
through the transformer:

* :func:`split_backbone` splits a model from :func:`embedft.modeling.load_model` into its
  frozen backbone modules and its trainable head modules.
* :class:`EmbeddingCache` stores backbone embeddings keyed by (backbone weights and config,
  ``max_seq_length``, text), computing only the texts it has not seen.
* :func:`fit_head` trains the head on cached embeddings, honouring a
  :class:`~embedft.config.TrainingConfig` and calling evaluation hooks.
* :class:`CachedEncoder` is a drop-in ``model.encode`` for evaluation through the cache.

Which losses work this way is data::

    >>> from embedft.frozen import supports
    >>> supports("OnlineContrastiveLoss"), supports("CachedMultipleNegativesRankingLoss")
    (True, False)

A whole run (``train_ds`` has the columns the loss expects, e.g. ``sentence1, sentence2, label``)::

    from embedft.config import ModelConfig, TrainingConfig
    from embedft.frozen import CachedEncoder, EmbeddingCache, fit_head
    from embedft.metrics import evaluate_pair_classification
    from embedft.modeling import load_model
    from embedft.tasks import get_task

    model = load_model(ModelConfig(dense={"out_features": 256}, freeze_backbone=True), "cpu", seed=0)
    cache = EmbeddingCache.for_model(model)           # ~/.cache/embedft/embeddings/<backbone key>/
    encoder = CachedEncoder(model, cache)
    result = fit_head(
        model, train_ds, get_task("pair-classification").loss(None).build,
        TrainingConfig(epochs=5, learning_rate=1e-3, eval_steps=100),
        cache=cache, evaluate=lambda: evaluate_pair_classification(encoder, dev, None)["dev"],
    )
    model.save("runs/head/model")                      # a normal SentenceTransformer folder
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from embedft.config import TrainingConfig, validate_config
from embedft.errors import ConfigError, DataError, ModelError, TrainingError
from embedft.files import default_cache_root, prepare_cache_root

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import torch
    from sentence_transformers import SentenceTransformer

__all__ = [
    "SUPPORTED_LOSSES",
    "IN_BATCH_NEGATIVE_LOSSES",
    "CacheStats",
    "HeadFitResult",
    "EmbeddingCache",
    "CachedEncoder",
    "split_backbone",
    "supports",
    "fit_head",
    "default_cache_root",
]

logger = logging.getLogger(__name__)

# Losses that only call ``model(features)["sentence_embedding"]`` per column and then compute
# on the embeddings; checked against sentence-transformers 6.2 (tests/test_frozen.py).
SUPPORTED_LOSSES: frozenset[str] = frozenset(
    {
        "OnlineContrastiveLoss",
        "ContrastiveLoss",
        "CoSENTLoss",
        "AnglELoss",
        "CosineSimilarityLoss",
        "MultipleNegativesRankingLoss",
        "MultipleNegativesSymmetricRankingLoss",
        "TripletLoss",
        "BatchAllTripletLoss",
        "BatchHardTripletLoss",
        "BatchSemiHardTripletLoss",
        "BatchHardSoftMarginTripletLoss",
        "MarginMSELoss",
        "DistillKLDivLoss",
    }
)
# Losses whose other rows are negatives: batches then never repeat a text (as sentence-transformers'
# NO_DUPLICATES batch sampler does).
IN_BATCH_NEGATIVE_LOSSES: frozenset[str] = frozenset({"MultipleNegativesRankingLoss", "MultipleNegativesSymmetricRankingLoss"})

_WHY_NOT: dict[str, str] = {
    "CachedMultipleNegativesRankingLoss": "it re-embeds mini-batches of tokens (GradCache); on a frozen backbone MultipleNegativesRankingLoss computes the same loss",
    "CachedMultipleNegativesSymmetricRankingLoss": "it re-embeds mini-batches of tokens (GradCache); on a frozen backbone MultipleNegativesSymmetricRankingLoss computes the same loss",
    "GISTEmbedLoss": "it re-tokenizes each batch for its guide model",
    "CachedGISTEmbedLoss": "it re-tokenizes each batch for its guide model",
    "MatryoshkaLoss": "it patches the model's forward to truncate embeddings",
    "Matryoshka2dLoss": "it needs the backbone's intermediate layers",
    "AdaptiveLayerLoss": "it needs the backbone's intermediate layers",
    "MegaBatchMarginLoss": "it re-embeds mini-batches of tokens",
    "DenoisingAutoEncoderLoss": "it trains a decoder on the backbone's token embeddings",
    "ContrastiveTensionLoss": "it trains a second copy of the backbone",
    "ContrastiveTensionLossInBatchNegatives": "it trains a second copy of the backbone",
    "SoftmaxLoss": "it trains a classifier of its own that a saved model would not contain",
    "MSELoss": "it may train a projection of its own that a saved model would not contain",
    "EmbedDistillLoss": "it may train a projection of its own that a saved model would not contain",
}

# The columns sentence-transformers' data collator reads as labels, in its order of preference.
_LABEL_COLUMNS = ("label", "labels", "score", "scores")
_DIGEST_BYTES = 32


# ---------------------------------------------------------------------- results
class CacheStats(BaseModel):
    """Counts of an :class:`EmbeddingCache`: distinct texts found (``hits``) and encoded (``computed``)."""

    model_config = ConfigDict(frozen=True)

    hits: int = 0
    computed: int = 0


class HeadFitResult(BaseModel):
    """What :func:`fit_head` did.

    ``seconds`` covers the whole call (cache look-ups and encoding of missing texts,
    training, evaluations); ``embed_seconds`` is the part spent getting the training
    texts' backbone embeddings. ``train_loss`` is the mean loss over all steps and
    ``final_loss`` the mean over the last epoch's worth of steps. ``eval_history`` holds
    ``(step, metrics)`` for each call of ``evaluate``.
    """

    loss: str
    train_rows: int
    steps: int
    epochs: float
    seconds: float
    embed_seconds: float
    train_loss: float | None
    final_loss: float | None
    losses: list[float]
    eval_history: list[tuple[int, dict[str, float]]]
    stopped_early: bool
    cache_hits: int
    cache_computed: int


# ---------------------------------------------------------------------- splitting
def split_backbone(model: SentenceTransformer) -> tuple[list[torch.nn.Module], list[torch.nn.Module]]:
    """``(backbone_modules, head_modules)`` of a SentenceTransformer with a frozen backbone.

    The head is the trailing run of ``Dense``/``Normalize`` modules from the first one with a
    trainable parameter; everything before it is the backbone and must be frozen. The modules
    are the model's own objects, so training the head trains the model::

        model = load_model(ModelConfig(dense={"out_features": 16}, freeze_backbone=True), "cpu")
        backbone, head = split_backbone(model)   # [Transformer, Pooling], [Dense, Normalize]
    """
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    modules = list(model._modules.values())
    start = len(modules)
    while start > 0 and isinstance(modules[start - 1], (Dense, Normalize)):
        start -= 1
    while start < len(modules) and not _trainable(modules[start]):
        start += 1  # a frozen Dense (or a Normalize) before the trainable one is part of the backbone
    backbone, head = modules[:start], modules[start:]
    chain = " -> ".join(type(m).__name__ for m in modules)
    if not head or not backbone:
        raise ConfigError(
            "the model has no trainable head on top of its backbone",
            field="model.dense",
            expected="a backbone followed by a trainable Dense head (model.dense.out_features), optionally then Normalize",
            found=chain,
        )
    trainable = [type(m).__name__ for m in backbone if _trainable(m)]
    if trainable:
        raise ConfigError(
            "the backbone is not frozen, so its embeddings cannot be cached",
            field="model.freeze_backbone",
            expected="true (no backbone parameter with requires_grad)",
            found=f"trainable parameters in {', '.join(trainable)}",
        )
    return backbone, head


def _trainable(module: Any) -> bool:
    return any(p.requires_grad for p in module.parameters())


@functools.cache
def _head_model_class() -> type:
    import torch

    class HeadModel(torch.nn.Module):
        """Runs the head modules on ``features["sentence_embedding"]`` (cached backbone embeddings).

        Losses call ``self.model(features)["sentence_embedding"]``; with this as their model
        they see the head's output exactly as they would see the full model's.
        """

        def __init__(self, head: Sequence[torch.nn.Module]) -> None:
            super().__init__()
            self.head = torch.nn.ModuleList(head)

        def forward(self, features: Mapping[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {"sentence_embedding": features["sentence_embedding"]}
            for module in self.head:
                out = module(out)
            return out

        def get_embedding_dimension(self) -> int | None:
            for module in reversed(self.head):
                dim = getattr(module, "get_embedding_dimension", lambda: None)()
                if dim is not None:
                    return dim
            return None

        @property
        def device(self) -> torch.device:
            return _device_of(self.head)

    return HeadModel


def _head_model(head: Sequence[Any]) -> Any:
    return _head_model_class()(head)


def _device_of(modules: Iterable[Any]) -> torch.device:
    import torch

    for module in modules:
        for p in module.parameters():
            return p.device
    return torch.device("cpu")


def _dtype_of(modules: Iterable[Any]) -> torch.dtype:
    import torch

    for module in modules:
        for p in module.parameters():
            return p.dtype
    return torch.float32


# ---------------------------------------------------------------------- the cache
class EmbeddingCache:
    """Backbone embeddings of distinct texts on disk, content-addressed.

    Entries live under ``<root>/embeddings/<key>/``, where the key hashes the backbone's
    weights, tokenizer and module configs and its ``max_seq_length``, never its path: a copy
    of the same model shares the cache, a different ``max_seq_length`` does not. Each text is
    stored under ``sha256(text)`` as float32 (encoded in eval mode, not normalized). Writes
    are atomic files that are never modified, so processes filling the same cache at once
    can at worst both encode a text; a reader never sees a partial file.

    The key is computed from the weights when the cache is made; make a new cache after
    changing them.

    Args:
        backbone: the backbone modules (``split_backbone(model)[0]``) or a SentenceTransformer
            whose whole output is cached; see :meth:`for_model` for a model with a head.
        root: cache root (see :func:`default_cache_root`).
        batch_size: encoding batch size for texts not yet cached.
        shard_size: texts per file written (a long fill keeps what it finished if interrupted).

    Example::

        cache = EmbeddingCache.for_model(model, "/tmp/embcache")
        emb = cache.get(["how do i learn python", "what is rice"])   # (2, 384) float32
        cache.get(["how do i learn python"]); cache.stats            # CacheStats(hits=1, computed=2)
    """

    def __init__(
        self,
        backbone: SentenceTransformer | Sequence[Any],
        root: str | os.PathLike | None = None,
        *,
        batch_size: int = 64,
        shard_size: int = 8192,
        show_progress: bool = False,
    ) -> None:
        self._encoder = _as_sentence_transformer(backbone)
        self._modules = list(self._encoder._modules.values())
        self.root = prepare_cache_root(root)
        self.batch_size = batch_size
        self.shard_size = shard_size
        self.show_progress = show_progress
        self._static = _backbone_digest(self._modules)
        self._stores: dict[str, _ShardStore] = {}
        self._hits = 0
        self._computed = 0

    @classmethod
    def for_model(cls, model: SentenceTransformer, root: str | os.PathLike | None = None, **kwargs: Any) -> EmbeddingCache:
        """The cache of ``model``'s backbone (``model`` has a trainable head; see :func:`split_backbone`)."""
        return cls(split_backbone(model)[0], root, **kwargs)

    # ------------------------------------------------------------ identity
    @property
    def max_seq_length(self) -> int | None:
        return getattr(self._encoder, "max_seq_length", None)

    @property
    def key(self) -> str:
        """The backbone identity: weights, tokenizer, module configs and current ``max_seq_length``."""
        return _combine_key(self._static, self.max_seq_length)

    @property
    def directory(self) -> Path:
        """Where this backbone's entries live (``<root>/embeddings/<key>``)."""
        return self.root / "embeddings" / self.key

    @property
    def dimension(self) -> int:
        dim = self._encoder.get_embedding_dimension()
        if dim is None:  # pragma: no cover - every Pooling-ended backbone knows its dimension
            raise ModelError("the backbone does not report its embedding dimension", field="model.base_model", expected="a backbone ending in Pooling")
        return int(dim)

    @property
    def stats(self) -> CacheStats:
        """Distinct texts found in the cache and encoded, over this object's life."""
        return CacheStats(hits=self._hits, computed=self._computed)

    def __len__(self) -> int:
        """Texts stored for the current key (by any process)."""
        store = self._store()
        store.refresh()
        return len(store)

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.directory)!r}, hits={self._hits}, computed={self._computed})"

    # ------------------------------------------------------------ look-up
    def get(self, texts: Sequence[str], *, prompt: str | None = None, show_progress: bool | None = None) -> np.ndarray:
        """Backbone embeddings of ``texts`` as a ``(len(texts), dim)`` float32 array.

        Texts not in the cache (by this or another process) are encoded once, in eval mode,
        and stored. ``prompt`` is prepended the way ``SentenceTransformer.encode(prompt=...)``
        does and is part of the key.
        """
        if isinstance(texts, str):
            raise DataError("texts must be a list of strings", field="texts", expected="a list of strings", found="one string")
        texts = list(texts)
        prompt = prompt or None
        store = self._store()
        digests: dict[str, bytes] = {}
        for i, text in enumerate(texts):
            if text not in digests:
                if not isinstance(text, str):
                    raise DataError("texts must be strings", field=f"texts[{i}]", expected="str", found=type(text).__name__)
                digests[text] = _text_digest(text, prompt)
        missing = [t for t, d in digests.items() if d not in store]
        if missing and store.refresh():  # another process may have added them
            missing = [t for t in missing if digests[t] not in store]
        self._hits += len(digests) - len(missing)
        if missing:
            self._compute(store, missing, [digests[t] for t in missing], prompt, show_progress)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        unique = list(digests.values())
        table = store.gather(unique)
        row = {t: i for i, t in enumerate(digests)}
        return table[np.fromiter((row[t] for t in texts), dtype=np.int64, count=len(texts))]

    def _store(self) -> _ShardStore:
        key = self.key
        if key not in self._stores:
            self._stores[key] = _ShardStore(self.root / "embeddings" / key, self.dimension)
        return self._stores[key]

    def _compute(self, store: _ShardStore, texts: list[str], digests: list[bytes], prompt: str | None, show_progress: bool | None) -> None:
        logger.info("embedding cache %s: encoding %d new text(s)", store.directory.name, len(texts))
        store.write_meta(self._describe())
        for start in range(0, len(texts), self.shard_size):
            chunk = texts[start:start + self.shard_size]
            vectors = self._encode(chunk, prompt, self.show_progress if show_progress is None else show_progress)
            store.add(digests[start:start + self.shard_size], vectors)
            self._computed += len(chunk)

    def _encode(self, texts: list[str], prompt: str | None, show_progress: bool) -> np.ndarray:
        modes = [(m, m.training) for m in self._encoder.modules()]
        try:
            out = self._encoder.encode(
                texts,
                prompt=prompt,
                batch_size=self.batch_size,
                show_progress_bar=show_progress,
                convert_to_numpy=True,
                normalize_embeddings=False,
            )
        finally:
            for module, training in modes:
                module.training = training
        out = np.ascontiguousarray(out, dtype=np.float32)
        if out.shape != (len(texts), self.dimension):  # pragma: no cover - a backbone that breaks its own contract
            raise ModelError("the backbone returned embeddings of an unexpected shape", field="model.base_model", expected=(len(texts), self.dimension), found=out.shape)
        return out

    def _describe(self) -> dict[str, Any]:
        return {
            "modules": [f"{type(m).__module__}.{type(m).__qualname__}" for m in self._modules],
            "max_seq_length": self.max_seq_length,
            "dimension": self.dimension,
            "dtype": "float32",
            "text_key": "sha256(utf-8 text); with a prompt sha256('prompt\\0' + prompt + '\\0' + text)",
        }


def _as_sentence_transformer(backbone: Any) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    if isinstance(backbone, SentenceTransformer):
        return backbone
    modules = list(backbone) if isinstance(backbone, Sequence) else None
    if not modules:
        raise ConfigError("EmbeddingCache needs a backbone", field="backbone", expected="split_backbone(model)[0] or a SentenceTransformer", found=type(backbone).__name__)
    return SentenceTransformer(modules=modules, device=str(_device_of(modules)))


def _text_digest(text: str, prompt: str | None) -> bytes:
    h = hashlib.sha256()
    if prompt:
        h.update(b"prompt\0" + prompt.encode("utf-8") + b"\0")
    h.update(text.encode("utf-8"))
    return h.digest()


def _combine_key(static: str, max_seq_length: int | None) -> str:
    return hashlib.sha256(f"{static}\0max_seq_length={max_seq_length}".encode()).hexdigest()[:32]


def _backbone_digest(modules: Sequence[Any]) -> str:
    """A hash of what decides the backbone's output, apart from ``max_seq_length``: module
    classes and configs, model configs, tokenizers and every weight's bytes (not paths)."""
    import torch

    h = hashlib.sha256(b"embedft-backbone-v1")
    seen_configs: set[int] = set()
    for module in modules:
        h.update(f"\0module={type(module).__module__}.{type(module).__qualname__}".encode())
        config = module.get_config_dict() if hasattr(module, "get_config_dict") else {}
        config = {k: v for k, v in config.items() if k != "max_seq_length"}
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
        tokenizer = getattr(module, "tokenizer", None)
        if tokenizer is not None:
            h.update(b"\0tokenizer=" + _tokenizer_fingerprint(tokenizer).encode())
        for sub in module.modules():
            hf_config = getattr(sub, "config", None)
            if hf_config is not None and hasattr(hf_config, "to_dict") and id(hf_config) not in seen_configs:
                seen_configs.add(id(hf_config))
                values = {k: v for k, v in hf_config.to_dict().items() if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype")}
                h.update(b"\0config=" + json.dumps(values, sort_keys=True, default=str).encode())
        for name, tensor in module.state_dict().items():
            t = tensor.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"\0{name}:{t.dtype}:{tuple(tensor.shape)}\0".encode())
            h.update(memoryview(t.view(torch.uint8).numpy()))
    return h.hexdigest()


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        # Truncation and padding are per-call state the tokenizer keeps from its last use.
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        text = json.dumps(state, sort_keys=True)
    elif hasattr(tokenizer, "get_vocab"):  # pragma: no cover - slow tokenizers
        text = json.dumps(sorted(tokenizer.get_vocab().items())) + str(getattr(tokenizer, "do_lower_case", None))
    else:  # pragma: no cover
        text = repr(tokenizer)
    return f"{type(tokenizer).__name__}:{hashlib.sha256(text.encode()).hexdigest()}"


class _ShardStore:
    """One backbone's entries: immutable shard files ``<id>.vectors.npy`` + ``<id>.keys.npy``.

    A shard becomes visible when its keys file appears; both files are written to a temporary
    name and renamed, so a concurrent reader sees a shard whole or not at all. Two writers
    never touch the same file; a text written twice is read from the first shard seen.
    """

    def __init__(self, directory: Path, dimension: int) -> None:
        self.directory = directory
        self.dimension = dimension
        self._index: dict[bytes, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        self._seen: set[str] = set()

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._index

    def __len__(self) -> int:
        return len(self._index)

    def refresh(self) -> int:
        """Load shards written since the last look (by any process); returns how many."""
        if not self.directory.is_dir():
            return 0
        added = 0
        for keys_path in sorted(self.directory.glob("*.keys.npy")):
            shard_id = keys_path.name[: -len(".keys.npy")]
            if shard_id in self._seen:
                continue
            self._seen.add(shard_id)
            try:
                keys = np.load(keys_path, allow_pickle=False)
                vectors = np.load(self.directory / f"{shard_id}.vectors.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                logger.warning("embedding cache: skipping unreadable shard %s (%s)", keys_path, exc)
                continue
            if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != _DIGEST_BYTES or vectors.dtype != np.float32 or vectors.shape != (len(keys), self.dimension):
                logger.warning("embedding cache: skipping shard %s with unexpected shape %s / %s", keys_path, keys.shape, vectors.shape)
                continue
            self._register(keys.tobytes(), vectors)
            added += 1
        return added

    def add(self, digests: list[bytes], vectors: np.ndarray) -> None:
        """Write one shard (atomically) and index it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        shard_id = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        keys = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), _DIGEST_BYTES)
        _atomic_save(self.directory / f"{shard_id}.vectors.npy", vectors)
        _atomic_save(self.directory / f"{shard_id}.keys.npy", keys)  # the shard is visible from here on
        self._seen.add(shard_id)
        self._register(keys.tobytes(), vectors)

    def gather(self, digests: list[bytes]) -> np.ndarray:
        where = np.array([self._index[d] for d in digests], dtype=np.int64).reshape(-1, 2)
        out = np.empty((len(digests), self.dimension), dtype=np.float32)
        for shard in np.unique(where[:, 0]):
            mask = where[:, 0] == shard
            out[mask] = self._shards[shard][where[mask, 1]]
        return out

    def write_meta(self, meta: dict[str, Any]) -> None:
        path = self.directory / "meta.json"
        if path.exists():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".tmp-{uuid.uuid4().hex}-meta.json"
        tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        os.replace(tmp, path)

    def _register(self, raw_keys: bytes, vectors: np.ndarray) -> None:
        shard = len(self._shards)
        self._shards.append(vectors)
        for row in range(len(raw_keys) // _DIGEST_BYTES):
            self._index.setdefault(raw_keys[row * _DIGEST_BYTES:(row + 1) * _DIGEST_BYTES], (shard, row))


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_cache(cache: EmbeddingCache, backbone: list[Any]) -> None:
    """The cache must hold this backbone's embeddings: the same modules, or identical weights and config."""
    if len(cache._modules) == len(backbone) and all(a is b for a, b in zip(cache._modules, backbone)):
        return
    max_len = getattr(backbone[0], "max_seq_length", None)
    if cache.key != _combine_key(_backbone_digest(backbone), max_len):
        raise ConfigError(
            "the embedding cache is for another backbone",
            field="cache",
            expected="EmbeddingCache.for_model(model) of this model",
            found=str(cache.directory),
        )


# ---------------------------------------------------------------------- losses
def supports(loss: str | type | object) -> bool:
    """Whether :func:`fit_head` can train with ``loss`` (a class name, a loss class or a loss).

    >>> supports("MultipleNegativesRankingLoss"), supports("MatryoshkaLoss")
    (True, False)
    """
    name = loss if isinstance(loss, str) else (loss.__name__ if isinstance(loss, type) else type(loss).__name__)
    return name in SUPPORTED_LOSSES


def _check_loss(loss: Any, head_model: Any) -> str:
    name = type(loss).__name__
    if not supports(name):
        reason = _WHY_NOT.get(name, "it is not known to compute its loss from sentence embeddings alone")
        raise ConfigError(
            f"{name} cannot train a head on cached embeddings: {reason}",
            field="training.loss",
            expected=f"one of {sorted(SUPPORTED_LOSSES)}",
            found=name,
            hint="train through the full model instead (set training.cache_frozen_embeddings=false)",
        )
    if getattr(loss, "model", None) is not head_model and getattr(loss, "sentence_embedder", None) is not head_model:
        raise ConfigError(
            "the loss was not built on the model fit_head passed to loss_factory",
            field="loss_factory",
            expected="a callable model -> loss that builds the loss on the model it is given",
            found=name,
        )
    return name


# ---------------------------------------------------------------------- training
EvaluateHook = Callable[[int, dict[str, float]], "bool | None"]


def fit_head(
    model: SentenceTransformer,
    train_dataset: datasets.Dataset,
    loss_factory: Callable[[Any], Any],
    config: TrainingConfig | Mapping[str, Any] | None = None,
    *,
    cache: EmbeddingCache | None = None,
    evaluate: Callable[[], Mapping[str, float]] | None = None,
    hooks: Sequence[EvaluateHook] = (),
    in_batch_negatives: bool | None = None,
    cpu_threads: int | None = 1,
) -> HeadFitResult:
    """Train only ``model``'s head on cached backbone embeddings; the head is updated in place.

    Args:
        model: a SentenceTransformer with a frozen backbone and a Dense head (see
            :func:`split_backbone`), e.g. from :func:`embedft.modeling.load_model`.
        train_dataset: a ``datasets.Dataset`` laid out as sentence-transformers expects:
            text columns in order (``sentence1, sentence2`` / ``anchor, positive[, negative]``)
            and an optional ``label``/``score`` column.
        loss_factory: ``model -> loss``, called with a small module standing in for the model
            (it maps cached embeddings through the head), e.g. ``LossSpec.build``. The loss
            must be in :data:`SUPPORTED_LOSSES`.
        config: a :class:`TrainingConfig` (or a dict of one). Honoured: epochs/max_steps,
            batch_size, learning_rate, warmup_ratio, scheduler, weight_decay, seed and
            eval_steps (default: once per epoch). The optimisation is the one transformers'
            Trainer runs (AdamW without decay on biases and norms, gradients clipped to norm 1,
            the batches sentence-transformers' trainer draws with the same seed), so with the
            backbone's dropout off both give the same head. Device and precision are not
            used: the head trains in fp32 where its weights are.
        cache: the :class:`EmbeddingCache` of this model's backbone (default: a new one at
            :func:`default_cache_root`).
        evaluate: called without arguments every ``eval_steps`` and after the last step; it
            returns metrics (e.g. via a :class:`CachedEncoder` of ``model``).
        hooks: ``hook(step, metrics)`` after each evaluation; one returning True stops
            training, one raising (e.g. ``optuna.TrialPruned``) aborts it.
        in_batch_negatives: batches never repeat a text; by default on for
            :data:`IN_BATCH_NEGATIVE_LOSSES`.
        cpu_threads: torch threads for the training steps of a head on the CPU (restored
            afterwards, and around ``evaluate``). One thread beats several for products this
            small, by far on a busy machine; None keeps torch's setting.

    Raises :class:`~embedft.errors.TrainingError` when the loss is NaN or infinite (before the step is taken).

    Example::

        result = fit_head(model, train_ds, lambda m: OnlineContrastiveLoss(m), {"epochs": 3, "learning_rate": 1e-3})
        result.steps, result.final_loss, result.cache_computed
    """
    import torch
    from transformers import get_scheduler

    t0 = time.perf_counter()
    cfg = config if isinstance(config, TrainingConfig) else validate_config(TrainingConfig, dict(config or {}), "fit_head")
    if hooks and evaluate is None:
        raise ConfigError("evaluation hooks need an evaluate function", field="evaluate", expected="a callable returning metrics", found=None)
    backbone, head = split_backbone(model)
    head_model = _head_model(head)
    loss = loss_factory(head_model)
    loss_name = _check_loss(loss, head_model)
    cache = cache if cache is not None else EmbeddingCache(backbone)
    _check_cache(cache, backbone)
    label_column, text_columns = _columns(train_dataset)
    n = len(train_dataset)

    # Every distinct training text's backbone embedding, once.
    before = cache.stats
    columns = [train_dataset[c] for c in text_columns]
    for name, values in zip(text_columns, columns):
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if bad is not None:
            raise DataError("a text column holds a non-text value", field=f"{name}[{bad}]", expected="str", found=type(values[bad]).__name__)
    unique = list(dict.fromkeys(t for values in columns for t in values))
    table_np = cache.get(unique)
    position = {t: i for i, t in enumerate(unique)}
    rows = np.stack([np.fromiter((position[t] for t in values), dtype=np.int64, count=n) for values in columns], axis=1)
    after = cache.stats
    embed_seconds = time.perf_counter() - t0

    device, dtype = _device_of(head), _dtype_of(head)
    table = torch.from_numpy(table_np).to(device=device, dtype=dtype)
    row_index = torch.from_numpy(rows).to(device)
    labels = _labels(train_dataset, label_column).to(device) if label_column else None
    loss.to(device)

    torch.manual_seed(cfg.seed)
    params = [(name, p) for name, p in head_model.named_parameters() if p.requires_grad]
    no_decay = {name for name, _ in params if name.endswith("bias") or "norm" in name.lower()}
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for name, p in params if name not in no_decay], "weight_decay": cfg.weight_decay},
            {"params": [p for name, p in params if name in no_decay], "weight_decay": 0.0},
        ],
        lr=cfg.learning_rate,
    )
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=math.ceil(total * cfg.warmup_ratio), num_training_steps=total)
    eval_every = cfg.eval_steps or steps_per_epoch
    no_dup = loss_name in IN_BATCH_NEGATIVE_LOSSES if in_batch_negatives is None else in_batch_negatives
    batches = _batches(n, cfg.batch_size, cfg.seed, rows if no_dup else None)

    modes = [(m, m.training) for m in [*head_model.modules(), *loss.modules()]]
    losses: list[float] = []
    history: list[tuple[int, dict[str, float]]] = []
    stop, step = False, 0

    def run_evaluation(at: int) -> bool:
        head_model.eval()
        try:
            metrics = evaluate() or {}
        finally:
            head_model.train()
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}
        history.append((at, clean))
        wants_stop = False
        for hook in hooks:
            if hook(at, clean):
                wants_stop = True
        return wants_stop

    threads = torch.get_num_threads()
    step_threads = cpu_threads if cpu_threads and device.type == "cpu" else threads
    try:
        head_model.train()
        loss.train()
        _set_threads(step_threads)
        while step < total and not stop:
            batch = torch.from_numpy(next(batches)).to(device)
            picked = row_index[batch]
            features = [{"sentence_embedding": table[picked[:, c]]} for c in range(len(text_columns))]
            value = loss(features, labels[batch] if labels is not None else None)
            if isinstance(value, dict):
                value = torch.stack(list(value.values())).sum()
            step += 1
            number = float(value.detach())
            if not math.isfinite(number):
                raise TrainingError.non_finite_loss(number, step, cfg.learning_rate, cfg.loss_kwargs)
            optimizer.zero_grad(set_to_none=True)
            if value.requires_grad:
                value.backward()
                torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
                optimizer.step()
            scheduler.step()
            losses.append(number)
            if evaluate is not None and (step % eval_every == 0 or step == total):
                _set_threads(threads)
                stop = run_evaluation(step)
                _set_threads(step_threads)
    finally:
        _set_threads(threads)
        for module, training in modes:
            module.training = training
        optimizer.zero_grad(set_to_none=True)

    last = losses[-steps_per_epoch:]
    result = HeadFitResult(
        loss=loss_name,
        train_rows=n,
        steps=step,
        epochs=step / steps_per_epoch,
        seconds=time.perf_counter() - t0,
        embed_seconds=embed_seconds,
        train_loss=float(np.mean(losses)) if losses else None,
        final_loss=float(np.mean(last)) if last else None,
        losses=losses,
        eval_history=history,
        stopped_early=stop and step < total,
        cache_hits=after.hits - before.hits,
        cache_computed=after.computed - before.computed,
    )
    logger.info(
        "head trained: %d steps in %.2fs (%.2fs getting %d embeddings, %d encoded), loss %.4f",
        result.steps, result.seconds, embed_seconds, len(unique), result.cache_computed, result.final_loss or float("nan"),
    )
    return result


def _set_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _labels(dataset: Any, column: str) -> torch.Tensor:
    """The label column as sentence-transformers' collator makes it (``torch.tensor`` of the values)."""
    import torch

    values = dataset[column]
    try:
        return torch.tensor(values)
    except (TypeError, ValueError, RuntimeError):
        raise DataError(
            "the label column is not numeric",
            field=column,
            expected="numbers (or equal-length lists of numbers)",
            found=repr(values[0])[:40] if len(values) else "nothing",
        ) from None


def _columns(dataset: Any) -> tuple[str | None, list[str]]:
    raw = getattr(dataset, "column_names", None)
    if raw is None or isinstance(raw, dict):
        raise DataError(
            "the training data must be one datasets.Dataset",
            field="train_dataset",
            expected="a datasets.Dataset",
            found=type(dataset).__name__,
        )
    names = list(raw)
    label = next((c for c in _LABEL_COLUMNS if c in names), None)
    texts = [c for c in names if c != label and c != "dataset_name"]
    if not texts or len(dataset) == 0:
        raise DataError(
            "the training dataset has no text columns or no rows",
            field="train_dataset",
            expected="a datasets.Dataset with text columns (e.g. sentence1, sentence2, label) and at least one row",
            found=f"columns {names}, {len(dataset)} row(s)",
        )
    return label, texts


def _batches(n: int, batch_size: int, seed: int, rows: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Shuffled batches of row indices, epoch after epoch.

    Epoch ``e`` takes the permutation ``torch.randperm(n)`` drawn with seed ``seed + e``, which is
    the order sentence-transformers' trainer (through accelerate) gives the same seed, so both
    paths see the same batches. With ``rows`` (text ids per row) a batch never holds the same
    text twice: a row that would repeat one waits for the next batch (like the NO_DUPLICATES
    sampler, though not batch for batch).
    """
    import torch

    epoch = 0
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).numpy()
        epoch += 1
        if rows is None:
            for start in range(0, n, batch_size):
                yield order[start:start + batch_size]
            continue
        pending, waiting = deque(order.tolist()), []
        while pending or waiting:
            batch: list[int] = []
            seen: set[int] = set()
            still_waiting = []
            for i in waiting:
                if len(batch) < batch_size and seen.isdisjoint(rows[i].tolist()):
                    batch.append(i)
                    seen.update(rows[i].tolist())
                else:
                    still_waiting.append(i)
            waiting = still_waiting
            while len(batch) < batch_size and pending:
                i = pending.popleft()
                if seen.isdisjoint(rows[i].tolist()):
                    batch.append(i)
                    seen.update(rows[i].tolist())
                else:
                    waiting.append(i)
            yield np.asarray(batch, dtype=np.int64)


# ---------------------------------------------------------------------- evaluation
class CachedEncoder:
    """``model.encode`` through the cache: cached backbone embeddings, then the live head.

    Accepts the arguments of ``SentenceTransformer.encode`` that make sense here (prompts,
    ``normalize_embeddings``, ``truncate_dim``, ``precision``, numpy/tensor/list output), so
    embedft's metrics and sentence-transformers' evaluators can use it in place of the model.
    It reads the head's current weights, so it follows :func:`fit_head` as it trains.

    Example::

        encoder = CachedEncoder(model, EmbeddingCache.for_model(model))
        evaluate_pair_classification(encoder, dev, test)
        encoder.encode(["how do i learn python"], normalize_embeddings=True).shape   # (1, 256)
    """

    def __init__(self, model: SentenceTransformer, cache: EmbeddingCache | None = None, *, truncate_dim: int | None = None) -> None:
        self.model = model
        self.backbone, self.head = split_backbone(model)
        self.cache = cache if cache is not None else EmbeddingCache(self.backbone)
        _check_cache(self.cache, self.backbone)
        self.truncate_dim = truncate_dim if truncate_dim is not None else getattr(model, "truncate_dim", None)
        self._head_model = _head_model(self.head)

    # ------------------------------------------------------------ what evaluators read
    @property
    def device(self) -> torch.device:
        return _device_of(self.head)

    @property
    def similarity_fn_name(self) -> str:
        return self.model.similarity_fn_name

    @property
    def model_card_data(self) -> Any:
        return self.model.model_card_data

    @property
    def prompts(self) -> dict[str, str]:
        return getattr(self.model, "prompts", {}) or {}

    @property
    def default_prompt_name(self) -> str | None:
        return getattr(self.model, "default_prompt_name", None)

    @property
    def max_seq_length(self) -> int | None:
        return self.cache.max_seq_length

    def similarity(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.similarity(*args, **kwargs)

    def similarity_pairwise(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.similarity_pairwise(*args, **kwargs)

    def get_embedding_dimension(self) -> int | None:
        dim = self._head_model.get_embedding_dimension()
        return min(dim, self.truncate_dim) if dim is not None and self.truncate_dim else dim

    # ------------------------------------------------------------ encoding
    def encode(
        self,
        sentences: str | Sequence[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: str | None = "sentence_embedding",
        precision: str = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: Any = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Embeddings of ``sentences`` as ``SentenceTransformer.encode`` returns them.

        ``batch_size`` and ``device`` are accepted for compatibility (the cache encodes with
        its own batch size; the head runs where its weights are). Only sentence embeddings
        are available.
        """
        import torch

        if output_value != "sentence_embedding":
            raise ConfigError("a cached encoder gives sentence embeddings only", field="output_value", expected="sentence_embedding", found=output_value)
        if kwargs:
            logger.debug("CachedEncoder.encode ignores %s", sorted(kwargs))
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        backbone_emb = self.cache.get(texts, prompt=self._resolve_prompt(prompt, prompt_name), show_progress=bool(show_progress_bar))
        emb = self._apply_head(backbone_emb)
        dim = truncate_dim if truncate_dim is not None else self.truncate_dim
        if dim is not None:
            emb = emb[:, :dim]
        if normalize_embeddings:
            emb = torch.nn.functional.normalize(emb, p=2, dim=1)
        if precision != "float32":
            from sentence_transformers.util.quantization import quantize_embeddings

            quantized = quantize_embeddings(emb.numpy(), precision=precision)
            emb = torch.from_numpy(quantized)
        if convert_to_tensor:
            out = emb.to(self.device)
            return out[0] if single else out
        if convert_to_numpy:
            arr = emb.numpy()
            return arr[0] if single else arr
        rows = list(emb.to(self.device).unbind(0))
        return rows[0] if single else rows

    def encode_query(self, sentences: str | Sequence[str], **kwargs: Any) -> Any:
        """:meth:`encode` with the model's ``query`` prompt when it has one (as sentence-transformers does)."""
        if "query" in self.prompts and kwargs.get("prompt") is None and kwargs.get("prompt_name") is None:
            kwargs["prompt_name"] = "query"
        return self.encode(sentences, **kwargs)

    def encode_document(self, sentences: str | Sequence[str], **kwargs: Any) -> Any:
        """:meth:`encode` with the model's ``document`` prompt when it has one."""
        if "document" in self.prompts and kwargs.get("prompt") is None and kwargs.get("prompt_name") is None:
            kwargs["prompt_name"] = "document"
        return self.encode(sentences, **kwargs)

    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        if prompt is not None:
            return prompt or None
        name = prompt_name if prompt_name is not None else self.default_prompt_name
        if name is None:
            return None
        if name not in self.prompts:
            raise ConfigError("unknown prompt name", field="prompt_name", expected=sorted(self.prompts), found=name)
        return self.prompts[name] or None

    def _apply_head(self, backbone_emb: np.ndarray) -> torch.Tensor:
        import torch

        modes = [(m, m.training) for m in self._head_model.modules()]
        device = self.device
        parts = []
        try:
            self._head_model.eval()
            with torch.no_grad():
                dtype = _dtype_of(self.head)
                for start in range(0, max(len(backbone_emb), 1), 8192):
                    x = torch.from_numpy(backbone_emb[start:start + 8192]).to(device=device, dtype=dtype)
                    parts.append(self._head_model({"sentence_embedding": x})["sentence_embedding"].float().cpu())
        finally:
            for module, training in modes:
                module.training = training
        return torch.cat(parts, dim=0)
