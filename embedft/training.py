"""Trainer: base model + loss + evaluator on sentence-transformers' own trainer.

``fit()`` measures the base model on dev and test, trains with periodic dev
evaluation, measures again on the same splits, and saves a model that plain
``SentenceTransformer(path)`` loads::

    from embedft import Trainer

    result = Trainer(data="pairs.csv", epochs=1, output_dir="runs/quora").fit()
    print(result.summary())
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from embedft.config import DataConfig, ModelConfig, RunConfig, TrainingConfig, validate_config, load_config
from embedft.data import BuiltDataset, DatasetBuilder
from embedft.errors import ConfigError, EmbedftError, ModelError, TrainingError
from embedft.files import OutputError, check_output_dir, mark, new_scratch, remove_owned, replace_dir
from embedft.results import EvalReport, MatryoshkaRow, TrainResult
from embedft.tasks import get_task

__all__ = ["EvaluateHook", "LogProgress", "Progress", "Trainer"]

logger = logging.getLogger(__name__)

# Called at each dev evaluation with (global step, dev metrics without prefixes).
# Returning True stops training; raising (e.g. optuna.TrialPruned) aborts fit().
EvaluateHook = Callable[[int, dict[str, float]], "bool | None"]


class Progress(Protocol):
    """Where :class:`Trainer` reports what it is doing; the CLI draws one progress bar per phase.

    ``phase(name, total)`` is a context manager around one phase (``data``, ``baseline evaluation``,
    ``embedding cache``, ``training``, ``final evaluation``); its value has ``update(n=1, **postfix)``.
    ``total`` is the number of steps to expect (None: the phase is one step, done when it ends).
    Training reports each step, and refreshes the postfix (latest loss, dev score) with ``n=0``.
    """

    def phase(self, name: str, total: int | None = None) -> contextlib.AbstractContextManager[Any]: ...


class LogProgress:
    """The default :class:`Progress`: draws nothing, logs how long each phase took (DEBUG)."""

    @contextlib.contextmanager
    def phase(self, name: str, total: int | None = None) -> Iterator[LogProgress]:
        t0 = time.perf_counter()
        yield self
        logger.debug("%s took %.1fs", name, time.perf_counter() - t0)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Nothing to draw."""


_SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "training": TrainingConfig}
_TOP_LEVEL = {"task", "output_dir", "overwrite"}


def _route_kwargs(kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Send flat keyword arguments (``epochs=2``) to their config section."""
    routed: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _TOP_LEVEL:
            routed[key] = value
            continue
        homes = [name for name, cls in _SECTIONS.items() if key in cls.model_fields]
        if not homes:
            raise ConfigError("unknown Trainer argument", field=key, expected="a field of data, model or training config (or task/output_dir/overwrite)", found=key)
        for home in homes:  # ``seed`` seeds both the split and the training
            routed.setdefault(home, {})[key] = value
    return routed


class Trainer:
    """Fine-tune a base model for a task, with before/after metrics on held-out data.

    Args:
        config: a :class:`RunConfig` (or a dict of one). Keyword arguments are merged in,
            either flat (``epochs=2, base_model="..."``) or by section (``training={...}``).
        data: a file path or hub id (sets ``data.source``), or in-memory data: a DataFrame,
            a list of rows, or an already built :class:`BuiltDataset`.
        loss: a registered loss name (sets ``training.loss``), or a loss module or factory
            ``model -> loss`` to use instead of the registry's; the training data then has
            the layout of ``training.loss`` (the task default unless set).
        evaluator: a sentence-transformers evaluator for dev instead of the registry's.
        on_evaluate: hooks called at each dev evaluation (see :data:`EvaluateHook`).
        callbacks: extra ``transformers.TrainerCallback`` objects.
        reporter: where phases and training steps are reported (a :class:`Progress`; default:
            :class:`LogProgress`). The trainer never prints: transformers' log dicts go to the
            ``embedft.training`` logger at DEBUG.

    Example::

        trainer = Trainer(data="pairs.tsv", base_model="sentence-transformers/all-MiniLM-L6-v2",
                          epochs=1, batch_size=32, output_dir="runs/demo", overwrite=True)
        result = trainer.fit()
        result.after.test["cosine_ap"], result.model_path
    """

    def __init__(
        self,
        config: RunConfig | dict[str, Any] | None = None,
        *,
        data: Any = None,
        loss: Any = None,
        evaluator: Any = None,
        on_evaluate: list[EvaluateHook] | None = None,
        callbacks: list[Any] | None = None,
        reporter: Progress | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(config, (str, os.PathLike)):
            raise ConfigError("Trainer takes a RunConfig or a dict; for a config file use Trainer.from_file(path)", field="config", expected="a RunConfig, a dict or None", found=str(config))
        if config is not None and not isinstance(config, (RunConfig, dict)):
            raise ConfigError("Trainer takes a RunConfig or a dict", field="config", expected="a RunConfig, a dict or None", found=type(config).__name__)
        for name, value in (("on_evaluate", on_evaluate), ("callbacks", callbacks)):
            if value is not None and (isinstance(value, (str, bytes)) or not hasattr(value, "__iter__")):
                raise ConfigError(f"{name} must be a list", field=name, expected="a list (of callables / TrainerCallback objects)", found=type(value).__name__)
        base = config.to_dict() if isinstance(config, RunConfig) else dict(config or {})
        self._data_object = None
        if isinstance(data, (str, os.PathLike)):
            base.setdefault("data", {})
            base["data"] = {**base["data"], "source": str(data)}
        elif data is not None:
            self._data_object = data
        if isinstance(loss, str):
            kwargs["loss"], loss = loss, None
        sections = {k: v for k, v in kwargs.items() if k in _SECTIONS and isinstance(v, dict)}
        flat = {k: v for k, v in kwargs.items() if k not in sections}
        for name, values in sections.items():
            base[name] = {**base.get(name, {}), **values}
        for name, values in _route_kwargs(flat).items():
            base[name] = {**base.get(name, {}), **values} if name in _SECTIONS else values
        self.config: RunConfig = validate_config(RunConfig, base, "Trainer")
        self.task = get_task(self.config.task)
        self._loss = _check_loss_argument(loss)
        self._evaluator = _check_evaluator_argument(evaluator)
        self._check_before_load()
        self._hooks = list(on_evaluate or [])
        self._callbacks = list(callbacks or [])
        self.reporter: Progress = reporter or LogProgress()

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | None = None, **kwargs: Any) -> Trainer:
        """A trainer from a YAML/JSON config file, with optional ``key=value`` overrides."""
        cfg = load_config(path)
        if overrides:
            cfg = cfg.with_overrides(overrides)
        return cls(cfg, **kwargs)

    # ------------------------------------------------------------------ data
    def build_data(self) -> BuiltDataset:
        """The train/dev/test splits this trainer uses."""
        if isinstance(self._data_object, BuiltDataset):
            if self._data_object.task != self.task.name:
                raise ConfigError("built dataset is for another task", field="task", expected=self.task.name, found=self._data_object.task)
            return self._data_object.cap_train(self.config.data.max_train_pairs, self.config.data.seed)
        with self.reporter.phase("data"):
            return DatasetBuilder(self.config.data, task=self.task.name).build(self._data_object)

    # ------------------------------------------------------------------ fit
    def fit(self, *, baseline: bool = True, evaluate_test: bool = True) -> TrainResult:
        """Evaluate the base model, train, evaluate again, save; returns a :class:`TrainResult`.

        ``baseline=False`` skips the base-model evaluation (``result.before`` is None) and
        ``evaluate_test=False`` keeps the test split untouched (search trials choose on dev only).
        """
        cfg = self.config
        check_output_dir(cfg.output_dir, kind="run", overwrite=cfg.overwrite, inputs=self.inputs())
        out = Path(cfg.output_dir).expanduser()
        built = self.build_data()

        from embedft.modeling import load_model, resolve_device, training_precision_flags

        device = resolve_device(cfg.training.device)
        precision = training_precision_flags(cfg.training, device)
        from transformers import set_seed

        set_seed(cfg.training.seed)
        model = load_model(cfg.model, device, seed=cfg.training.seed)
        t_cfg = cfg.training

        dims = _check_matryoshka_dims(t_cfg.matryoshka_dims, model)
        loss_spec = self.task.loss(t_cfg.loss)
        cache = self._frozen_cache(model, loss_spec)
        trained = model  # what trains and is evaluated: the model, or its head on cached backbone embeddings
        if cache is not None:
            from embedft.frozen import cached_model

            trained = cached_model(model, cache)
        before, base_by_dim = None, {}
        if baseline:
            with self.reporter.phase("baseline evaluation"):
                before = self._evaluate(trained, built, evaluate_test)
                base_by_dim = self._evaluate_dims(trained, built, dims, evaluate_test)
            logger.info("base model: dev %s=%.4f", self.task.primary_metric, before.dev_score)

        mining = None
        if cfg.data.mine_hard_negatives is not None:
            from embedft.mining import mine_hard_negatives

            built, mining = mine_hard_negatives(built, trained, cfg.data.mine_hard_negatives)

        train_ds = built.dataset("train", loss=loss_spec.name, hard_negatives=t_cfg.hard_negatives, seed=t_cfg.seed)
        frozen_cache = None
        if cache is not None:
            with self.reporter.phase("embedding cache"):
                frozen_cache = _fill_cache(trained, train_ds)
        loss = _loss_module(self._loss, trained) if self._loss is not None else self._build_loss(loss_spec, trained, device)
        evaluator = self._evaluator or self.task.evaluator_factory(built.dev, "dev", t_cfg.eval_batch_size, built.corpus)

        tmp = new_scratch(out)  # also removes the scratch of a run that was killed
        mark(tmp / "checkpoints", "scratch")
        try:
            with self.reporter.phase("training", _planned_steps(t_cfg, len(train_ds))) as bar, _one_thread_steps(cache is not None and device == "cpu") as one_thread:
                monitor = _make_monitor(evaluator, self.task, self._hooks, t_cfg.early_stopping_patience, bar)
                callbacks = [monitor, *one_thread, *self._callbacks]
                trainer = _make_st_trainer(trained, train_ds, loss, evaluator, t_cfg, tmp / "checkpoints", precision, device, loss_spec.uses_in_batch_negatives, callbacks)
                t0 = time.perf_counter()
                with _non_finite_loss_guard(trainer.loss, t_cfg.learning_rate, t_cfg.loss_kwargs if self._loss is None else None):
                    output = trainer.train()
                seconds, steps, epochs = time.perf_counter() - t0, int(trainer.state.global_step), float(trainer.state.epoch or 0.0)
            train_loss = float(output.training_loss)
            trained.eval()
            with self.reporter.phase("final evaluation"):
                after = self._evaluate(trained, built, evaluate_test)
                matryoshka = [
                    MatryoshkaRow(dimension=dim, bytes_per_vector=4 * dim, dev=report.dev_score, test=report.test_score if report.test else None,
                                  base_test=base_by_dim[dim].test_score if dim in base_by_dim and base_by_dim[dim].test else None)
                    for dim, report in self._evaluate_dims(trained, built, dims, evaluate_test).items()
                ]
            logger.info("fine-tuned: dev %s=%.4f", self.task.primary_metric, after.dev_score)

            remove_owned(tmp / "checkpoints")
            result = TrainResult(
                task=self.task.name, base_model=cfg.model.base_model, loss=loss_spec.name if self._loss is None else type(trainer.loss).__name__,
                before=before, after=after, matryoshka=matryoshka, data=built.report, mining=mining, frozen_cache=frozen_cache, device=device,
                train_pairs=len(train_ds), train_steps=steps, train_seconds=seconds, train_loss=train_loss if math.isfinite(train_loss) else None,
                train_pairs_per_second=len(train_ds) * epochs / seconds if seconds > 0 else 0.0,
                stopped_early=monitor.stopped_early, dev_history=monitor.history,
                output_dir=out, model_path=out / "model", config_path=out / "config.yaml", metrics_path=out / "metrics.json",
                warnings=[*_result_warnings(built.report, before, after, matryoshka, cfg.model.base_model), *_schedule_warnings(t_cfg, len(train_ds), steps)],
            )
            _save_run(tmp, out, model, cfg, result)
            replace_dir(tmp, out, kind="run", overwrite=cfg.overwrite)
        finally:
            remove_owned(tmp)
        return result

    def inputs(self) -> list[tuple[str, str | None]]:
        """The local paths this run reads (``(field, path)``): an output folder may never hold one."""
        cfg = self.config
        found = [("data.source", cfg.data.source), ("model.base_model", cfg.model.base_model), ("training.guide_model", cfg.training.guide_model)]
        return [(field, value) for field, value in found if value]

    def _check_before_load(self) -> None:
        """What can be refused before data or a model loads: the loss's keyword arguments
        (against its signature) and a guide model path that does not exist."""
        t_cfg = self.config.training
        if self._loss is not None:
            if t_cfg.loss_kwargs:
                logger.warning("training.loss_kwargs is ignored: a loss object was given (build it with its arguments)")
            return
        spec = self.task.loss(t_cfg.loss)
        spec.prepare_kwargs(t_cfg.loss_kwargs)
        if spec.needs_guide and t_cfg.guide_model:
            from embedft.modeling import resolve_base_model

            try:
                resolve_base_model(t_cfg.guide_model)
            except ModelError as exc:
                raise ModelError(exc.message.replace("base model", "guide model"), field="training.guide_model", expected=exc.expected, found=t_cfg.guide_model) from None

    def _frozen_cache(self, model: Any, loss_spec: Any) -> Any:
        """The embedding cache when the frozen backbone's cached embeddings can stand in for it, else None."""
        cfg, t_cfg = self.config, self.config.training
        if not (cfg.model.freeze_backbone and t_cfg.cache_frozen_embeddings):
            return None
        import torch

        why = loss_spec.not_on_cached_embeddings if self._loss is None else None
        if isinstance(self._loss, torch.nn.Module):
            why = "a loss object built on the full model (a factory model -> loss trains on the cache)"
        if why:
            logger.info("frozen backbone: not using the embedding cache (%s)", why)
            return None
        from embedft.frozen import EmbeddingCache

        return EmbeddingCache.for_model(model, cfg.data.cache_dir, batch_size=t_cfg.eval_batch_size, show_progress=t_cfg.progress)

    def evaluate(self, model: Any = None) -> EvalReport:
        """Evaluate ``model`` (or the base model) on this trainer's dev and test splits."""
        from embedft.files import owner
        from embedft.modeling import load_model, resolve_base_model, resolve_device

        if isinstance(model, (str, os.PathLike)):
            path = Path(model).expanduser()
            if owner(path) == "run" and (path / "model").is_dir():  # an embedft run folder: its model
                logger.info("evaluating the model of the run %s", path)
                model = path / "model"
            elif owner(path) == "search" and (path / "best" / "model").is_dir():
                logger.info("evaluating the best model of the search %s", path)
                model = path / "best" / "model"
            try:
                resolve_base_model(str(model))  # a path that is not a model: one line before the data is built
            except EmbedftError as exc:
                raise ModelError(exc.message, field="model", expected=exc.expected, found=str(model)) from None
        built = self.build_data()
        if model is None or isinstance(model, (str, os.PathLike)):
            cfg = self.config.model if model is None else self.config.model.model_copy(update={"base_model": str(model), "dense": None, "freeze_backbone": False})
            model = load_model(cfg, resolve_device(self.config.training.device))
        report = self._evaluate(model, built)
        return report.model_copy(update={"notes": list(dict.fromkeys([*built.report.warnings, *report.notes]))})

    def _evaluate(self, model: Any, built: BuiltDataset, evaluate_test: bool = True) -> EvalReport:
        t_cfg = self.config.training
        test = built.test if evaluate_test else None
        try:
            metrics = self.task.evaluate(model, built.dev, test, t_cfg.eval_batch_size, t_cfg.progress, built.corpus)
        except ValueError as exc:
            if "nan" not in str(exc).lower() and "infinity" not in str(exc).lower():
                raise
            expected = "finite weights (try a lower learning rate or weight decay, fp32, or check the data)"
            raise TrainingError("the model's embeddings are not finite numbers, so no metric can be computed", field="training.learning_rate",
                                expected=expected, found=" ".join(str(exc).split())[:120]) from None
        return EvalReport(primary_metric=self.task.primary_metric, greater_is_better=self.task.greater_is_better, notes=_collapse_notes(model, built, self.task, t_cfg.eval_batch_size), **metrics)

    def _evaluate_dims(self, model: Any, built: BuiltDataset, dims: list[int], evaluate_test: bool) -> dict[int, EvalReport]:
        """The evaluation with embeddings truncated to each Matryoshka dimension (texts encoded once for all)."""
        prefix = _PrefixEncoder(model)
        reports = {}
        for dim in dims:
            prefix.truncate_dim = dim
            reports[dim] = self._evaluate(prefix, built, evaluate_test)
        return reports

    def _build_loss(self, spec: Any, model: Any, device: str) -> Any:
        """The configured loss for ``model``: the guide model loaded when needed, Matryoshka-wrapped when asked."""
        t_cfg = self.config.training
        guide = None
        if spec.needs_guide:
            from embedft.modeling import load_model

            guide_cfg = ModelConfig(base_model=t_cfg.guide_model, max_seq_length=self.config.model.max_seq_length)
            try:
                guide = load_model(guide_cfg, device)
            except EmbedftError as exc:
                raise ModelError(exc.message, field="training.guide_model", expected=exc.expected, found=t_cfg.guide_model) from None
        loss = spec.build(model, guide=guide, **t_cfg.loss_kwargs)
        if t_cfg.matryoshka_dims:
            from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

            loss = MatryoshkaLoss(model, loss, t_cfg.matryoshka_dims)
        return loss


# ---------------------------------------------------------------------- helpers
class _PrefixEncoder:
    """``model.encode`` for Matryoshka evaluation: each list of texts is encoded once at full size,
    and every dimension is served from memory by truncating (then normalising, as
    sentence-transformers does with ``truncate_dim``)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.truncate_dim: int | None = None
        self._memo: dict[tuple[str, ...], Any] = {}

    def encode(self, sentences: list[str], batch_size: int = 32, normalize_embeddings: bool = False, show_progress_bar: bool = False, **_: Any):
        import numpy as np

        key = tuple(sentences)
        if key not in self._memo:
            self._memo[key] = np.asarray(
                self.model.encode(list(sentences), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=False, show_progress_bar=show_progress_bar),
                dtype=np.float32,
            )
        emb = self._memo[key][:, : self.truncate_dim] if self.truncate_dim else self._memo[key]
        if normalize_embeddings:
            emb = emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
        return emb


def _check_loss_argument(loss: Any) -> Any:
    """``Trainer(loss=...)`` beyond a name: a torch loss module or a factory ``model -> loss``."""
    if loss is None or callable(loss):  # a torch module is callable
        return loss
    raise ConfigError("loss must be a registered loss name, a torch loss module or a factory model -> loss", field="loss",
                      expected="a str, a torch.nn.Module or a callable", found=f"{type(loss).__name__} {_capped_repr(loss)}")


def _check_evaluator_argument(evaluator: Any) -> Any:
    """``Trainer(evaluator=...)``: a sentence-transformers ``SentenceEvaluator`` (or any callable ``model -> metrics``)."""
    if evaluator is None or (callable(evaluator) and not isinstance(evaluator, type)):
        return evaluator
    what = f"the class {evaluator.__name__}" if isinstance(evaluator, type) else f"{type(evaluator).__name__} {_capped_repr(evaluator)}"
    raise ConfigError("evaluator must be a sentence-transformers evaluator object", field="evaluator",
                      expected="a SentenceEvaluator instance or a callable model -> metrics", found=what)


def _capped_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _loss_module(loss: Any, model: Any) -> Any:
    """A loss module for ``model`` from a module or a factory ``model -> loss``."""
    import torch

    if isinstance(loss, torch.nn.Module):
        return loss
    built = loss(model)
    if not isinstance(built, torch.nn.Module):
        raise ConfigError("the loss factory did not return a torch loss module", field="loss", expected="a factory model -> torch.nn.Module", found=type(built).__name__)
    return built


@contextlib.contextmanager
def _non_finite_loss_guard(loss: Any, learning_rate: float, loss_kwargs: dict[str, Any] | None):
    """Raise :class:`TrainingError` at the first step whose loss is NaN or infinite, before its backward pass."""
    import torch

    step = 0

    def check(module, args, output):
        nonlocal step
        step += 1
        for value in output.values() if isinstance(output, dict) else [output]:
            if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value.detach()).all()):
                raise TrainingError.non_finite_loss(float(value.detach().float().sum()), step, learning_rate, loss_kwargs)

    handle = loss.register_forward_hook(check)
    try:
        yield
    finally:
        handle.remove()


def _save_run(tmp: Path, out: Path, model: Any, cfg: RunConfig, result: TrainResult) -> None:
    """Write the model, its config and metrics into the scratch folder; a write error (disk full,
    quota) is one error naming ``output_dir`` and the caller removes the scratch folder."""
    try:
        model.save(str(tmp / "model"))
        cfg.save(tmp / "config.yaml")
        (tmp / "metrics.json").write_text(result.model_dump_json(indent=2), encoding="utf-8")
    except OSError as exc:
        if isinstance(exc, EmbedftError):
            raise
        expected = "a folder on a disk with room for the model" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "a writable folder"
        raise OutputError(f"cannot save the trained model: {exc.strerror or exc}; nothing was written", field="output_dir", expected=expected, found=str(out)) from None


def _result_warnings(data: Any, before: EvalReport | None, after: EvalReport, matryoshka: list[MatryoshkaRow], base_model: str) -> list[str]:
    """What a reader of the numbers must know: the data report's warnings and every non-finite metric."""
    found = [*getattr(data, "warnings", [])]
    for who, report in ((f"base model {base_model}", before), ("fine-tuned model", after)):
        if report is not None:
            found += [f"{who}: {w}" for w in report.warnings]
    for row in matryoshka:
        for split, value in (("dev", row.dev), ("test", row.test)):
            if value is not None and not math.isfinite(value):
                found.append(f"fine-tuned model at dimension {row.dimension}: {split} {after.primary_metric} is {value}")
    return found


def _collapse_notes(model: Any, built: BuiltDataset, task: Any, batch_size: int) -> list[str]:
    """Say so when the model gives (nearly) one embedding to every text: any metric on it is chance."""
    import numpy as np

    texts = list(dict.fromkeys(str(t) for c in task.text_columns if c in built.dev.columns for t in built.dev[c]))[:64]
    if len(texts) < 3:
        return []
    try:
        emb = np.asarray(model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False), dtype=np.float64)
    except Exception:  # noqa: BLE001 - a check that only adds a warning never fails an evaluation
        logger.debug("could not check the embeddings for collapse", exc_info=True)
        return []
    if emb.ndim != 2 or not np.isfinite(emb).all():
        return []
    sims = emb @ emb.T
    if float(sims.min()) > 1 - 1e-4:
        return [
            f"the model gives nearly the same embedding to every text (cosine between {len(texts)} different dev texts "
            f">= {float(sims.min()):.6f}): its metrics are chance level (check model.max_seq_length, the learning rate, the loss)"
        ]
    return []


def _schedule_warnings(t_cfg: TrainingConfig, train_rows: int, steps: int) -> list[str]:
    """Say when the optimiser could not have changed the model much: no step, or every step in warm-up.

    The linear warm-up of transformers' schedulers gives step ``s`` the learning rate
    ``lr * s / warmup_steps``: the first step always runs at 0, so a one-step run saves the base model.
    """
    planned = _planned_steps(t_cfg, train_rows)
    warmup = math.ceil(planned * t_cfg.warmup_ratio) if t_cfg.warmup_ratio > 0 and t_cfg.scheduler != "constant" else 0
    if steps == 0:
        return ["no training step ran: the saved model is the base model"]
    if warmup and steps <= 1:
        return [
            f"the only training step ran at learning rate 0 (warm-up, training.warmup_ratio={t_cfg.warmup_ratio:g}): the saved model "
            "is the base model; train on more pairs or epochs, or set training.warmup_ratio to 0"
        ]
    if warmup and steps <= warmup:
        return [
            f"all {steps} training steps were warm-up steps (training.warmup_ratio={t_cfg.warmup_ratio:g} of {planned} planned): "
            f"the learning rate never reached training.learning_rate={t_cfg.learning_rate:g}"
        ]
    return []


def _check_matryoshka_dims(dims: list[int] | None, model: Any) -> list[int]:
    if not dims:
        return []
    full = model.get_embedding_dimension()
    if too_big := [d for d in dims if d > full]:
        raise ConfigError("Matryoshka dimension larger than the model's embedding", field="training.matryoshka_dims", expected=f"dimensions <= {full}", found=too_big)
    return list(dims)


def _planned_steps(t_cfg: TrainingConfig, train_rows: int) -> int:
    return t_cfg.max_steps or math.ceil(_steps_per_epoch(t_cfg, train_rows) * t_cfg.epochs)


def _steps_per_epoch(t_cfg: TrainingConfig, train_rows: int) -> int:
    return max(1, math.ceil(train_rows / t_cfg.batch_size))


def _fill_cache(trained: Any, train_ds: Any) -> dict[str, float]:
    """Every training text's cached backbone embedding into the stand-in's table, in one cache look-up."""
    stand_in = trained[0]
    before, t0 = stand_in.cache.stats, time.perf_counter()
    stand_in.add(t for name, feature in train_ds.features.items() if getattr(feature, "dtype", None) == "string" for t in train_ds[name])
    after, seconds = stand_in.cache.stats, time.perf_counter() - t0
    logger.info("frozen backbone: %d texts from the cache, %d encoded (%.1fs)", after.hits - before.hits, after.computed - before.computed, seconds)
    return {"hits": float(after.hits - before.hits), "computed": float(after.computed - before.computed), "embed_seconds": seconds}


@contextlib.contextmanager
def _one_thread_steps(enabled: bool) -> Iterator[list[Any]]:
    """A callback that runs each training step on one torch thread (restored after each step and at the end).

    A step on cached embeddings is a few small matrix products: several CPU threads only wait for each
    other, most of all on a busy machine (one busy core makes it 2-3x slower). Evaluations keep the threads.
    """
    if not enabled:
        yield []
        return
    import torch
    from transformers import TrainerCallback

    threads = torch.get_num_threads()

    class OneThreadSteps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            torch.set_num_threads(1)

        def on_step_end(self, args, state, control, **kwargs):
            torch.set_num_threads(threads)

    try:
        yield [OneThreadSteps()]
    finally:
        torch.set_num_threads(threads)


def _make_monitor(evaluator: Any, task: Any, hooks: list[EvaluateHook], patience: int | None, bar: Any):
    from transformers import TrainerCallback

    name = f"{evaluator.name}_" if getattr(evaluator, "name", "") else ""

    class DevMonitor(TrainerCallback):
        """Collects dev scores, runs the evaluate hooks and early stopping, reports steps, loss and dev score to ``bar``."""

        def __init__(self) -> None:
            self.history: list[tuple[int, float]] = []
            self.best: float | None = None
            self.bad_evals = 0
            self.stopped_early = False
            self.shown: dict[str, str] = {}

        def on_step_end(self, args, state, control, **kwargs):
            bar.update(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logger.debug("step %d: %s", state.global_step, logs)
            if isinstance((logs or {}).get("loss"), (int, float)):
                self.shown["loss"] = f"{logs['loss']:.4g}"
                bar.update(0, **self.shown)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            clean = {k.removeprefix(f"eval_{name}"): float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
            own = (getattr(evaluator, "primary_metric", None) or "").removeprefix(name)  # known once the evaluator has run
            key = next((k for k in (task.primary_metric, own) if k in clean), None)
            step = int(state.global_step)
            if key is not None:
                self.shown[f"dev {key}"] = f"{clean[key]:.4f}"
                bar.update(0, **self.shown)
                if self._stop_early(step, clean[key]):
                    control.should_training_stop = True
            for hook in hooks:
                if hook(step, clean):
                    control.should_training_stop = True
            return control

        def _stop_early(self, step: int, score: float) -> bool:
            self.history.append((step, score))
            if self.best is None or (score > self.best if task.greater_is_better else score < self.best):
                self.best, self.bad_evals = score, 0
                return False
            self.bad_evals += 1
            if patience is not None and self.bad_evals >= patience:
                logger.info("early stopping at step %d: no dev improvement in %d evaluations", step, patience)
                self.stopped_early = True
            return self.stopped_early

    return DevMonitor()


def _make_st_trainer(model, train_ds, loss, evaluator, t_cfg: TrainingConfig, scratch: Path, precision: dict[str, bool], device: str, in_batch_negatives: bool, callbacks: list[Any]):
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from transformers.trainer_callback import PrinterCallback

    total = _planned_steps(t_cfg, len(train_ds))
    eval_steps = t_cfg.eval_steps or _steps_per_epoch(t_cfg, len(train_ds))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(scratch), num_train_epochs=t_cfg.epochs, max_steps=t_cfg.max_steps or -1, seed=t_cfg.seed, data_seed=t_cfg.seed,
        per_device_train_batch_size=t_cfg.batch_size, per_device_eval_batch_size=t_cfg.eval_batch_size,
        learning_rate=t_cfg.learning_rate, lr_scheduler_type=t_cfg.scheduler, weight_decay=t_cfg.weight_decay,
        warmup_steps=t_cfg.warmup_ratio,  # a float is a ratio in transformers>=5
        eval_strategy="steps", eval_steps=min(eval_steps, total), save_strategy="no", report_to="none",
        logging_steps=max(1, min(50, total // 5 or 1)),
        logging_nan_inf_filter=False,  # a NaN loss must surface, not be averaged away
        disable_tqdm=True,  # steps go to the reporter (the monitor); the console is the CLI's
        use_cpu=device == "cpu", dataloader_pin_memory=device == "cuda",
        batch_sampler=BatchSamplers.NO_DUPLICATES if in_batch_negatives else BatchSamplers.BATCH_SAMPLER,
        **precision,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_ds, loss=loss, evaluator=evaluator, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # no log dicts on stdout: the monitor logs them
    return trainer
