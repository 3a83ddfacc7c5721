"""The learning curve: the same run trained on growing, nested subsets of its training split.

Would more labelled data help? :func:`learning_curve` builds the splits once, cuts the training
split into nested subsets (every smaller subset lies inside the larger ones; whole groups of linked
texts are taken in a seeded order), and trains one trial per size
through the search machinery (:mod:`embedft.executors`, :func:`embedft.trial.run_trial`). Every
size is scored on the same dev and test splits, with bootstrap intervals. The last step (the two
largest sizes) is compared by a paired bootstrap on test; :attr:`CurveResult.trend` reads it:

- ``rising``: the whole interval of the last step's gain lies above 0; more data of this kind is
  likely to help;
- ``flat``: the whole interval lies below ``min_gain`` per doubling of the data; more data of this
  kind is unlikely to help much;
- ``cannot tell``: the interval holds both (a larger test split, or more sizes, would tell).

The folder gets ``curve.csv``, ``curve.json`` and ``curve.png``; it is an embedft run folder,
replaced only with ``overwrite``::

    >>> parse_sizes("1000,2000,all")
    [1000, 2000, 'all']
    >>> judge_step(0.010, (0.004, 0.016), ratio=2.0, min_gain=0.005)[0]
    'rising'
    >>> judge_step(0.001, (-0.003, 0.004), ratio=2.0, min_gain=0.005)[0]
    'flat'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from pydantic import BaseModel, ConfigDict

from embedft.config import ModalConfig, RunConfig, load_config
from embedft.errors import ConfigError
from embedft.files import atomic_write_text, check_output_dir, new_scratch, remove_owned, replace_dir, replacing
from embedft.tasks import get_task

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

    from embedft.data import BuiltDataset
    from embedft.executors import Executor
    from embedft.trial import TrialResult

__all__ = ["DEFAULT_SIZES", "CurvePoint", "CurveResult", "Trend", "learning_curve", "parse_sizes", "nested_subsets", "judge_step"]

logger = logging.getLogger(__name__)

Trend = Literal["rising", "flat", "cannot tell"]

DEFAULT_SIZES: tuple[int | str, ...] = (1000, 2000, 4000, 8000, "all")
"""The sizes ``embedft curve`` trains when none are given; sizes at or above the training split's size collapse into ``all``."""


class CurvePoint(BaseModel):
    """One size of the curve: the primary metric on dev and test (with the test interval), or why it failed.

    ``size`` is what was asked (a number of training rows, ``all``, or ``base`` for the base model,
    which trains on nothing); ``train_pairs`` is the rows it trained on.
    """

    model_config = ConfigDict(ser_json_inf_nan="strings")

    size: int | str
    train_pairs: int
    state: Literal["complete", "pruned", "fail"] = "complete"
    dev: float | None = None
    test: float | None = None
    test_interval: tuple[float, float] | None = None
    train_seconds: float = 0.0
    error: str | None = None


class CurveResult(BaseModel):
    """What :func:`learning_curve` measured: one :class:`CurvePoint` per size, the last step and its reading.

    ``gain`` is the last step's change of the primary metric on test (larger size minus smaller),
    ``gain_interval`` its paired bootstrap interval; :attr:`message` is the one-line reading.
    """

    model_config = ConfigDict(ser_json_inf_nan="strings")

    task: str
    metric: str
    greater_is_better: bool = True
    confidence: float
    base: CurvePoint | None = None
    points: list[CurvePoint]
    step: tuple[int, int] | None = None  # (smaller, larger) training rows of the last step judged
    gain: float | None = None
    gain_interval: tuple[float, float] | None = None
    min_gain: float  # the smallest gain per doubling that counts
    trend: Trend
    reason: str
    output_dir: Path
    plot_path: Path | None = None  # None when the plot could not be drawn
    csv_path: Path | None = None
    json_path: Path | None = None

    @property
    def message(self) -> str:
        """One line: whether the curve still rises at its largest size, and the numbers behind it."""
        return f"{self.trend}: {self.reason}"

    def summary(self) -> str:
        """A table of the sizes (test metric with its interval, dev metric, train time), then the reading."""
        from embedft.results import format_table

        rows = []
        for p in ([self.base] if self.base is not None else []) + self.points:
            test = "-" if p.test is None else f"{p.test:.4f}" + (f" [{p.test_interval[0]:.3f}, {p.test_interval[1]:.3f}]" if p.test_interval else "")
            state = "" if p.state == "complete" else f" ({p.state})"
            rows.append([f"{p.size}{state}", str(p.train_pairs), test, "-" if p.dev is None else f"{p.dev:.4f}", f"{p.train_seconds:.1f}"])
        header = ["size", "train rows", f"test {self.metric} ({self.confidence:.0%} interval)", f"dev {self.metric}", "train s"]
        return "\n".join([*format_table(header, rows), f"learning curve: {self.message}"])


def parse_sizes(sizes: str | Sequence[int | str] | None) -> list[int | str]:
    """Training-set sizes from ``"1000,2000,all"`` or a list: distinct whole numbers > 0 (ascending), ``all`` last.

    ``None`` gives :data:`DEFAULT_SIZES`. Anything else is a :class:`ConfigError` naming ``sizes``.
    """
    if sizes is None:
        return list(DEFAULT_SIZES)
    items = [s.strip() for s in sizes.split(",")] if isinstance(sizes, str) else list(sizes)
    numbers: set[int] = set()
    wants_all = False
    for item in items:
        if isinstance(item, str) and item.lower() == "all":
            wants_all = True
            continue
        try:
            value = int(item) if not isinstance(item, bool) and (isinstance(item, int) or str(item).strip().isdigit()) else None
        except (TypeError, ValueError):
            value = None
        if value is None or value <= 0:
            raise ConfigError("a training-set size is a whole number > 0 or 'all'", field="sizes", expected="e.g. 1000,2000,4000,all", found=repr(item))
        numbers.add(value)
    if not numbers and not wants_all:
        raise ConfigError("no training-set size given", field="sizes", expected="e.g. 1000,2000,4000,all", found=repr(sizes))
    return [*sorted(numbers), *(["all"] if wants_all else [])]


def nested_order(train: pd.DataFrame, task: str, seed: int) -> np.ndarray:
    """The order rows join the growing subsets: whole groups (``component``) in a seeded order, rows in file order within a group."""
    import numpy as np

    groups = train["component"].to_numpy()
    unique = np.unique(groups)
    rank = dict(zip(unique.tolist(), np.random.default_rng(seed).permutation(len(unique)).tolist(), strict=True))
    return np.lexsort((np.arange(len(train)), np.array([rank[g] for g in groups.tolist()], dtype=np.int64)))


def nested_subsets(built: BuiltDataset, sizes: Sequence[int], seed: int = 0) -> dict[int, BuiltDataset]:
    """Per size, the dataset with train cut to that many rows: nested and grouped; dev and test unchanged.

    Rows are taken in :func:`nested_order`: whole groups of linked texts in a seeded order (only
    the last group taken may be cut), so a smaller subset always lies inside a larger one and the
    label balance is that of a random set of groups. A size at or above the training split's size
    gives the whole split.
    """
    import numpy as np

    from embedft.data.built import split_stats

    spec = get_task(built.task)
    order = nested_order(built.train, built.task, seed)
    out = {}
    for size in sizes:
        if size >= len(built.train):
            out[size] = built
            continue
        train = built.train.iloc[np.sort(order[:size])].reset_index(drop=True)
        report = built.report.model_copy(update={"splits": {**built.report.splits, "train": split_stats(train, spec)}, "max_train_pairs": size})
        out[size] = replace(built, train=train, report=report)
    return out


def judge_step(gain: float, interval: tuple[float, float], *, ratio: float, min_gain: float) -> tuple[Trend, str]:
    """Read the last step: ``gain`` (oriented so that larger is better) and its interval, over a step that multiplied the data by ``ratio``.

    ``min_gain`` is the smallest gain per doubling of the data worth labelling for; a step of
    ``ratio`` is held to ``min_gain * log2(ratio)``.
    """
    low, high = interval
    if not (math.isfinite(low) and math.isfinite(high)):
        return "cannot tell", "the last step has no interval (training.bootstrap.resamples is 0, or the metric is undefined)"
    worth = min_gain * math.log2(ratio) if ratio > 1 else 0.0
    shown = f"{gain:+.4f} (interval {low:+.4f} to {high:+.4f})"
    if high < worth:
        return "flat", f"the last step gained {shown}, below {worth:.4f} ({min_gain:g} per doubling); more labelled data of this kind is unlikely to help much"
    if low > 0:
        return "rising", f"the last step gained {shown}, all of it above 0; more labelled data is likely to help"
    return "cannot tell", f"the last step gained {shown}: the interval holds both no gain and {worth:.4f} ({min_gain:g} per doubling); a larger test split or more sizes would tell"


def learning_curve(
    config: RunConfig | str | Path,
    sizes: str | Sequence[int | str] | None = None,
    *,
    output_dir: str | Path | None = None,
    overwrite: bool = False,
    executor: Executor | Literal["inprocess", "process", "modal"] = "inprocess",
    workers: int = 1,
    modal: ModalConfig | None = None,
    min_gain: float = 0.005,
    keep_models: bool = False,
    on_point: Callable[[CurvePoint], None] | None = None,
) -> CurveResult:
    """Train ``config`` on growing nested subsets of its training split and say whether the curve still rises.

    Args:
        config: a run config (or its file); its ``data.max_train_pairs`` is ignored (the sizes set it).
        sizes: training-set sizes (``"1000,2000,all"`` or a list); default :data:`DEFAULT_SIZES`.
        output_dir: the curve's folder (default: the config's ``output_dir`` + ``-curve``); new, empty,
            or an earlier embedft run or curve (replaced only with ``overwrite``).
        executor: where trials run: ``inprocess``, ``process`` (``workers`` processes), ``modal``
            (``modal`` settings), or an :class:`~embedft.executors.Executor`.
        min_gain: the smallest test gain per doubling of the data that counts (for ``flat``).
        keep_models: keep each size's trial folder (``trials/NNNN``) with its model.
        on_point: called with each size's :class:`CurvePoint` as it ends.

    The base model is scored too (with the smallest size's trial). Sizes that fail are recorded with
    their error; the last step is the two largest sizes that completed.
    """
    from embedft.data import DatasetBuilder
    from embedft.executors import is_executor, make_executor
    from embedft.search import SearchConfig

    run = load_config(config) if isinstance(config, (str, Path)) else config
    if not isinstance(run, RunConfig):
        raise ConfigError("the curve needs a run config", field="config", expected="a RunConfig or a config file", found=type(run).__name__)
    if isinstance(min_gain, bool) or not isinstance(min_gain, (int, float)) or not 0 <= min_gain < 1:
        raise ConfigError("min_gain is a gain of the primary metric per doubling", field="min_gain", expected="a number in [0, 1)", found=repr(min_gain))
    wanted = parse_sizes(sizes)
    if getattr(run.training, "time_budget_minutes", None) is not None:  # it would cut the rows a size asks for
        raise ConfigError(
            "a learning curve trains every size on all of its rows; a time budget would cut them",
            field="training.time_budget_minutes",
            expected="null for a curve (use smaller sizes to spend less time)",
            found=run.training.time_budget_minutes,
        )
    task = get_task(run.task)
    out = Path(output_dir if output_dir is not None else f"{run.output_dir}-curve").expanduser()
    search_cfg = None if is_executor(executor) else SearchConfig(base=run, executor=executor, workers=workers, modal=modal or ModalConfig(), output_dir=str(out), study_name="curve")  # type: ignore[arg-type]
    from embedft.training import Trainer

    check_output_dir(out, kind="curve", overwrite=overwrite, inputs=Trainer(run).inputs())
    if run.data.max_train_pairs is not None:
        logger.info("the curve sets the training size itself: data.max_train_pairs=%d is ignored", run.data.max_train_pairs)
    full = DatasetBuilder(run.data.model_copy(update={"max_train_pairs": None}), task=task.name).build()
    n_train = len(full.train)
    counts = sorted({min(s, n_train) if isinstance(s, int) else n_train for s in wanted})
    dropped = [s for s in wanted if isinstance(s, int) and s >= n_train]
    if dropped:
        logger.info("sizes %s are not below the %d training rows: trained once as all", dropped, n_train)
    tmp = new_scratch(out)
    try:
        result = _run_curve(
            run, full, counts, tmp, out, cast("Executor", executor) if search_cfg is None else make_executor(search_cfg.model_copy(update={"output_dir": str(tmp)})), min_gain, keep_models, on_point
        )
        replace_dir(tmp, out, kind="curve", overwrite=True)  # checked above; the earlier curve goes only now
    finally:
        remove_owned(tmp)
    logger.info("learning curve: %s", result.message)
    return result


def _run_curve(
    run: RunConfig, full: BuiltDataset, counts: list[int], tmp: Path, out: Path, executor: Executor, min_gain: float, keep_models: bool, on_point: Callable[[CurvePoint], None] | None
) -> CurveResult:
    task = get_task(run.task)
    subsets = nested_subsets(full, counts, run.data.seed)
    key = hashlib.sha256(f"{full.report.fingerprint}:{counts}:{run.data.seed}".encode()).hexdigest()[:12]
    data_root = tmp / "data" / f"curve-{key}"  # one folder of splits per size, reached by every executor as one upload
    for n, built in subsets.items():
        built.save(data_root / str(n))
    full.save(tmp / "data" / "full")  # what the splits were cut from (dev and test are the same for every size)
    if getattr(executor, "trials_dir", "") is None:
        executor.trials_dir = tmp / "trials"
    executor.start(data_root, [run.model.base_model])
    size_of = {i: n for i, n in enumerate(counts)}
    results: dict[int, TrialResult] = {}
    try:
        for number, n in size_of.items():
            trial_run = run.model_copy(update={"data": run.data.model_copy(update={"max_train_pairs": n})})
            config = executor.trial(number, {"data.max_train_pairs": n}, trial_run, baseline=number == 0, evaluate_test=True)
            executor.submit(config.model_copy(update={"data_dir": f"{config.data_dir}/{n}"}))
        while len(results) < len(size_of):
            for r in executor.wait(lambda *_: False, timeout=5.0):
                results[r.number] = r
                if on_point is not None:
                    on_point(_point(r, size_of[r.number], len(full.train), task.primary_metric))
    finally:
        executor.close()
    base, points = _base_point(results.get(0), task.primary_metric), [_point(results[i], n, len(full.train), task.primary_metric) for i, n in size_of.items()]
    done = [i for i in size_of if results[i].state == "complete"]
    b = run.training.bootstrap
    step, gain, interval, trend, reason = None, None, None, "cannot tell", ""
    if len(done) < 2:
        reason = f"{len(done)} size(s) completed; a curve needs two" + ("" if done and done[-1] == len(counts) - 1 else " (the largest size failed)")
    else:
        small, large = done[-2], done[-1]
        step = (size_of[small], size_of[large])
        gain, interval = _last_step(run, executor, results[small], results[large], tmp, b.resamples, b.confidence, b.seed)
        sign = 1 if task.greater_is_better else -1
        trend, reason = judge_step(sign * gain, (min(sign * interval[0], sign * interval[1]), max(sign * interval[0], sign * interval[1])), ratio=step[1] / step[0], min_gain=min_gain)
        reason = f"{step[0]} -> {step[1]} training rows, test {task.primary_metric}: {reason}"
        if large != len(counts) - 1:
            reason += f" (the largest size, {size_of[len(counts) - 1]}, failed)"
    if not keep_models:
        executor.remove_trials(size_of)
        with contextlib.suppress(OSError):  # left empty (a local executor's trials folder)
            (tmp / "trials").rmdir()
    result = CurveResult(
        task=task.name,
        metric=task.primary_metric,
        greater_is_better=task.greater_is_better,
        confidence=b.confidence,
        base=base,
        points=points,
        step=step,
        gain=gain,
        gain_interval=interval,
        min_gain=min_gain,
        trend=trend,  # type: ignore[arg-type]
        reason=reason,
        output_dir=out,
    )
    return _write(result, tmp, out)


def _point(r: TrialResult, n: int, n_train: int, metric: str) -> CurvePoint:
    size: int | str = "all" if n >= n_train else n
    if r.state != "complete" or not r.train_result:
        return CurvePoint(size=size, train_pairs=n, state=r.state, error=(r.error or "")[:2000] or None, train_seconds=r.train_seconds)
    after = r.train_result["after"]
    interval = after.get("intervals", {}).get("test", {}).get(metric)
    return CurvePoint(size=size, train_pairs=n, dev=after["dev"].get(metric), test=after["test"].get(metric), test_interval=tuple(interval) if interval else None, train_seconds=r.train_seconds)


def _base_point(r: TrialResult | None, metric: str) -> CurvePoint | None:
    before = (r.train_result or {}).get("before") if r is not None else None
    if not before:
        return None
    interval = before.get("intervals", {}).get("test", {}).get(metric)
    return CurvePoint(size="base", train_pairs=0, dev=before["dev"].get(metric), test=before["test"].get(metric), test_interval=tuple(interval) if interval else None)


def _last_step(run: RunConfig, executor: Executor, small: TrialResult, large: TrialResult, tmp: Path, resamples: int, confidence: float, seed: int) -> tuple[float, tuple[float, float]]:
    """The test gain from the smaller to the larger model and its paired bootstrap interval (both models scored on the same resamples)."""
    from embedft.compare import paired_bootstrap
    from embedft.data import BuiltDataset
    from embedft.modeling import load_model, resolve_device

    built = BuiltDataset.load(tmp / "data" / "full")
    task = get_task(run.task)
    device = resolve_device(run.training.device)
    scores, values = [], []
    for r in (small, large):
        path, fetched = Path(r.model_path or ""), None
        if not path.is_dir():  # a remote trial: its folder comes here first, and goes once scored
            fetched = executor.fetch(f"{r.number:04d}", tmp / "models" / f"{r.number:04d}")
            path = fetched / "model"
        model = load_model(run.model.model_copy(update={"base_model": str(path), "dense": None, "freeze_backbone": False}), device)
        metrics = task.evaluate(model, built.dev, built.test, run.training.eval_batch_size, False, built.corpus)
        scores.append(getattr(metrics, "scores", {}).get("test"))
        values.append(metrics["test"][task.primary_metric])
        del model
        if fetched is not None:
            remove_owned(fetched, kinds=("run",))
    with contextlib.suppress(OSError):
        (tmp / "models").rmdir()
    gain = values[1] - values[0]
    if scores[0] is None or scores[1] is None or not resamples:
        return gain, (math.nan, math.nan)
    found = paired_bootstrap({"test": scores[0]}, {"test": scores[1]}, resamples=resamples, confidence=confidence, seed=seed)
    low, high = found.difference["test"].get(task.primary_metric, (math.nan, math.nan))
    return gain, (low, high)


def _write(result: CurveResult, tmp: Path, out: Path) -> CurveResult:
    """``curve.csv``, ``curve.json`` and ``curve.png`` into the scratch folder, with the paths they will have in ``out``."""
    import csv
    import io

    result = result.model_copy(update={"csv_path": out / "curve.csv", "json_path": out / "curve.json"})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["size", "train_pairs", "state", f"test_{result.metric}", "test_low", "test_high", f"dev_{result.metric}", "train_seconds", "error"])
    for p in ([result.base] if result.base is not None else []) + result.points:
        low, high = p.test_interval or (None, None)
        writer.writerow([p.size, p.train_pairs, p.state, _num(p.test), _num(low), _num(high), _num(p.dev), f"{p.train_seconds:.1f}", (p.error or "").splitlines()[0] if p.error else ""])
    atomic_write_text(tmp / "curve.csv", buffer.getvalue())
    try:
        _plot(result, tmp / "curve.png")
        result = result.model_copy(update={"plot_path": out / "curve.png"})
    except Exception as exc:  # noqa: BLE001 - a plot is never worth failing a finished curve
        logger.warning("could not draw the curve: %s: %s", type(exc).__name__, exc)
    atomic_write_text(tmp / "curve.json", json.dumps(json.loads(result.model_dump_json()), indent=2) + "\n")
    return result


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _plot(result: CurveResult, path: Path) -> None:
    """The test metric (with its interval) and the dev metric against training rows, the base model as a dashed line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    done = [(p.train_pairs, p.test, p.test_interval or (p.test, p.test), p.dev) for p in result.points if p.test is not None]
    xs = [x for x, *_ in done]
    if done:
        tests = [t for _, t, _, _ in done]
        yerr = [[t - i[0] for _, t, i, _ in done], [i[1] - t for _, t, i, _ in done]]
        ax.errorbar(xs, tests, yerr=yerr, fmt="o-", capsize=3, label=f"test ({result.confidence:.0%} interval)")
        ax.plot(xs, [math.nan if d is None else d for *_, d in done], "s--", alpha=0.5, label="dev")
    if result.base is not None and result.base.test is not None:
        ax.axhline(result.base.test, color="grey", linestyle="--", label="base model (test)")
    if len(set(xs)) > 1:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:,}" for x in xs])
        ax.minorticks_off()
    ax.set(xlabel="training rows", ylabel=result.metric, title=f"learning curve: {result.trend}")
    ax.legend(fontsize="small")
    with replacing(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
