"""The frozen-backbone fast path: embed each text once, then train only the head.

With ``model.freeze_backbone`` on, only the head (a ``Dense`` layer, maybe followed by
``Normalize``) learns, so the backbone's embedding of a text never changes. This module keeps
those embeddings in an on-disk cache and puts them in front of the head, so that
sentence-transformers' own trainer trains the head on them: a step costs a few matrix
products instead of a pass through the transformer, and everything else (losses, batch
samplers, evaluators, callbacks, Matryoshka, precision) is the trainer's usual code.

* :func:`split_backbone` splits a model from :func:`embedft.modeling.load_model` into its
  frozen backbone modules and its trainable head modules.
* :class:`EmbeddingCache` stores backbone embeddings keyed by (backbone weights and config,
  ``max_seq_length``, text), computing only the texts it has not seen.
* :func:`cached_model` is a ``SentenceTransformer`` whose input module maps each text to its
  cached backbone embedding, followed by the model's own head modules: training it trains
  the model, and its ``encode`` gives the model's embeddings.

:class:`embedft.Trainer` uses it whenever the backbone is frozen. By hand (``train_ds`` has
the columns the loss expects, e.g. ``sentence1, sentence2, label``)::

    from sentence_transformers import SentenceTransformerTrainer
    from embedft.config import ModelConfig
    from embedft.frozen import EmbeddingCache, cached_model
    from embedft.modeling import load_model
    from embedft.tasks import get_task

    model = load_model(ModelConfig(dense={"out_features": 256}, freeze_backbone=True), "cpu", seed=0)
    fast = cached_model(model, EmbeddingCache.for_model(model))   # ~/.cache/embedft/embeddings/<backbone key>/
    loss = get_task("pair-classification").loss(None).build(fast)
    fast[0].add([*train_ds["sentence1"], *train_ds["sentence2"]])  # optional: every text in one cache look-up
    SentenceTransformerTrainer(model=fast, train_dataset=train_ds, loss=loss).train()  # its checkpoints hold model
    model.save("runs/head/model")   # a normal SentenceTransformer folder with the trained head (fast.save does the same)
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from embedft.errors import ConfigError, DataError, ModelError
from embedft.files import atomic_write_text, default_cache_root, prepare_cache_root, replacing

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sentence_transformers import SentenceTransformer

__all__ = ["CacheStats", "EmbeddingCache", "cached_model", "default_cache_root", "split_backbone"]

logger = logging.getLogger(__name__)

_DIGEST_BYTES = 32


# ---------------------------------------------------------------------- results
class CacheStats(BaseModel):
    """Counts of an :class:`EmbeddingCache`: distinct texts found (``hits``) and encoded (``computed``)."""

    model_config = ConfigDict(frozen=True)

    hits: int = 0
    computed: int = 0


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
        expected = "a backbone followed by a trainable Dense head (model.dense.out_features), optionally then Normalize"
        raise ConfigError("the model has no trainable head on top of its backbone", field="model.dense", expected=expected, found=chain)
    if trainable := [type(m).__name__ for m in backbone if _trainable(m)]:
        raise ConfigError(
            "the backbone is not frozen, so its embeddings cannot be cached",
            field="model.freeze_backbone",
            expected="true (no backbone parameter with requires_grad)",
            found=f"trainable parameters in {', '.join(trainable)}",
        )
    return backbone, head


def _trainable(module: Any) -> bool:
    return any(p.requires_grad for p in module.parameters())


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
            chunk = texts[start : start + self.shard_size]
            vectors = self._encode(chunk, prompt, self.show_progress if show_progress is None else show_progress)
            store.add(digests[start : start + self.shard_size], vectors)
            self._computed += len(chunk)

    def _encode(self, texts: list[str], prompt: str | None, show_progress: bool) -> np.ndarray:
        modes = [(m, m.training) for m in self._encoder.modules()]
        try:
            out = self._encoder.encode(texts, prompt=prompt, batch_size=self.batch_size, show_progress_bar=show_progress, convert_to_numpy=True)
        finally:
            for module, training in modes:
                module.training = training
        out = np.ascontiguousarray(out, dtype=np.float32)
        if out.shape != (len(texts), self.dimension):  # pragma: no cover - a backbone that breaks its own contract
            raise ModelError("the backbone returned embeddings of an unexpected shape", field="model.base_model", expected=(len(texts), self.dimension), found=out.shape)
        return out

    def _describe(self) -> dict[str, Any]:
        modules = [f"{type(m).__module__}.{type(m).__qualname__}" for m in self._modules]
        text_key = "sha256(utf-8 text); with a prompt sha256('prompt\\0' + prompt + '\\0' + text)"
        return {"modules": modules, "max_seq_length": self.max_seq_length, "dimension": self.dimension, "dtype": "float32", "text_key": text_key}


def _as_sentence_transformer(backbone: Any) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    if isinstance(backbone, SentenceTransformer):
        return backbone
    modules = list(backbone) if isinstance(backbone, Sequence) else None
    if not modules:
        raise ConfigError("EmbeddingCache needs a backbone", field="backbone", expected="split_backbone(model)[0] or a SentenceTransformer", found=type(backbone).__name__)
    return SentenceTransformer(modules=modules, device=str(next((p.device for m in modules for p in m.parameters()), "cpu")))


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
        if not (self.directory / "meta.json").exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.directory / "meta.json", json.dumps(meta, indent=2))

    def _register(self, raw_keys: bytes, vectors: np.ndarray) -> None:
        shard = len(self._shards)
        self._shards.append(vectors)
        for row in range(len(raw_keys) // _DIGEST_BYTES):
            self._index.setdefault(raw_keys[row * _DIGEST_BYTES : (row + 1) * _DIGEST_BYTES], (shard, row))


def _atomic_save(path: Path, array: np.ndarray) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _check_cache(cache: EmbeddingCache, backbone: list[Any]) -> None:
    """The cache must hold this backbone's embeddings: the same modules, or identical weights and config."""
    if len(cache._modules) == len(backbone) and all(a is b for a, b in zip(cache._modules, backbone, strict=True)):
        return
    max_len = getattr(backbone[0], "max_seq_length", None)
    if cache.key != _combine_key(_backbone_digest(backbone), max_len):
        raise ConfigError("the embedding cache is for another backbone", field="cache", expected="EmbeddingCache.for_model(model) of this model", found=str(cache.directory))


# ---------------------------------------------------------------------- the stand-in for the backbone
_TABLE_LOCK = threading.Lock()  # one for every table: an add also uses the (not thread-safe) cache


def cached_model(model: SentenceTransformer, cache: EmbeddingCache | None = None) -> SentenceTransformer:
    """``model`` with its frozen backbone replaced by cached embeddings: a ``SentenceTransformer``
    of a ``CachedBackbone`` input module followed by ``model``'s own head modules.

    The input module's ``preprocess`` maps each text (with its prompt) to a row of one
    in-memory table of backbone embeddings; its ``forward`` looks the rows up. ``fast[0].add(texts)``
    puts texts in the table ahead, in one cache look-up (one file written for new texts), and
    returns that look-up's :class:`CacheStats`; a text seen first by ``preprocess`` is added then,
    without a progress bar. So the model trains with sentence-transformers' trainer, losses and
    evaluators without running the backbone, its training updates ``model``'s head, and its
    ``encode`` gives ``model``'s embeddings (within float rounding). It shares ``model``'s model
    card data (what the trainer records ends up in ``model``'s card), and its ``save`` (so a
    trainer checkpoint too) saves ``model``; a checkpoint loads back into it. It copies ``model``'s
    prompts, similarity function and ``truncate_dim`` when made: set them on ``model`` first, or on
    the cached model afterwards.

    Example::

        fast = cached_model(model, EmbeddingCache.for_model(model))
        fast[0].add(train_texts)                     # one cache look-up for all of them
        fast.encode(["how do i learn python"]).shape  # (1, 256), as model.encode gives
    """
    backbone, head = split_backbone(model)
    cache = cache if cache is not None else EmbeddingCache(backbone)
    _check_cache(cache, backbone)
    weights = next(p for m in head for p in m.parameters())
    stand_in_class, model_class = _cached_classes()
    fast = model_class(
        modules=[stand_in_class(cache, weights.dtype), *head],
        device=str(weights.device),
        prompts={name: text for name, text in (model.prompts or {}).items() if text is not None},  # None: a default slot, refilled by the model
        default_prompt_name=model.default_prompt_name,
        similarity_fn_name=model.similarity_fn_name,
        truncate_dim=model.truncate_dim,
        model_card_data=model.model_card_data,
    )
    model.model_card_data.register_model(model)  # the card describes (and its examples run on) the model, not the stand-in
    fast.__dict__["source"] = model  # a plain attribute, not a submodule: the backbone neither moves nor trains with ``fast``
    return fast


@functools.cache
def _cached_classes() -> tuple[type, type]:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import InputModule

    class CachedBackbone(InputModule):
        """Stands in for a frozen backbone: texts become rows of a table of their cached embeddings."""

        table: torch.Tensor  # a registered buffer (moves with the module, not saved); rows past len(rows) are spare room

        def __init__(self, cache: EmbeddingCache, dtype: torch.dtype = torch.float32) -> None:
            super().__init__()
            self.cache = cache
            self.rows: dict[tuple[str | None, str], int] = {}
            self.register_buffer("table", torch.zeros(0, cache.dimension, dtype=dtype), persistent=False)

        def add(self, texts: Iterable[str], prompt: str | None = None, *, show_progress: bool | None = None) -> CacheStats:
            """Put the cached embeddings of ``texts`` not yet in the table into it (one cache look-up);
            returns that look-up's counts. The table grows by doubling, so many small adds stay cheap."""
            prompt = prompt or None
            with _TABLE_LOCK:
                new = [t for t in dict.fromkeys(texts) if (prompt, t) not in self.rows]
                if not new:
                    return CacheStats()
                before = self.cache.stats
                vectors, start = torch.from_numpy(self.cache.get(new, prompt=prompt, show_progress=show_progress)), len(self.rows)
                end = start + len(new)
                with torch.inference_mode(False):  # encode() runs in inference mode; the table must serve training too
                    if end > len(self.table):
                        grown = self.table.new_zeros(max(end, 2 * len(self.table)), self.table.shape[1])
                        grown[:start] = self.table[:start]
                        self.table = grown
                    self.table[start:end] = vectors.to(self.table.device, self.table.dtype)
                self.rows.update(((prompt, t), start + i) for i, t in enumerate(new))  # after the rows are written: readers take no lock
                after = self.cache.stats
                return CacheStats(hits=after.hits - before.hits, computed=after.computed - before.computed)

        # texts only, narrower than InputModule.preprocess: no image or pair input has a cached embedding
        def preprocess(self, inputs: Sequence[str], prompt: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
            rows, prompt = self.rows, prompt or None
            try:
                index = [rows[(prompt, t)] for t in inputs]
            except (KeyError, TypeError):
                self.add(inputs, prompt, show_progress=False)
                index = [rows[(prompt, t)] for t in inputs]
            return {"input_ids": torch.tensor(index, dtype=torch.long)}  # the name the trainer collects features by

        def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
            features["sentence_embedding"] = self.table[features["input_ids"].to(self.table.device)]
            return features

        def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
            raise ModelError("the cached stand-in for the backbone cannot be saved", field="model", expected="the model it was made from (model.save)", found=output_path)

    class CachedModel(SentenceTransformer):
        """What :func:`cached_model` returns: saving it saves the model it was made from (``self.source``)."""

        source: SentenceTransformer  # set by cached_model as a plain attribute, not a submodule

        def save(self, path: str, *args: Any, **kwargs: Any) -> None:
            """Save the model this one was made from (they share the trained head): a normal SentenceTransformer folder."""
            self.source.save(path, *args, **kwargs)

        def load_state_dict(self, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
            """Also takes the state dict of the model it was made from (a trainer checkpoint holds that model)."""
            source = self.__dict__.get("source")
            if source is not None and set(state_dict) == set(source.state_dict()):
                return source.load_state_dict(state_dict, *args, **kwargs)
            return super().load_state_dict(state_dict, *args, **kwargs)

    return CachedBackbone, CachedModel
