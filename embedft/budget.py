"""A time budget for one run (``training.time_budget_minutes``, ``embedft train --time-budget``).

The clock starts when ``Trainer.fit`` starts. Before training, the trainer runs a few
calibration steps of the real training (same model, loss, batches; the weights are put back
after) and measures the time per step; :func:`plan_budget` then chooses the data size and the
epochs that fit in what is left of the budget, keeping time for the dev evaluations during
training. More distinct data beats more passes, so the plan first keeps every training pair
and shortens the epochs, and only caps the pairs when one pass does not fit. The plan is
reported before training (the CLI prints it) and recorded in the result (``metrics.json``).
While training, :func:`budget_callback` shows the elapsed and remaining time in the progress
bar and stops training at the end of the budget; the final evaluation comes after it.

    >>> plan = plan_budget(budget_seconds=600, spent_seconds=60, seconds_per_step=0.5, measured_steps=8,
    ...                    rows=[20_000], batch_size=32, epochs=2, dev_eval_seconds=20)
    >>> plan.train_fraction, plan.epochs, plan.steps
    (1.0, 1.4, 875)
    >>> print(plan.summary())
    time budget 10.0 min: 0.50 s/step measured on 8 steps; plan 20,000 of 20,000 pairs x 1.4 epoch(s) = 875 steps, about 7.3 min of training + 0.7 min of dev evaluation (1.0 min spent before training)
"""

from __future__ import annotations

import math
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["BudgetPlan", "plan_budget", "budget_callback", "CALIBRATION_STEPS", "clock"]

CALIBRATION_STEPS = 6
"""Training steps timed before the plan is made (after one untimed step that warms up)."""

SAFETY = 0.95
"""The share of the remaining budget the plan fills; the rest absorbs a slower step or evaluation."""


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


class BudgetPlan(BaseModel):
    """What a time budget chose: data size, epochs and the time it expects them to take."""

    model_config = ConfigDict(extra="forbid")

    budget_seconds: float
    spent_seconds: float  # before training: data, baseline evaluation, calibration
    seconds_per_step: float
    measured_steps: int
    pairs_available: int  # training rows over all the run's datasets
    pairs: int  # rows the plan trains on
    train_fraction: float  # pairs / pairs_available (the split is capped to this share when < 1)
    epochs: float
    steps: int
    dev_evaluations: int
    estimated_training_seconds: float
    estimated_eval_seconds: float
    stopped_by_budget: bool = False  # set after training: the budget's end stopped it
    training_seconds: float | None = None  # set after training: how long it took

    def summary(self) -> str:
        """The plan in one line (what the CLI prints before training)."""
        return (
            f"time budget {_minutes(self.budget_seconds)}: {self.seconds_per_step:.2f} s/step measured on {self.measured_steps} steps; "
            f"plan {self.pairs:,} of {self.pairs_available:,} pairs x {self.epochs:g} epoch(s) = {self.steps:,} steps, "
            f"about {_minutes(self.estimated_training_seconds)} of training + {_minutes(self.estimated_eval_seconds)} of dev evaluation "
            f"({_minutes(self.spent_seconds)} spent before training)"
        )


def _epoch_steps(rows: list[int], batch_size: int, round_robin: bool) -> int:
    batches = [max(1, math.ceil(n / batch_size)) for n in rows]
    return min(batches) * len(batches) if round_robin else sum(batches)


def plan_budget(
    *,
    budget_seconds: float,
    spent_seconds: float,
    seconds_per_step: float,
    measured_steps: int,
    rows: list[int],
    batch_size: int,
    epochs: float,
    dev_eval_seconds: float,
    round_robin: bool = False,
    max_steps: int | None = None,
) -> BudgetPlan:
    """The data size and epochs that fit in ``budget_seconds - spent_seconds`` (a pure function).

    ``rows`` are the training rows of each of the run's datasets (one per loss), ``epochs`` the
    configured epochs (the plan never trains longer than the config asks). A dev evaluation
    (``dev_eval_seconds``) runs once per epoch. At least one step is planned.
    """
    left = max(0.0, (budget_seconds - spent_seconds) * SAFETY)
    per_epoch = _epoch_steps(rows, batch_size, round_robin)
    asked = max_steps or math.ceil(per_epoch * epochs)
    total = sum(rows)

    def cost(steps: int, evaluations: int) -> float:
        return steps * seconds_per_step + evaluations * dev_eval_seconds

    fraction, planned_epochs, steps = 1.0, epochs, asked
    if cost(asked, math.ceil(asked / per_epoch)) > left:
        full_passes = (left - dev_eval_seconds) / (per_epoch * seconds_per_step + dev_eval_seconds)  # whole data, one evaluation per pass
        if full_passes >= 1:
            planned_epochs = min(epochs, math.floor(full_passes * 10) / 10)
            steps = math.ceil(per_epoch * planned_epochs)
        else:  # one pass does not fit: fewer pairs, one epoch, one evaluation at its end
            steps = max(1, math.floor((left - dev_eval_seconds) / seconds_per_step))
            fraction = min(1.0, steps / per_epoch)
            planned_epochs = 1.0
    evaluations = max(1, math.ceil(steps / max(1, math.ceil(per_epoch * fraction))))
    return BudgetPlan(
        budget_seconds=budget_seconds,
        spent_seconds=spent_seconds,
        seconds_per_step=seconds_per_step,
        measured_steps=measured_steps,
        pairs_available=total,
        pairs=max(1, round(total * fraction)),
        train_fraction=round(fraction, 6),
        epochs=planned_epochs,
        steps=steps,
        dev_evaluations=evaluations,
        estimated_training_seconds=steps * seconds_per_step,
        estimated_eval_seconds=evaluations * dev_eval_seconds,
    )


def clock() -> float:
    """The clock budgets are measured on (monotonic seconds)."""
    return time.monotonic()


def budget_callback(deadline: float, bar: Any, shown: dict[str, str], start: float) -> Any:
    """A ``transformers.TrainerCallback`` that stops training at ``deadline`` (a :func:`clock` time), skipping
    the dev evaluation a step past it would start, and shows the elapsed and remaining time (since ``start``)
    in ``shown``, the progress bar's postfix. It must come after transformers' own flow callback."""
    from transformers import TrainerCallback

    class BudgetStop(TrainerCallback):
        """Stops training at the end of the time budget; ``stopped`` says whether it did."""

        def __init__(self) -> None:
            self.stopped = False

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            now = clock()
            shown["time"] = f"{_clock_text(now - start)} elapsed, {_clock_text(max(0.0, deadline - now))} left"
            bar.update(0, **shown)
            if now >= deadline:  # no dev evaluation past the budget either: the final evaluation follows at once
                control.should_evaluate = False
                if not control.should_training_stop and state.global_step < state.max_steps:
                    control.should_training_stop = True
                    self.stopped = True
            return control

    return BudgetStop()


def _clock_text(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"
