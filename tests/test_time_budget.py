"""A time budget: the plan (pure), the plan recorded in the result, and the stop at the end of the budget."""

import contextlib
import json
import time

import pytest

from embedft import ConfigError, RunConfig, Trainer
from embedft.budget import BudgetPlan, plan_budget

from conftest import make_pairs


def _plan(**kw):
    args = dict(budget_seconds=600.0, spent_seconds=0.0, seconds_per_step=1.0, measured_steps=6, rows=[3200], batch_size=32, epochs=1.0, dev_eval_seconds=0.0)
    return plan_budget(**{**args, **kw})


def test_a_run_that_fits_is_left_as_configured():
    plan = _plan(epochs=2.0)  # 200 steps of 1 s in 570 s
    assert (plan.pairs, plan.train_fraction, plan.epochs, plan.steps) == (3200, 1.0, 2.0, 200)
    assert plan.estimated_training_seconds == 200


def test_too_little_time_for_the_epochs_keeps_every_pair_and_shortens_the_epochs():
    plan = _plan(epochs=3.0, budget_seconds=300, dev_eval_seconds=5)  # 285 s left; 3 passes need 300 s + evaluations
    assert plan.train_fraction == 1.0 and plan.pairs == 3200
    assert 1.0 <= plan.epochs < 3.0
    assert plan.estimated_training_seconds + plan.estimated_eval_seconds <= 285


def test_too_little_time_for_one_pass_caps_the_pairs():
    plan = _plan(budget_seconds=60, spent_seconds=10, dev_eval_seconds=2)  # 47.5 s left, a pass is 100 s
    assert plan.epochs == 1.0 and 0 < plan.train_fraction < 0.5 and plan.pairs < 3200
    assert plan.steps == 45 and plan.estimated_training_seconds + plan.estimated_eval_seconds <= 47.5


def test_a_spent_budget_still_plans_one_step():
    plan = _plan(budget_seconds=60, spent_seconds=100)
    assert plan.steps == 1 and plan.pairs >= 1


def test_several_datasets_count_their_batches_as_the_sampler_draws_them():
    proportional = _plan(rows=[3200, 640], epochs=1.0)
    round_robin = _plan(rows=[3200, 640], epochs=1.0, round_robin=True)
    assert proportional.steps == 100 + 20 and round_robin.steps == 20 * 2
    assert proportional.pairs_available == 3840


def test_the_plan_round_trips_and_reads_in_one_line():
    plan = _plan(budget_seconds=60, spent_seconds=10)
    assert BudgetPlan.model_validate_json(plan.model_dump_json()) == plan
    assert "time budget 1.0 min" in plan.summary() and "pairs" in plan.summary() and "\n" not in plan.summary()


def test_budget_settings_are_checked_where_they_enter():
    assert RunConfig.from_dict({"training": {"time_budget_minutes": 30}}).training.time_budget_minutes == 30
    for bad in (0, -1, True, "soon"):
        with pytest.raises(ConfigError) as err:
            RunConfig.from_dict({"training": {"time_budget_minutes": bad}})
        assert err.value.field == "training.time_budget_minutes"
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"training": {"time_budget_minutes": 5, "repeats": 3}})
    assert err.value.field == "training.time_budget_minutes"


def _kwargs(tiny_model_path, tmp_path, name, **kw):
    return dict(data=make_pairs(60), base_model=tiny_model_path, output_dir=str(tmp_path / name), batch_size=8, learning_rate=5e-4, progress=False, cache=False, **kw)


class Recorder:
    """A progress reporter that keeps what a run reports: phases, postfixes and notes."""

    def __init__(self):
        self.phases, self.postfixes, self.notes = [], [], []

    @contextlib.contextmanager
    def phase(self, name, total=None):
        self.phases.append(name)
        yield self

    def update(self, n=1, **postfix):
        if postfix:
            self.postfixes.append((self.phases[-1], postfix))

    def note(self, message):
        self.notes.append((len(self.phases), message))


def test_a_generous_budget_records_its_plan_and_trains_as_without_one(tiny_model_path, tmp_path):
    plain = Trainer(**_kwargs(tiny_model_path, tmp_path, "plain", epochs=1)).fit()
    seen = Recorder()
    budgeted = Trainer(**_kwargs(tiny_model_path, tmp_path, "budget", epochs=1, time_budget_minutes=60), reporter=seen).fit()
    plan = budgeted.time_budget
    assert plan is not None and plain.time_budget is None
    assert plan.epochs == 1.0 and plan.train_fraction == 1.0 and plan.steps == plain.train_steps and plan.measured_steps >= 1
    assert not plan.stopped_by_budget and plan.training_seconds is not None
    # the calibration steps leave no trace: the same weights train the same way
    assert budgeted.train_loss == pytest.approx(plain.train_loss, rel=1e-6)
    assert budgeted.after.dev == pytest.approx(plain.after.dev, abs=1e-6)
    saved = json.loads(budgeted.metrics_path.read_text())
    assert saved["time_budget"]["steps"] == plan.steps
    assert RunConfig.from_file(budgeted.config_path).training.time_budget_minutes == 60  # the config stays the user's
    assert "time budget 60.0 min" in budgeted.summary()
    # the plan is reported before training, and the training bar shows the time elapsed and left
    (before, note), training = seen.notes[0], seen.phases.index("training")
    assert note == plan.summary() and before <= training and "time budget calibration" in seen.phases[:training]
    shown = [p["time"] for phase, p in seen.postfixes if phase == "training" and "time" in p]
    assert shown and all("elapsed" in t and "left" in t for t in shown)


def test_a_tight_budget_caps_the_pairs(tiny_model_path, tmp_path, monkeypatch):
    import embedft.budget

    monkeypatch.setattr(embedft.budget, "SAFETY", 1e-9)  # as if the budget were almost spent: one step is all that fits
    run = Trainer(**_kwargs(tiny_model_path, tmp_path, "tight", epochs=5, time_budget_minutes=1)).fit(baseline=False)
    assert run.time_budget is not None and run.time_budget.steps == 1 and run.time_budget.train_fraction < 1
    assert run.before is None and run.time_budget.estimated_eval_seconds > 0  # no baseline to time: a sample of dev was timed
    assert run.train_steps == 1 and run.train_pairs < run.time_budget.pairs_available


def test_training_stops_at_the_end_of_the_budget(tiny_model_path, tmp_path):
    from transformers import TrainerCallback

    class SlowMachine(TrainerCallback):  # steps after the calibration take far longer than measured
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(1.0)

    budget_s = 20
    started = time.monotonic()
    run = Trainer(**_kwargs(tiny_model_path, tmp_path, "stop", epochs=20, time_budget_minutes=budget_s / 60), callbacks=[SlowMachine()]).fit(baseline=False)
    assert run.time_budget is not None and run.time_budget.steps > 1
    assert run.time_budget.stopped_by_budget and run.train_steps < run.time_budget.steps
    # within the budget, plus one step, the final evaluation and saving (a few seconds on the tiny model)
    assert time.monotonic() - started < budget_s + 12


def test_cli_prints_the_plan(tiny_model_path, tmp_path, capsys):
    from embedft.cli import main

    from conftest import DEMO_DATA

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{source: {DEMO_DATA}, cache: false, max_train_pairs: 64}}\nmodel: {{base_model: {tiny_model_path}}}\noutput_dir: {tmp_path / 'cli'}\n")
    assert main(["train", str(cfg), "--time-budget", "5", "--recipe", "quality", "--set", "training.batch_size=8"]) == 0
    out = capsys.readouterr().out
    assert "time budget 5.0 min" in out and "plan" in out
    saved = RunConfig.from_file(tmp_path / "cli" / "config.yaml")
    assert saved.training.recipe == "quality" and saved.training.group_by_length and saved.data.max_train_pairs == 64


def test_the_callback_stops_past_the_deadline_and_skips_the_evaluation_it_would_start():
    from transformers import TrainerControl, TrainerState

    from embedft.budget import budget_callback, clock

    class Bar:
        def update(self, n=1, **postfix):
            pass

    def step(deadline, global_step, max_steps=10):
        shown = {}
        callback = budget_callback(deadline, Bar(), shown, clock() - 70)
        state, control = TrainerState(global_step=global_step, max_steps=max_steps), TrainerControl(should_evaluate=True)
        callback.on_step_end(None, state, control)
        return callback, control, shown

    callback, control, shown = step(clock() - 1, 3)
    assert control.should_training_stop and not control.should_evaluate and callback.stopped
    assert shown["time"].startswith("1:10 elapsed") and shown["time"].endswith("0:00 left")
    callback, control, shown = step(clock() + 100, 3)  # within the budget: nothing changes
    assert not control.should_training_stop and control.should_evaluate and not callback.stopped
    callback, control, _ = step(clock() - 1, 10)  # the planned last step: done, not stopped by the budget
    assert not callback.stopped and not control.should_evaluate
