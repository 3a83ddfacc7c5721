"""The learning curve (embedft.curve): nested subsets, the reading of the last step, the folder, the CLI."""

import csv
import itertools
import json
import math

import pytest

from embedft import ConfigError, RunConfig
from embedft.cli import main
from embedft.curve import CurveResult, judge_step, learning_curve, nested_subsets, parse_sizes
from embedft.errors import OutputExistsError
from embedft.executors import InProcessExecutor
from embedft.files import check_output_dir, owner
from embedft.trial import run_trial

from conftest import DEMO_DATA, make_task_rows


def run_config(tiny_model_path, tmp_path, **training) -> RunConfig:
    return RunConfig.from_dict(
        {
            "data": {"source": str(DEMO_DATA), "cache": False},
            "model": {"base_model": tiny_model_path},
            "training": {"epochs": 1, "batch_size": 16, "learning_rate": 5e-4, "progress": False, "bootstrap": {"resamples": 200}, **training},
            "output_dir": str(tmp_path / "run"),
        }
    )


# ------------------------------------------------------------------ sizes and subsets
@pytest.mark.parametrize(
    ("given", "expected"),
    [("1000,2000,all", [1000, 2000, "all"]), ("all, 500 ,100,500", [100, 500, "all"]), ([8, "16", "ALL"], [8, 16, "all"]), (None, [1000, 2000, 4000, 8000, "all"])],
)
def test_sizes_are_parsed_sorted_and_deduplicated(given, expected):
    assert parse_sizes(given) == expected


@pytest.mark.parametrize("bad", ["0,100", "-5", "1k", "", "10,,20", [True], [1.5], "all,2.5"])
def test_bad_sizes_are_config_errors(bad):
    with pytest.raises(ConfigError) as err:
        parse_sizes(bad)
    assert err.value.field == "sizes"


@pytest.mark.parametrize("task", ["pair-classification", "sts", "retrieval"])
def test_subsets_are_nested_grouped_and_keep_dev_and_test(task):
    from embedft import DatasetBuilder

    built = DatasetBuilder({"cache": False, "splits": {"train": 0.7, "dev": 0.15, "test": 0.15}}, task=task).build(make_task_rows(task, n_groups=60))
    n = len(built.train)
    sizes = [5, 11, 23, n - 1, n + 10]
    subsets = nested_subsets(built, sizes, seed=3)
    rows = {s: set(map(tuple, subsets[s].train.astype(str).to_numpy().tolist())) for s in sizes}
    for small, large in itertools.pairwise(sizes):
        assert rows[small] <= rows[large]  # nested
    for s in sizes:
        sub = subsets[s]
        assert len(sub.train) == min(s, n)
        assert sub.dev is built.dev and sub.test is built.test
        assert sub.report.splits["train"].pairs == len(sub.train) and sub.report.splits["dev"] == built.report.splits["dev"]
        # Whole groups: at most one group (the last one taken) is cut.
        full_sizes, taken = built.train["component"].value_counts(), sub.train["component"].value_counts()
        assert sum(taken[g] < full_sizes[g] for g in taken.index) <= 1
    assert subsets[n + 10] is built
    assert nested_subsets(built, [11], seed=3)[11].train.equals(subsets[11].train)  # seeded
    assert not nested_subsets(built, [11], seed=4)[11].train.equals(subsets[11].train)


# ------------------------------------------------------------------ reading the last step
@pytest.mark.parametrize(
    ("gain", "interval", "ratio", "trend"),
    [
        (0.010, (0.004, 0.016), 2.0, "rising"),
        (0.001, (-0.003, 0.004), 2.0, "flat"),
        (-0.004, (-0.009, 0.001), 2.0, "flat"),  # a loss: surely no gain worth having
        (0.006, (-0.002, 0.014), 2.0, "cannot tell"),
        (0.001, (-0.003, 0.004), 1.05, "cannot tell"),  # a tiny step cannot show a gain per doubling
        (0.001, (-0.003, 0.004), 8.0, "flat"),
        (0.002, (0.001, 0.003), 2.0, "flat"),  # measurable but below min_gain: flat, and says so
        (0.01, (math.nan, math.nan), 2.0, "cannot tell"),
    ],
)
def test_the_last_step_is_read_honestly(gain, interval, ratio, trend):
    found, reason = judge_step(gain, interval, ratio=ratio, min_gain=0.005)
    assert found == trend
    assert ("interval" in reason) or math.isnan(interval[0])


# ------------------------------------------------------------------ the curve end to end
def test_a_curve_trains_each_size_once_and_writes_its_folder(tiny_model_path, tmp_path):
    seen = []
    out = tmp_path / "curve"
    result = learning_curve(run_config(tiny_model_path, tmp_path), "40,80,all", output_dir=out, on_point=seen.append)
    assert isinstance(result, CurveResult)
    assert [p.size for p in result.points] == [40, 80, "all"] and [p.state for p in result.points] == ["complete"] * 3
    assert [p.train_pairs for p in result.points][:2] == [40, 80] and result.points[2].train_pairs > 80
    assert sorted(p.train_pairs for p in seen) == [p.train_pairs for p in result.points]
    for p in [result.base, *result.points]:
        assert p is not None and p.test is not None and p.dev is not None
        assert p.test_interval is not None and p.test_interval[0] <= p.test <= p.test_interval[1]
    assert result.base.train_pairs == 0
    assert result.step == (80, result.points[2].train_pairs)
    assert result.trend in ("rising", "flat", "cannot tell") and result.message.startswith(result.trend)
    # The last step's gain is the difference of the two test scores, with a paired interval around it.
    assert result.gain == pytest.approx(result.points[2].test - result.points[1].test, abs=1e-6)
    assert result.gain_interval[0] <= result.gain <= result.gain_interval[1]
    # The folder: an embedft curve folder with the table, the JSON and the plot; no trial folders left.
    assert owner(out) == "curve"
    assert {p.name for p in out.iterdir()} >= {"curve.csv", "curve.json", "curve.png"}
    assert not (out / "trials").exists()
    (sizes_dir,) = (p for p in (out / "data").iterdir() if p.name != "full")  # the splits of each size, and what they were cut from
    assert sorted(int(p.name) for p in sizes_dir.iterdir()) == [p.train_pairs for p in result.points]
    table = list(csv.DictReader((out / "curve.csv").open()))
    assert [r["size"] for r in table] == ["base", "40", "80", "all"]
    assert float(table[1]["test_cosine_ap"]) == pytest.approx(result.points[0].test, abs=1e-5)
    assert json.loads((out / "curve.json").read_text())["trend"] == result.trend
    assert (out / "curve.png").stat().st_size > 1000 and result.plot_path == out / "curve.png"
    assert "learning curve:" in result.summary()
    # A rerun does not replace the finished curve without overwrite; with it, it does.
    with pytest.raises(OutputExistsError):
        learning_curve(run_config(tiny_model_path, tmp_path), "40,all", output_dir=out)
    again = learning_curve(run_config(tiny_model_path, tmp_path), "40,all", output_dir=out, overwrite=True, keep_models=True)
    assert [p.size for p in again.points] == [40, "all"]
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000", "0001"]
    assert (out / "trials" / "0001" / "model").is_dir()
    # A training run never replaces a curve, even with overwrite: another kind of embedft folder.
    with pytest.raises(OutputExistsError, match="curve, not a run"):
        check_output_dir(out, kind="run", overwrite=True)


def test_the_same_config_gives_the_same_curve(tiny_model_path, tmp_path):
    cfg = run_config(tiny_model_path, tmp_path)
    a = learning_curve(cfg, "40,all", output_dir=tmp_path / "a")
    b = learning_curve(cfg, "40,all", output_dir=tmp_path / "b")
    assert [p.test for p in a.points] == pytest.approx([p.test for p in b.points], abs=1e-6)


def test_a_failed_size_is_recorded_and_the_curve_reads_the_completed_ones(tiny_model_path, tmp_path):
    def flaky(config, report):
        if config.run.data.max_train_pairs == 80:
            raise RuntimeError("out of memory at size 80")
        return run_trial(config, report)

    result = learning_curve(run_config(tiny_model_path, tmp_path), "20,40,80", output_dir=tmp_path / "c", executor=InProcessExecutor(flaky))
    states = {p.size: p.state for p in result.points}
    assert states == {20: "complete", 40: "complete", 80: "fail"}
    assert "out of memory" in result.points[2].error
    assert result.step == (20, 40) and "the largest size, 80, failed" in result.reason
    table = (tmp_path / "c" / "curve.csv").read_text()
    assert "fail" in table and "out of memory" in table


def test_models_of_remote_trials_are_fetched_for_the_last_step_and_not_kept(tiny_model_path, tmp_path):
    fetched = []

    class Remote(InProcessExecutor):
        """Trials whose model paths this process cannot read: the last step must fetch them."""

        def fetch(self, name, local):
            fetched.append(name)
            return super().fetch(name, local)

    def remote(config, report):
        return run_trial(config, report).model_copy(update={"model_path": "/nowhere/on/this/machine/model"})

    out = tmp_path / "remote"
    result = learning_curve(run_config(tiny_model_path, tmp_path), "40,all", output_dir=out, executor=Remote(remote))
    assert sorted(fetched) == ["0000", "0001"] and result.gain_interval is not None
    assert not (out / "models").exists()  # the fetched copies went once scored
    assert not (out / "trials").exists()


def test_one_completed_size_cannot_tell(tiny_model_path, tmp_path):
    result = learning_curve(run_config(tiny_model_path, tmp_path), "all", output_dir=tmp_path / "one")
    assert result.trend == "cannot tell" and "needs two" in result.reason and result.gain is None


def test_a_users_folder_and_bad_arguments_are_refused_before_training(tiny_model_path, tmp_path, monkeypatch):
    import embedft.curve as curve

    monkeypatch.setattr(curve, "_run_curve", lambda *a, **k: pytest.fail("trained"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(OutputExistsError):
        learning_curve(run_config(tiny_model_path, tmp_path), "40,all", output_dir=mine)
    assert (mine / "notes.txt").read_text() == "keep"
    for kwargs, field in (({"min_gain": -1}, "min_gain"), ({"min_gain": True}, "min_gain")):
        with pytest.raises(ConfigError) as err:
            learning_curve(run_config(tiny_model_path, tmp_path), "40,all", output_dir=tmp_path / "x", **kwargs)
        assert err.value.field == field
    with pytest.raises(ConfigError) as err:
        learning_curve(run_config(tiny_model_path, tmp_path), "40,x", output_dir=tmp_path / "x")
    assert err.value.field == "sizes"
    with pytest.raises(ConfigError) as err:  # a budget would train a size on fewer rows than the curve says
        learning_curve(run_config(tiny_model_path, tmp_path, time_budget_minutes=5), "40,all", output_dir=tmp_path / "x")
    assert err.value.field == "training.time_budget_minutes"
    # The data folder itself is an input: a curve there would replace it.
    with pytest.raises(ConfigError):
        learning_curve(run_config(tiny_model_path, tmp_path), "40,all", output_dir=DEMO_DATA.parent)


def test_the_cli_draws_a_curve_and_says_one_line(tiny_model_path, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    run_config(tiny_model_path, tmp_path).save(config)
    out = tmp_path / "cli-curve"
    assert main(["-q", "curve", str(config), "--sizes", "40,all", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("learning curve:"))
    assert any(word in line for word in ("rising", "flat", "cannot tell"))
    assert (out / "curve.png").is_file() and "curve.csv" in printed
    assert main(["-q", "curve", str(config), "--sizes", "0,all", "--output-dir", str(tmp_path / "bad")]) == 2
    assert "sizes" in capsys.readouterr().err
    assert main(["-q", "curve", str(config), "--sizes", "40,all", "--output-dir", str(out)]) == 2  # finished: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_importing_the_module_stays_light():
    import subprocess
    import sys

    code = "import embedft.curve, sys; print(any(m in sys.modules for m in ('torch', 'matplotlib', 'sentence_transformers')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
