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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from embedft.budget import BudgetPlan
from embedft.config import DataConfig, ModelConfig, RunConfig, TrainingConfig, load_config, validate_config
from embedft.data import BuiltDataset, DatasetBuilder
from embedft.errors import ConfigError, EmbedftError, ModelError, TrainingError
from embedft.files import OutputError, check_output_dir, mark, new_scratch, remove_owned, replace_dir
from embedft.results import EvalReport, MatryoshkaRow, RepeatsReport, TrainResult
from embedft.tasks import get_task

if TYPE_CHECKING:  # pragma: no cover
    from pydantic import BaseModel

__all__ = ["EvaluateHook", "LogProgress", "Progress", "Trainer"]

logger = logging.getLogger(__name__)

# Called at each dev evaluation with (global step, dev metrics without prefixes).
# Returning True stops training; raising (e.g. optuna.TrialPruned) aborts fit().
EvaluateHook = Callable[[int, dict[str, float]], "bool | None"]


class Progress(Protocol):
    """Where :class:`Trainer` reports what it is doing; the CLI draws one progress bar per phase.

    ``phase(name, total)`` is a context manager around one phase (``data``, ``base model``, ``embedding cache``,
    ``baseline evaluation``, ``training``, ``final evaluation``); its value has ``update(n=1, **postfix)``.
    ``total`` is the number of steps to expect (None: the phase is one step, done when it ends).
    Training reports each step, and refreshes the postfix (latest loss, dev score) with ``n=0``.
    A reporter may also have ``note(message)``: lines to show between phases (a time budget's plan).
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


_SECTIONS: dict[str, type[BaseModel]] = {"data": DataConfig, "model": ModelConfig, "training": TrainingConfig}
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
        show_progress: the libraries' own progress bars (encoding batches); None: ``training.progress``.
            A display choice, not part of the run: the saved config keeps ``training.progress``.
        base_models: a :class:`~embedft.modeling.BaseModelCache`: the base model is a copy of the
            one it keeps in memory instead of a read from disk (a search worker passes its own).

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
        show_progress: bool | None = None,
        base_models: Any = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(config, (str, os.PathLike)):
            raise ConfigError("Trainer takes a RunConfig or a dict; for a config file use Trainer.from_file(path)", field="config", expected="a RunConfig, a dict or None", found=str(config))
        if config is not None and not isinstance(config, (RunConfig, dict)):
            raise ConfigError("Trainer takes a RunConfig or a dict", field="config", expected="a RunConfig, a dict or None", found=type(config).__name__)
        checked: tuple[tuple[str, Any], ...] = (("on_evaluate", on_evaluate), ("callbacks", callbacks))  # what a caller passed, whatever its type
        for name, value in checked:
            if value is not None and (isinstance(value, (str, bytes)) or not hasattr(value, "__iter__")):
                raise ConfigError(f"{name} must be a list", field=name, expected="a list (of callables / TrainerCallback objects)", found=type(value).__name__)
        base = config.model_dump(mode="json", exclude_unset=True) if isinstance(config, RunConfig) else dict(config or {})  # unset stays unset: a recipe fills it
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
        self.show_progress = self.config.training.progress if show_progress is None else show_progress
        self.base_models = base_models

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | None = None, **kwargs: Any) -> Trainer:
        """A trainer from a YAML/JSON config file, with optional ``key=value`` overrides."""
        cfg: RunConfig = load_config(path)
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
        The saved weights are those of the best dev evaluation during training (early stopping
        included). With ``training.repeats: N`` the seeds ``seed .. seed + N - 1`` train on the same
        splits: ``result.repeats`` holds the spread of their metrics and the seed best on dev is saved.
        Metrics carry bootstrap intervals and ``result.verdict`` says whether fine-tuning helped
        (``training.bootstrap``).
        """
        from embedft.budget import clock

        self._fit_start = clock()  # a time budget counts from here
        self._dev_eval_seconds: float | None = None  # measured by the baseline evaluation, for a time budget's plan
        cfg, t_cfg = self.config, self.config.training
        check_output_dir(cfg.output_dir, kind="run", overwrite=cfg.overwrite, inputs=self.inputs())
        out = Path(cfg.output_dir).expanduser()
        built = self.build_data()

        from transformers import set_seed

        from embedft.compare import compare_reports
        from embedft.modeling import load_model, resolve_device

        device = resolve_device(t_cfg.device)
        tmp: Path | None = None
        sign = 1 if self.task.greater_is_better else -1

        def dev_score(run: _SeedRun) -> float:
            return sign * run.after.dev_score if math.isfinite(run.after.dev_score) else -math.inf

        try:
            runs: list[_SeedRun] = []
            best: _SeedRun | None = None
            for seed in range(t_cfg.seed, t_cfg.seed + t_cfg.repeats):
                set_seed(seed)
                with self.reporter.phase("base model"):
                    model = load_model(_loadable(cfg.model), device, seed=seed, cache=self.base_models)  # a model that cannot load leaves no folder behind
                if cfg.model.max_seq_length == "auto":  # sized to the training texts once; config.yaml records the length
                    cfg = self.config = _size_to_data(model, built, self.task, cfg)
                tmp = tmp or new_scratch(out)  # also removes the scratch of a run that was killed
                mark(tmp / "checkpoints", "scratch")
                run = self._fit_seed(seed, model, built, device, tmp / "checkpoints", runs[0] if runs else None, baseline=baseline, evaluate_test=evaluate_test)
                remove_owned(tmp / "checkpoints")
                built = run.built  # with mined negatives: mined once, by the base model
                runs.append(run)
                loser, best = (run, best) if best is not None and dev_score(run) <= dev_score(best) else (best, run)
                if loser is not None:  # only the model of the seed best on dev is kept
                    loser.model = loser.trained = loser.monitor = None
            assert best is not None and tmp is not None  # training.repeats >= 1: a seed ran
            first = runs[0]
            b = t_cfg.bootstrap
            before, after, difference, verdict = compare_reports(first.base_scores, best.after_scores, first.before, best.after, resamples=b.resamples, confidence=b.confidence, seed=b.seed)
            split = "test" if after.test else "dev"
            repeats = None
            if len(runs) > 1:
                repeats = RepeatsReport(
                    seeds=[r.seed for r in runs],
                    split=split,
                    values={k: [getattr(r.after, split)[k] for r in runs] for k in getattr(after, split)},
                    dev_scores=[r.after.dev_score for r in runs],
                    saved_seed=best.seed,
                )
            result = TrainResult(
                task=self.task.name,
                base_model=cfg.model.base_model,
                loss=best.loss_name,
                before=before,
                after=after,
                matryoshka=best.matryoshka,
                data=built.report,
                mining=first.mining,
                frozen_cache=best.frozen_cache,
                time_budget=best.budget,
                device=device,
                train_pairs=best.train_pairs,
                train_steps=best.steps,
                train_seconds=best.seconds,
                train_loss=best.train_loss if math.isfinite(best.train_loss) else None,
                train_pairs_per_second=best.train_pairs * best.epochs / best.seconds if best.seconds > 0 else 0.0,
                stopped_early=best.monitor.stopped_early,
                dev_history=best.monitor.history,
                best_step=best.monitor.best_step,
                best_dev_score=best.monitor.best,
                difference_intervals=difference,
                verdict=verdict,
                repeats=repeats,
                output_dir=out,
                model_path=out / "model",
                config_path=out / "config.yaml",
                metrics_path=out / "metrics.json",
                warnings=[*_result_warnings(built.report, before, after, best.matryoshka, cfg.model.base_model), *_schedule_warnings(t_cfg, best.train_pairs, best.steps)],
            )
            _save_run(tmp, out, best.model, cfg, result)
            replace_dir(tmp, out, kind="run", overwrite=cfg.overwrite)
        finally:
            if tmp is not None:
                remove_owned(tmp)
        return result

    def _fit_seed(self, seed: int, model: Any, built: BuiltDataset, device: str, scratch: Path, first: _SeedRun | None, *, baseline: bool, evaluate_test: bool) -> _SeedRun:
        """Train the base model loaded with ``seed`` and evaluate it; the first seed also measures the base model
        (and mines hard negatives with it), later seeds reuse ``first``'s."""
        from embedft.modeling import training_precision_flags

        cfg = self.config
        t_cfg = cfg.training.model_copy(update={"seed": seed})
        dims = _check_matryoshka_dims(t_cfg.matryoshka_dims, model)
        loss_spec = self.task.loss(t_cfg.loss)
        cache = self._frozen_cache(model, loss_spec)
        trained = model  # what trains and is evaluated: the model, or its head on cached backbone embeddings
        if cache is not None:
            from embedft.frozen import cached_model

            trained = cached_model(model, cache)
        run = _SeedRun(seed=seed, built=built, model=model, trained=trained)
        if cache is not None:  # every text in the table before anything encodes: no cache look-up per evaluation batch
            with self.reporter.phase("embedding cache"):
                run.frozen_cache = _fill_cache(trained, built, self.task)
        if first is not None:
            run.before, run.base_scores, run.base_by_dim, run.mining = first.before, first.base_scores, first.base_by_dim, first.mining
        elif baseline:
            t_base = time.perf_counter()
            with self.reporter.phase("baseline evaluation"):
                run.before, run.base_scores = self._evaluate(trained, built, evaluate_test)
                self._dev_eval_seconds = (time.perf_counter() - t_base) * len(built.dev) / (len(built.dev) + (len(built.test) if evaluate_test else 0))
                run.base_by_dim = self._evaluate_dims(trained, built, dims, evaluate_test)
            logger.info("base model: dev %s=%.4f", self.task.primary_metric, run.before.dev_score)
        if first is None and cfg.data.mine_hard_negatives is not None:
            from embedft.mining import mine_hard_negatives

            run.built, run.mining = mine_hard_negatives(built, trained, cfg.data.mine_hard_negatives)
            built = run.built

        specs = [loss_spec, *(self.task.loss(name) for name in t_cfg.extra_losses)]  # multi-task: one dataset and loss each
        train_ds = _train_datasets(built, specs, t_cfg, seed)
        loss = _loss_module(self._loss, trained, cached=cache is not None) if self._loss is not None else self._build_losses(specs, trained, device)
        evaluator = self._evaluator or self.task.evaluator_factory(built.dev, "dev", t_cfg.eval_batch_size, built.corpus)
        in_batch = any(spec.uses_in_batch_negatives for spec in specs)
        precision = training_precision_flags(t_cfg, device)
        if t_cfg.time_budget_minutes is not None:  # time a few real steps, then fit data size and epochs to what is left
            run.budget, built, train_ds, t_cfg = self._plan_budget(trained, built, specs, train_ds, loss, t_cfg, scratch, precision, device, in_batch, seed)
        phase = "training" if cfg.training.repeats == 1 else f"training (seed {seed})"
        with self.reporter.phase(phase, _planned_steps(t_cfg, _rows(train_ds))) as bar:
            run.monitor = _make_monitor(evaluator, self.task, self._hooks, t_cfg.early_stopping_patience, bar, trained)
            stop = None
            if run.budget is not None:
                from embedft.budget import budget_callback

                stop = budget_callback(self._fit_start + run.budget.budget_seconds, bar, run.monitor.shown, self._fit_start)
            callbacks = [*([stop] if stop else []), run.monitor, *self._callbacks]
            trainer = _make_st_trainer(trained, train_ds, loss, evaluator, t_cfg, scratch, precision, device, in_batch, callbacks, data_seed=self.config.data.seed)
            t0 = time.perf_counter()
            with _non_finite_loss_guard(trainer.loss, t_cfg.learning_rate, t_cfg.loss_kwargs if self._loss is None else None):
                output = trainer.train()
            run.seconds, run.steps, run.epochs = time.perf_counter() - t0, int(trainer.state.global_step), float(trainer.state.epoch or 0.0)
        if run.budget is not None:
            run.budget = run.budget.model_copy(update={"stopped_by_budget": bool(stop and stop.stopped), "training_seconds": run.seconds})
            if run.budget.stopped_by_budget:
                logger.info("time budget: training stopped at step %d of %d", run.steps, run.budget.steps)
        run.monitor.restore_best()
        run.train_loss, run.train_pairs = float(output.training_loss), sum(_rows(train_ds))
        run.loss_name = "+".join(spec.name for spec in specs) if self._loss is None else type(trainer.loss).__name__
        trained.eval()
        with self.reporter.phase("final evaluation"):
            run.after, run.after_scores = self._evaluate(trained, built, evaluate_test)
            run.matryoshka = [
                MatryoshkaRow(
                    dimension=dim,
                    bytes_per_vector=4 * dim,
                    dev=report.dev_score,
                    test=report.test_score if report.test else None,
                    base_test=run.base_by_dim[dim].test_score if dim in run.base_by_dim and run.base_by_dim[dim].test else None,
                )
                for dim, report in self._evaluate_dims(trained, built, dims, evaluate_test).items()
            ]
        logger.info("fine-tuned (seed %d): dev %s=%.4f", seed, self.task.primary_metric, run.after.dev_score)
        return run

    def inputs(self) -> list[tuple[str, str | None]]:
        """The local paths this run reads (``(field, path)``): an output folder may never hold one."""
        cfg = self.config
        found = [("data.source", cfg.data.source), ("model.base_model", cfg.model.base_model), ("training.guide_model", cfg.training.guide_model)]
        return [(field, value) for field, value in found if value]

    def _check_before_load(self) -> None:
        """What can be refused before data or a model loads: the loss's keyword arguments
        (against its signature) and a guide model path that does not exist."""
        t_cfg = self.config.training
        if self._loss is not None and t_cfg.extra_losses:
            raise ConfigError(
                "training.extra_losses needs the registry's losses: a loss object replaces only one",
                field="training.extra_losses",
                expected="[] with Trainer(loss=...), or loss names only",
                found=t_cfg.extra_losses,
            )
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

        extra = [self.task.loss(name).not_on_cached_embeddings for name in t_cfg.extra_losses]
        why = next((w for w in (loss_spec.not_on_cached_embeddings, *extra) if w), None) if self._loss is None else None
        if isinstance(self._loss, torch.nn.Module):
            why = "a loss object built on the full model (a factory model -> loss trains on the cache)"
        if why:
            logger.info("frozen backbone: not using the embedding cache (%s)", why)
            return None
        from embedft.frozen import EmbeddingCache

        return EmbeddingCache.for_model(model, cfg.data.cache_dir, batch_size=t_cfg.eval_batch_size, show_progress=self.show_progress)

    def evaluate(self, model: Any = None) -> EvalReport:
        """Evaluate ``model`` (or the base model) on this trainer's dev and test splits, with bootstrap intervals (``training.bootstrap``)."""
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
            model = load_model(_loadable(cfg), resolve_device(self.config.training.device))
        from embedft.compare import compare_reports

        report, scores = self._evaluate(model, built)
        b = self.config.training.bootstrap
        report = compare_reports(None, scores, None, report, resamples=b.resamples, confidence=b.confidence, seed=b.seed).after
        return report.model_copy(update={"notes": list(dict.fromkeys([*built.report.warnings, *report.notes]))})

    def _evaluate(self, model: Any, built: BuiltDataset, evaluate_test: bool = True) -> tuple[EvalReport, dict[str, Any]]:
        """The report of ``model`` on dev (and test), and the per-unit scores behind it (for the bootstrap)."""
        t_cfg = self.config.training
        test = built.test if evaluate_test else None
        try:
            metrics = self.task.evaluate(model, built.dev, test, t_cfg.eval_batch_size, self.show_progress, built.corpus)
        except ValueError as exc:
            if "nan" not in str(exc).lower() and "infinity" not in str(exc).lower():
                raise
            expected = "finite weights (try a lower learning rate or weight decay, fp32, or check the data)"
            raise TrainingError(
                "the model's embeddings are not finite numbers, so no metric can be computed", field="training.learning_rate", expected=expected, found=" ".join(str(exc).split())[:120]
            ) from None
        notes = _collapse_notes(model, built, self.task, t_cfg.eval_batch_size)
        report = EvalReport(primary_metric=self.task.primary_metric, greater_is_better=self.task.greater_is_better, notes=notes, dev=metrics["dev"], test=metrics.get("test", {}))
        return report, getattr(metrics, "scores", {})

    def _evaluate_dims(self, model: Any, built: BuiltDataset, dims: list[int], evaluate_test: bool) -> dict[int, EvalReport]:
        """The evaluation with embeddings truncated to each Matryoshka dimension (texts encoded once for all)."""
        prefix = _PrefixEncoder(model)
        reports = {}
        for dim in dims:
            prefix.truncate_dim = dim
            reports[dim] = self._evaluate(prefix, built, evaluate_test)[0]
        return reports

    def _build_losses(self, specs: list[Any], model: Any, device: str) -> Any:
        """The loss for ``model``, or (multi-task, ``training.extra_losses``) a dict of one loss per dataset;
        ``training.loss_kwargs`` go to the main loss."""
        if len(specs) == 1:
            return self._build_loss(specs[0], model, device)
        return {spec.name: self._build_loss(spec, model, device, kwargs=None if i == 0 else {}) for i, spec in enumerate(specs)}

    def _plan_budget(
        self, trained: Any, built: BuiltDataset, specs: list[Any], train_ds: Any, loss: Any, t_cfg: TrainingConfig, scratch: Path, precision: dict[str, Any], device: str, in_batch: bool, seed: int
    ) -> tuple[BudgetPlan, BuiltDataset, Any, TrainingConfig]:
        """Time a few real training steps (weights put back after), then plan data size and epochs for the budget."""
        import torch
        from transformers import TrainerCallback

        from embedft.budget import CALIBRATION_STEPS, clock, plan_budget

        ends: list[float] = []

        class StepClock(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                ends.append(time.perf_counter())
                bar.update(1)

        weights = {n: p.detach().to("cpu", copy=True) for n, p in trained.named_parameters() if p.requires_grad}
        steps = min(CALIBRATION_STEPS + 1, _planned_steps(t_cfg, _rows(train_ds)))
        with self.reporter.phase("time budget calibration", steps) as bar:
            calibration = _make_st_trainer(
                trained, train_ds, loss, None, t_cfg.model_copy(update={"max_steps": steps}), scratch, precision, device, in_batch, [StepClock()], data_seed=self.config.data.seed
            )
            started = time.perf_counter()
            calibration.train()
        with torch.no_grad():
            for n, p in trained.named_parameters():
                if n in weights:
                    p.copy_(weights[n])
        # the mean step after the first (data loader start, lazy set-up): the plan is a sum of steps, slow ones included
        per_step = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else ends[0] - started
        dev_eval = self._dev_eval_seconds if self._dev_eval_seconds is not None else _time_dev_evaluation(trained, built, self.task, t_cfg.eval_batch_size)
        assert t_cfg.time_budget_minutes is not None
        plan = plan_budget(
            budget_seconds=t_cfg.time_budget_minutes * 60,
            spent_seconds=clock() - self._fit_start,
            seconds_per_step=per_step,
            measured_steps=max(1, len(ends) - 1),
            rows=_rows(train_ds),
            batch_size=t_cfg.batch_size,
            epochs=t_cfg.epochs,
            dev_eval_seconds=dev_eval,
            round_robin=t_cfg.multi_dataset_batch_sampler == "round_robin",
            max_steps=t_cfg.max_steps,
        )
        if plan.train_fraction < 1:
            built = built.cap_train(max(1, math.ceil(len(built.train) * plan.train_fraction)), seed)
            train_ds = _train_datasets(built, specs, t_cfg, seed)
        t_cfg = t_cfg.model_copy(update={"epochs": plan.epochs, "max_steps": plan.steps if t_cfg.max_steps else None})
        logger.info("%s", plan.summary())
        note = getattr(self.reporter, "note", None)
        if callable(note):
            note(plan.summary())
        return plan, built, train_ds, t_cfg

    def _build_loss(self, spec: Any, model: Any, device: str, kwargs: dict[str, Any] | None = None) -> Any:
        """The configured loss for ``model``: the guide model loaded when needed, Matryoshka-wrapped when asked."""
        t_cfg = self.config.training
        guide = None
        if spec.needs_guide:
            from embedft.modeling import load_model

            assert t_cfg.guide_model is not None  # RunConfig refuses a guide-needing loss without one
            guide_cfg = ModelConfig(base_model=t_cfg.guide_model, max_seq_length=self.config.model.max_seq_length)
            try:
                guide = load_model(guide_cfg, device)
            except EmbedftError as exc:
                raise ModelError(exc.message, field="training.guide_model", expected=exc.expected, found=t_cfg.guide_model) from None
        loss = spec.build(model, guide=guide, **(t_cfg.loss_kwargs if kwargs is None else kwargs))
        if t_cfg.matryoshka_dims:
            from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

            loss = MatryoshkaLoss(model, loss, t_cfg.matryoshka_dims)
        return loss


# ---------------------------------------------------------------------- helpers
@dataclass
class _SeedRun:
    """One seed's training: its model, its reports and what the first seed measured for all (base model, mining)."""

    seed: int
    built: BuiltDataset
    model: Any
    trained: Any
    before: EvalReport | None = None
    base_scores: dict[str, Any] = field(default_factory=dict)
    base_by_dim: dict[int, EvalReport] = field(default_factory=dict)
    mining: Any = None
    frozen_cache: dict[str, float] | None = None
    budget: BudgetPlan | None = None
    monitor: Any = None
    after: EvalReport = field(init=False)  # set once the seed has trained
    after_scores: dict[str, Any] = field(default_factory=dict)
    matryoshka: list[MatryoshkaRow] = field(default_factory=list)
    loss_name: str = ""
    train_pairs: int = 0
    train_loss: float = math.nan
    steps: int = 0
    seconds: float = 0.0
    epochs: float = 0.0


class _PrefixEncoder:
    """``model.encode`` for Matryoshka evaluation: each list of texts is encoded once at full size,
    and every dimension is served from memory by truncating (then normalising, as
    sentence-transformers does with ``truncate_dim``)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.truncate_dim: int | None = None
        self._memo: dict[tuple[str, ...], Any] = {}

    def encode(self, sentences: list[str], batch_size: int = 32, normalize_embeddings: bool = False, show_progress_bar: bool = False, **_: Any) -> Any:
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
    raise ConfigError(
        "loss must be a registered loss name, a torch loss module or a factory model -> loss",
        field="loss",
        expected="a str, a torch.nn.Module or a callable",
        found=f"{type(loss).__name__} {_capped_repr(loss)}",
    )


def _check_evaluator_argument(evaluator: Any) -> Any:
    """``Trainer(evaluator=...)``: a sentence-transformers ``SentenceEvaluator`` (or any callable ``model -> metrics``)."""
    if evaluator is None or (callable(evaluator) and not isinstance(evaluator, type)):
        return evaluator
    what = f"the class {evaluator.__name__}" if isinstance(evaluator, type) else f"{type(evaluator).__name__} {_capped_repr(evaluator)}"
    raise ConfigError("evaluator must be a sentence-transformers evaluator object", field="evaluator", expected="a SentenceEvaluator instance or a callable model -> metrics", found=what)


def _capped_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _loss_module(loss: Any, model: Any, cached: bool = False) -> Any:
    """A loss module for ``model`` from a module or a factory ``model -> loss`` (``cached``: ``model`` is the head on cached embeddings)."""
    import torch

    if isinstance(loss, torch.nn.Module):
        return loss
    try:
        built = loss(model)
    except (ValueError, AttributeError) as exc:  # e.g. GISTEmbedLoss wants the backbone's tokenizer
        if not cached:
            raise
        raise ConfigError(
            "the loss factory needs the backbone, which a frozen backbone's cached embeddings replace",
            field="training.loss",
            expected="a loss on embeddings, or training.cache_frozen_embeddings: false",
            found=" ".join(str(exc).split())[:160],
        ) from None
    if not isinstance(built, torch.nn.Module):
        raise ConfigError("the loss factory did not return a torch loss module", field="loss", expected="a factory model -> torch.nn.Module", found=type(built).__name__)
    return built


@contextlib.contextmanager
def _non_finite_loss_guard(loss: Any, learning_rate: float, loss_kwargs: dict[str, Any] | None) -> Iterator[None]:
    """Raise :class:`TrainingError` at the first step whose loss is NaN or infinite, before its backward pass."""
    import torch

    step = 0

    def check(module: Any, args: Any, output: Any) -> None:
        nonlocal step
        step += 1
        for value in output.values() if isinstance(output, dict) else [output]:
            if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value.detach()).all()):
                raise TrainingError.non_finite_loss(float(value.detach().float().sum()), step, learning_rate, loss_kwargs)

    handles = [module.register_forward_hook(check) for module in (loss.values() if isinstance(loss, dict) else [loss])]
    try:
        yield
    finally:
        for handle in handles:
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
    except Exception:
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


def _planned_steps(t_cfg: TrainingConfig, train_rows: int | list[int]) -> int:
    return t_cfg.max_steps or math.ceil(_steps_per_epoch(t_cfg, train_rows) * t_cfg.epochs)


def _steps_per_epoch(t_cfg: TrainingConfig, train_rows: int | list[int]) -> int:
    """Batches in one epoch: over several datasets (multi-task), all of each (proportional) or
    as many of each as the smallest has (round robin), as sentence-transformers' samplers draw them."""
    batches = [max(1, math.ceil(n / t_cfg.batch_size)) for n in ([train_rows] if isinstance(train_rows, int) else train_rows)]
    return min(batches) * len(batches) if t_cfg.multi_dataset_batch_sampler == "round_robin" else sum(batches)


def _time_dev_evaluation(model: Any, built: BuiltDataset, task: Any, batch_size: int, sample: int = 512) -> float:
    """Seconds a dev evaluation should take: ``sample`` of its texts encoded and timed, scaled to all of them
    (and the corpus, which retrieval encodes too)."""
    texts = [str(t) for c in task.text_columns if c in built.dev.columns for t in built.dev[c]]
    total = len(texts) + (0 if built.corpus is None else len(built.corpus))
    if not texts:
        return 0.0
    step = max(1, len(texts) // sample)
    chosen = texts[::step][:sample]
    t0 = time.perf_counter()
    model.encode(chosen, batch_size=batch_size, show_progress_bar=False)
    return (time.perf_counter() - t0) * total / len(chosen)


def _loadable(model_cfg: ModelConfig) -> ModelConfig:
    """The model config ``load_model`` reads: ``max_seq_length: auto`` is the model's own until the data sizes it."""
    return model_cfg.model_copy(update={"max_seq_length": None}) if model_cfg.max_seq_length == "auto" else model_cfg


def _size_to_data(model: Any, built: BuiltDataset, task: Any, cfg: RunConfig) -> RunConfig:
    """``model.max_seq_length: auto``: the token length of the 99.9th-percentile training text, rounded up
    to a multiple of 8 and at most the model's own limit; set on ``model`` and returned in the config."""
    import numpy as np

    texts = [str(t) for c in (*task.text_columns, "negative") if c in built.train.columns for t in built.train[c].dropna()]
    limit = int(model.max_seq_length or 512)
    length = limit
    if texts:
        ids = model.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=limit)["input_ids"]
        length = min(limit, max(8, 8 * math.ceil(float(np.percentile([len(x) for x in ids], 99.9)) / 8)))
    model.max_seq_length = length
    logger.info("model.max_seq_length: auto -> %d tokens (99.9th percentile of %d training texts, model limit %d)", length, len(texts), limit)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"max_seq_length": length})})


def _train_datasets(built: BuiltDataset, specs: list[Any], t_cfg: TrainingConfig, seed: int) -> Any:
    """The training split in the format of each loss: one dataset, or a dict of one per loss (multi-task)."""
    sets = {spec.name: built.dataset("train", loss=spec.name, hard_negatives=t_cfg.hard_negatives and spec.uses_hard_negatives, seed=seed) for spec in specs}
    return sets[specs[0].name] if len(specs) == 1 else sets


def _rows(train_ds: Any) -> list[int]:
    """The rows of each training dataset (one, or one per loss in multi-task training)."""
    return [len(d) for d in train_ds.values()] if isinstance(train_ds, dict) else [len(train_ds)]


def _fill_cache(trained: Any, built: BuiltDataset, task: Any) -> dict[str, float]:
    """Every text of the splits and the corpus into the cached model's table, before anything encodes.

    The training split's texts come first, in one cache look-up on the new table: its counts (and time)
    are what ``TrainResult.frozen_cache`` reports. The rest are added with the prompt ``encode`` uses.
    """

    def texts(frame: Any) -> list[str]:
        return [t for c in (*task.text_columns, "negative") if frame is not None and c in frame.columns for t in frame[c].dropna()]

    stand_in, t0 = trained[0], time.perf_counter()
    found = stand_in.add(texts(built.train))
    seconds = time.perf_counter() - t0
    prompt = trained.prompts.get(trained.default_prompt_name) if trained.default_prompt_name else None
    stand_in.add([*texts(built.train), *texts(built.dev), *texts(built.test), *([] if built.corpus is None else built.corpus["text"])], prompt)
    logger.info("frozen backbone: %d training texts from the cache, %d encoded (%.1fs)", found.hits, found.computed, seconds)
    return {"hits": float(found.hits), "computed": float(found.computed), "embed_seconds": seconds}


def _make_monitor(evaluator: Any, task: Any, hooks: list[EvaluateHook], patience: int | None, bar: Any, model: Any) -> Any:
    import torch
    from transformers import TrainerCallback

    name = f"{evaluator.name}_" if getattr(evaluator, "name", "") else ""

    class DevMonitor(TrainerCallback):
        """Collects dev scores, keeps the weights of the best one, runs the evaluate hooks and early stopping,
        reports steps, loss and dev score to ``bar``.

        The best weights are a CPU copy of ``model``'s trainable parameters, taken at each dev improvement
        (no checkpoint on disk); :meth:`restore_best` puts them back when a later evaluation was worse.
        """

        def __init__(self) -> None:
            self.history: list[tuple[int, float]] = []
            self.best: float | None = None
            self.best_step: int | None = None
            self.best_weights: dict[str, Any] = {}
            self.bad_evals = 0
            self.stopped_early = False
            self.shown: dict[str, str] = {}

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            bar.update(1)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            logger.debug("step %d: %s", state.global_step, logs)
            loss = (logs or {}).get("loss")
            if isinstance(loss, (int, float)):
                self.shown["loss"] = f"{loss:.4g}"
                bar.update(0, **self.shown)

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
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
                self.best, self.best_step, self.bad_evals = score, step, 0
                self.best_weights = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
                return False
            self.bad_evals += 1
            if patience is not None and self.bad_evals >= patience:
                logger.info("early stopping at step %d: no dev improvement in %d evaluations", step, patience)
                self.stopped_early = True
            return self.stopped_early

        def restore_best(self) -> None:
            """Put back the weights of the best dev evaluation when the last one was not it (then drop the copy)."""
            weights, self.best_weights = self.best_weights, {}
            if self.best_step is None or self.history[-1][0] == self.best_step:
                return
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in weights:
                        p.copy_(weights[n])
            logger.info("restored the weights of step %d (dev %s=%.4f); the last evaluation, step %d, scored %.4f", self.best_step, task.primary_metric, self.best, *self.history[-1])

    return DevMonitor()


def _make_st_trainer(
    model: Any,
    train_ds: Any,
    loss: Any,
    evaluator: Any,
    t_cfg: TrainingConfig,
    scratch: Path,
    precision: dict[str, Any],
    device: str,
    in_batch_negatives: bool,
    callbacks: list[Any],
    *,
    data_seed: int = 0,
) -> Any:
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from embedft.sampling import batch_sampler

    total = _planned_steps(t_cfg, _rows(train_ds))
    eval_steps = t_cfg.eval_steps or _steps_per_epoch(t_cfg, _rows(train_ds))
    growth = None if t_cfg.data_growth is None else (t_cfg.data_growth.first_step, t_cfg.data_growth.factor, t_cfg.epochs, t_cfg.max_steps, data_seed)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(scratch),
        num_train_epochs=t_cfg.epochs,
        max_steps=t_cfg.max_steps or -1,
        seed=t_cfg.seed,
        data_seed=t_cfg.seed,
        per_device_train_batch_size=t_cfg.batch_size,
        per_device_eval_batch_size=t_cfg.eval_batch_size,
        learning_rate=t_cfg.learning_rate,
        lr_scheduler_type=t_cfg.scheduler,
        weight_decay=t_cfg.weight_decay,
        warmup_steps=t_cfg.warmup_ratio,  # a float is a ratio in transformers>=5
        eval_strategy="steps" if evaluator is not None else "no",
        eval_steps=min(eval_steps, total),
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, min(50, total // 5 or 1)),
        logging_nan_inf_filter=False,  # a NaN loss must surface, not be averaged away
        disable_tqdm=True,  # steps go to the reporter (the monitor); the console is the CLI's
        use_cpu=device == "cpu",
        dataloader_pin_memory=device == "cuda",
        batch_sampler=batch_sampler(group_by_length=t_cfg.group_by_length, no_duplicates=in_batch_negatives, tokenizer=getattr(model, "tokenizer", None), growth=growth),
        multi_dataset_batch_sampler=t_cfg.multi_dataset_batch_sampler,
        **precision,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_ds, loss=loss, evaluator=evaluator, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # no log dicts on stdout: the monitor logs them
    return trainer
