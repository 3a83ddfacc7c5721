"""The search's plots (PNG): optimisation history, intermediate values, parameter importances, learning curve;
the Pareto front of a search with a second objective.

Drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas; nothing global of matplotlib
(the pyplot backend, open figures) is touched, and matplotlib is imported only when plots are drawn.
"""

from __future__ import annotations

import itertools
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from embedft.files import replacing

if TYPE_CHECKING:  # pragma: no cover
    import optuna
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from optuna.trial import FrozenTrial

__all__ = ["draw_plots"]

logger = logging.getLogger(__name__)


def draw_plots(
    study: optuna.Study,
    output_dir: Path,
    metric: str,
    learning_curve: bool = False,
    reference: float | None = None,
    objectives: list[str] | None = None,
    recommended: int | None = None,
) -> list[Path]:
    """Draw the plots of a study into ``OUTPUT_DIR/plots``; a plot that fails is logged and skipped.

    ``metric`` labels the value axis; ``learning_curve`` adds dev ``metric`` against
    ``data.max_train_pairs`` (when that is searched); ``reference`` (the base model's dev score)
    is a dashed line on the plots of dev values. A two-objective study (``objectives``: the
    names of both) gets ``pareto_front.png`` instead: every complete trial, the front joined, the
    ``recommended`` trial marked.
    """
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    plots: dict[str, Callable] = {"optimization_history": _history, "intermediate_values": _intermediate}
    if objectives and len(objectives) > 1:
        plots = {"pareto_front": lambda ax, study, complete, label: _pareto(ax, study, complete, objectives, recommended)}
    varying = {k for t in complete for k in t.params if len({json.dumps(x.params.get(k)) for x in complete}) > 1}
    if len(complete) >= 2 and varying and len(study.directions) == 1:
        plots["param_importances"] = _importances
    if learning_curve and len(study.directions) == 1:
        plots["learning_curve"] = _learning_curve
    out = []
    (output_dir / "plots").mkdir(exist_ok=True)
    for name, draw in plots.items():
        try:
            fig = _figure()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna's importance evaluators warn on tiny studies
                if draw(fig.axes[0], study, complete, f"dev {metric}") is False:
                    continue
            if reference is not None and name not in ("param_importances", "pareto_front"):
                ax = fig.axes[0]
                ax.axhline(reference, color="grey", linestyle="--", label="base model")
                if len(ax.get_legend_handles_labels()[0]) <= 12:
                    ax.legend(fontsize="small")
            path = output_dir / "plots" / f"{name}.png"
            with replacing(path, suffix=path.suffix) as tmp:  # a file hard-linked elsewhere is never rewritten
                fig.savefig(tmp, dpi=100, bbox_inches="tight")
            out.append(path)
        except Exception as exc:  # noqa: BLE001 - a plot is never worth failing a finished search
            logger.warning("could not draw %s: %s", name, exc)
    return out


def _figure() -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    fig.add_subplot()
    return fig


def _history(ax: Axes, study: optuna.Study, complete: list[FrozenTrial], label: str) -> None:
    trials = [(t.number, t.value) for t in complete if t.value is not None]  # every complete trial has a value
    numbers, values = [n for n, _ in trials], [v for _, v in trials]
    best = list(itertools.accumulate(values, max if study.direction.name == "MAXIMIZE" else min))
    ax.plot(numbers, values, "o", label="trial")
    ax.step(numbers, best, where="post", label="best so far")
    ax.set(xlabel="trial", ylabel=label, title="optimisation history")
    ax.legend()


def _intermediate(ax: Axes, study: optuna.Study, complete: list[FrozenTrial], label: str) -> None:
    for t in study.get_trials(deepcopy=False):
        if t.intermediate_values:
            steps = sorted(t.intermediate_values)
            ax.plot(steps, [t.intermediate_values[s] for s in steps], marker=".", label=f"#{t.number} {t.state.name.lower()}")
    ax.set(xlabel="step", ylabel=label, title="intermediate values")


def _importances(ax: Axes, study: optuna.Study, complete: list[FrozenTrial], label: str) -> None:
    import optuna

    importances = optuna.importance.get_param_importances(study)
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set(xlabel=f"importance for {label}", title="parameter importances")


def _learning_curve(ax: Axes, study: optuna.Study, complete: list[FrozenTrial], label: str) -> bool:
    pts = sorted((t.params["data.max_train_pairs"], t.value) for t in complete if t.params.get("data.max_train_pairs") is not None and t.value is not None)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o")
    ax.set(xlabel="training pairs", ylabel=label, title="learning curve")
    return bool(pts)


def _pareto(ax: Axes, study: optuna.Study, complete: list[FrozenTrial], names: list[str], recommended: int | None) -> None:
    from embedft.search.study import pareto_front

    front = sorted(pareto_front(study), key=lambda t: t.values[1])
    ax.plot([t.values[1] for t in complete], [t.values[0] for t in complete], "o", color="lightgrey", label="trial")
    ax.plot([t.values[1] for t in front], [t.values[0] for t in front], "o-", label="Pareto front")
    for t in front:
        ax.annotate(f"#{t.number}", (t.values[1], t.values[0]), fontsize="small", textcoords="offset points", xytext=(4, 4))
    chosen = [t for t in front if t.number == recommended]
    if chosen:
        ax.plot([chosen[0].values[1]], [chosen[0].values[0]], "*", markersize=14, label=f"recommended #{recommended}")
    ax.set(xlabel=names[1], ylabel=names[0], title="quality vs size: Pareto front")
    ax.legend(fontsize="small")
