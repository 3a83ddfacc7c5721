"""The search's plots (PNG): optimisation history, intermediate values, parameter importances, learning curve.

Drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas; nothing global of matplotlib
(the pyplot backend, open figures) is touched, and matplotlib is imported only when plots are drawn.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

from embedft.files import replacing

__all__ = ["draw_plots"]

logger = logging.getLogger(__name__)


def draw_plots(study, output_dir: Path, metric: str, learning_curve: bool = False) -> list[Path]:
    """Draw the plots of a study into ``OUTPUT_DIR/plots``; a plot that fails is logged and skipped.

    ``metric`` labels the value axis; ``learning_curve`` adds dev ``metric`` against
    ``data.max_train_pairs`` (when that is searched).
    """
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    plots: dict[str, Callable] = {"optimization_history": _history, "intermediate_values": _intermediate}
    varying = {k for t in complete for k in t.params if len({json.dumps(x.params.get(k)) for x in complete}) > 1}
    if len(complete) >= 2 and varying:
        plots["param_importances"] = _importances
    if learning_curve:
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
            path = output_dir / "plots" / f"{name}.png"
            with replacing(path, suffix=path.suffix) as tmp:  # a file hard-linked elsewhere is never rewritten
                fig.savefig(tmp, dpi=100, bbox_inches="tight")
            out.append(path)
        except Exception as exc:  # a plot is never worth failing a finished search
            logger.warning("could not draw %s: %s", name, exc)
    return out


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    fig.add_subplot()
    return fig


def _history(ax, study, complete, label: str) -> None:
    numbers, values = [t.number for t in complete], [t.value for t in complete]
    pick = max if study.direction.name == "MAXIMIZE" else min
    best = [pick(values[: i + 1]) for i in range(len(values))]
    ax.plot(numbers, values, "o", label="trial")
    ax.step(numbers, best, where="post", label="best so far")
    ax.set(xlabel="trial", ylabel=label, title="optimisation history")
    ax.legend()


def _intermediate(ax, study, complete, label: str) -> None:
    for t in study.get_trials(deepcopy=False):
        if t.intermediate_values:
            steps = sorted(t.intermediate_values)
            ax.plot(steps, [t.intermediate_values[s] for s in steps], marker=".", label=f"#{t.number} {t.state.name.lower()}")
    ax.set(xlabel="step", ylabel=label, title="intermediate values")


def _importances(ax, study, complete, label: str) -> None:
    import optuna

    importances = optuna.importance.get_param_importances(study)
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set(xlabel=f"importance for {label}", title="parameter importances")


def _learning_curve(ax, study, complete, label: str) -> bool:
    pts = sorted((t.params["data.max_train_pairs"], t.value) for t in complete if t.params.get("data.max_train_pairs") is not None)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o")
    ax.set(xlabel="training pairs", ylabel=label, title="learning curve")
    return bool(pts)
