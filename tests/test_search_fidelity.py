"""What a trial pays besides its training steps: the base model copied from memory, the dev subsample
the pruner sees, the cost breakdown; the study's names; warm starts; the Pareto front of a second objective."""

import itertools
import json
from pathlib import Path

import pytest

from embedft import ConfigError, OptunaSearch, RunConfig, SearchConfig, Trainer, TrialConfig, run_trial
from embedft.search.warm import enqueue_warm_start
from embedft.trial import dev_subsample, worker_models

import search_helpers
from test_search import LR_SPACE
from test_search import base as search_base
from test_search import search_config as plain_search_config


def base(tiny_model_path, **training):
    """test_search's base config, with smaller batches and a dev evaluation every 2 steps."""
    return search_base(tiny_model_path, **{"batch_size": 16, "eval_steps": 2, **training})


def search_config(tiny_model_path, tmp_path, **kw):
    """test_search's search config over the learning rate only, on :func:`base`."""
    return plain_search_config(tiny_model_path, tmp_path, **{"base": base(tiny_model_path), "space": LR_SPACE, **kw})


@pytest.fixture
def saved_data(tiny_model_path, tmp_path):
    from embedft import DatasetBuilder

    run = RunConfig.from_dict(base(tiny_model_path))
    return DatasetBuilder(run.data).build().save(tmp_path / "data")


def trial(tiny_model_path, tmp_path, data_dir, number, **fields):
    data = base(tiny_model_path)
    data["model"].update(fields.pop("model", {}))
    run = RunConfig.from_dict({**data, "output_dir": str(tmp_path / f"t{number}")})
    return run_trial(TrialConfig(number=number, params={}, run=run, data_dir=str(data_dir), **fields))


# ---------------------------------------------------------------------- reset, not reload
@pytest.mark.parametrize("model", [{}, {"dense": {"out_features": 8}}, {"dense": {"out_features": 8}, "freeze_backbone": True}], ids=["plain", "dense", "frozen"])
def test_a_copy_from_memory_trains_exactly_as_a_fresh_load(tiny_model_path, tmp_path, saved_data, model):
    worker_models().clear()
    loads = worker_models().loads
    fresh = trial(tiny_model_path, tmp_path, saved_data, 0, reuse_base_model=False, model=model)
    first = trial(tiny_model_path, tmp_path, saved_data, 1, model=model)
    second = trial(tiny_model_path, tmp_path, saved_data, 2, model=model)  # after a trial trained a copy: the kept model is untouched
    assert fresh.state == first.state == second.state == "complete"
    assert worker_models().loads == loads + 1  # read from disk once, copied for the second trial
    for other in (first, second):
        assert other.value == pytest.approx(fresh.value, abs=1e-5)
        assert [v for _, v in other.intermediate] == pytest.approx([v for _, v in fresh.intermediate], abs=1e-5)
        assert other.dev == pytest.approx(fresh.dev, abs=1e-5)
    assert fresh.load_seconds > 0 and first.load_seconds > 0 and second.load_seconds > 0


def test_the_cache_keeps_one_model_and_reloads_changed_files(tiny_model_path, tmp_path):
    import shutil

    from embedft.modeling import BaseModelCache

    other = tmp_path / "other"
    shutil.copytree(tiny_model_path, other)
    cache = BaseModelCache(max_models=1)
    a, b = cache.get(tiny_model_path, "cpu"), cache.get(tiny_model_path, "cpu")
    assert a is not b and cache.loads == 1 and len(cache) == 1
    assert next(a.parameters()).data_ptr() != next(b.parameters()).data_ptr()  # copies, never shared weights
    cache.get(str(other), "cpu")
    assert cache.loads == 2 and len(cache) == 1  # the least recently used one dropped: memory stays bounded
    (other / "README.md").write_text("changed")
    cache.get(str(other), "cpu")
    assert cache.loads == 3  # the same path with other files is read again
    none = BaseModelCache(max_models=0)
    none.get(tiny_model_path, "cpu"), none.get(tiny_model_path, "cpu")
    assert none.loads == 2 and len(none) == 0
    with pytest.raises(ValueError):
        BaseModelCache(max_models=-1)


# ---------------------------------------------------------------------- the dev subsample
def test_the_dev_subsample_is_fixed_grouped_and_stratified():
    import pandas as pd

    rows = [{"text1": f"a{i}", "text2": f"b{i}", "label": int(i % 4 == 0), "component": i // 2} for i in range(400)]
    dev = pd.DataFrame(rows)
    sub = dev_subsample(dev, 100, seed=3)
    assert sub.equals(dev_subsample(dev, 100, seed=3))  # the same for every trial
    assert not sub.equals(dev_subsample(dev, 100, seed=4))
    assert 90 <= len(sub) <= 110
    kept = set(sub["component"])
    assert all((dev["component"] == c).sum() == (sub["component"] == c).sum() for c in kept)  # whole groups
    assert abs(sub["label"].mean() - dev["label"].mean()) < 0.06  # the balance of dev
    assert dev_subsample(dev, 1000) is dev  # smaller than asked: all of dev


def test_intermediate_scores_use_the_subsample_and_the_value_all_of_dev(tiny_model_path, tmp_path, saved_data):
    from embedft import BuiltDataset

    dev = BuiltDataset.load(saved_data).dev
    sub = dev_subsample(dev, 20, seed=0)
    assert len(sub) < len(dev)
    full = trial(tiny_model_path, tmp_path, saved_data, 0)
    small = trial(tiny_model_path, tmp_path, saved_data, 1, dev_subsample=20)
    assert full.report_split == "dev" and small.report_split == f"dev subsample: {len(sub)} of {len(dev)} rows"
    # The value is the trained model's score on all of dev, whatever the pruner saw.
    run = RunConfig.from_dict(base(tiny_model_path))
    assert Trainer(run, data=BuiltDataset.load(saved_data)).evaluate(small.model_path).dev_score == pytest.approx(small.value, abs=1e-5)
    assert [s for s, _ in small.intermediate] == [s for s, _ in full.intermediate]
    assert [v for _, v in small.intermediate] != pytest.approx([v for _, v in full.intermediate], abs=1e-9)
    assert small.eval_seconds > 0 and small.train_seconds > 0 and small.tokenise_seconds > 0
    run = RunConfig.from_dict({**base(tiny_model_path), "output_dir": str(tmp_path / "p")})
    pruned = run_trial(TrialConfig(number=3, params={}, run=run, data_dir=str(saved_data)), lambda step, value: True)
    assert pruned.state == "pruned" and pruned.train_steps == 2 and pruned.train_pairs == 64  # its training set, though it stopped early


def test_the_trials_table_carries_the_cost_breakdown_and_what_each_score_used(tiny_model_path, tmp_path):
    cfg = search_config(tiny_model_path, tmp_path, n_trials=2, dev_subsample=20)
    result = OptunaSearch(cfg).run()
    rows = json.loads(result.trials_json.read_text())
    for row in rows:
        assert all(row[k] > 0 for k in ("load_seconds", "tokenise_seconds", "train_seconds", "eval_seconds"))
        assert row["train_pairs"] == 64 and row["train_steps"] == 4
        assert row["intermediate_on"].startswith("dev subsample: ") and row["value_on"] == "dev"
        assert row["load_seconds"] + row["train_seconds"] + row["eval_seconds"] <= row["seconds"]
    header = Path(result.trials_csv).read_text().splitlines()[0]
    assert "load_seconds" in header and "intermediate_on" in header
    assert len(worker_models()) == 0  # the in-process executor drops its base model when the search ends


# ---------------------------------------------------------------------- the dashboard's names
def test_the_study_names_its_metric_and_each_trial_its_costs(tiny_model_path, tmp_path):
    cfg = search_config(tiny_model_path, tmp_path, n_trials=2, pruner={"type": "median", "n_startup_trials": 5})
    search = OptunaSearch(cfg, trial_fn=search_helpers.fake_scores)
    search.run()
    study = search.load_study()
    assert study.metric_names == ["dev cosine_ap"]
    attrs = study.trials[0].user_attrs
    assert {"seconds", "train_seconds", "load_seconds", "eval_seconds", "train_steps", "train_pairs"} <= set(attrs)


# ---------------------------------------------------------------------- warm start
def earlier_study(tiny_model_path, tmp_path, values):
    """An earlier search folder whose study holds complete trials with these (lr, loss, value)."""
    import optuna

    cfg = search_config(
        tiny_model_path,
        tmp_path,
        output_dir=str(tmp_path / "earlier"),
        space={
            "training.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
            "training.loss": {"type": "categorical", "choices": ["OnlineContrastiveLoss", "CoSENTLoss"]},
        },
    )
    search = OptunaSearch(cfg)
    study = search.load_study()
    cfg.save(Path(cfg.output_dir) / "search.yaml")
    dists = {
        "training.learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
        "training.loss": optuna.distributions.CategoricalDistribution(["OnlineContrastiveLoss", "CoSENTLoss"]),
    }
    for lr, loss, value in values:
        study.add_trial(optuna.trial.create_trial(params={"training.learning_rate": lr, "training.loss": loss}, distributions=dists, value=value))
    return cfg


def test_warm_start_queues_the_best_configs_without_the_params_the_space_dropped(tiny_model_path, tmp_path):
    earlier = earlier_study(
        tiny_model_path,
        tmp_path,
        [(1e-4, "CoSENTLoss", 0.6), (2e-4, "CoSENTLoss", 0.9), (5e-3, "CoSENTLoss", 0.95), (3e-4, "OnlineContrastiveLoss", 0.8), (4e-4, "CoSENTLoss", 0.1)],
    )
    # The new space has no loss and a narrower learning rate: 5e-3 (the best) is out of it.
    cfg = search_config(
        tiny_model_path, tmp_path, n_trials=4, warm_start=earlier.output_dir, warm_start_trials=3, space={"training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}
    )
    search = OptunaSearch(cfg, trial_fn=search_helpers.fake_scores)
    search.run()
    study = search.load_study()
    first = [t.params["training.learning_rate"] for t in study.trials[:3]]
    assert first == pytest.approx([2e-4, 3e-4, 1e-4])  # the best three that fit, best first; the loss left out
    assert all("warm_start" in t.user_attrs for t in study.trials[:3]) and "warm_start" not in study.trials[3].user_attrs
    assert set(study.trials[0].params) == {"training.learning_rate"}
    # A resumed search does not queue them again.
    OptunaSearch(cfg.model_copy(update={"n_trials": 5}), trial_fn=search_helpers.fake_scores).run()
    assert len(search.load_study().trials) == 5 and "warm_start" not in search.load_study().trials[4].user_attrs


def test_warm_start_from_a_storage_url_and_refusals(tiny_model_path, tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = optuna.create_study(study_name="old", storage=url, direction="maximize")
    dist = {"training.learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)}
    for lr, value in ((1e-4, 0.5), (6e-4, 0.7)):
        old.add_trial(optuna.trial.create_trial(params={"training.learning_rate": lr}, distributions=dist, value=value))
    cfg = search_config(tiny_model_path, tmp_path, n_trials=2, warm_start=url, warm_start_trials=1)
    search = OptunaSearch(cfg, trial_fn=search_helpers.fake_scores)
    search.run()
    assert search.load_study().trials[0].params["training.learning_rate"] == pytest.approx(6e-4)
    for source, needle in ((str(tmp_path / "nowhere"), "not found"), (str(tmp_path), "not an embedft search folder"), (cfg.output_dir, "its own study")):
        other = cfg.model_copy(update={"warm_start": source})
        with pytest.raises(ConfigError, match=needle):
            enqueue_warm_start(search.load_study(), other)


# ---------------------------------------------------------------------- a second objective
def test_the_pareto_front_and_the_recommendation_on_a_synthetic_study():
    import optuna

    from embedft.search.study import pareto_front, recommend

    study = optuna.create_study(directions=["maximize", "minimize"])
    points = [(0.80, 64), (0.90, 384), (0.85, 128), (0.84, 256), (0.899, 256), (0.70, 64), (0.88, 384)]
    for value, dim in points:
        study.add_trial(optuna.trial.create_trial(values=[value, dim], params={}, distributions={}))
    front = [(t.values[0], t.values[1]) for t in pareto_front(study)]
    dominated = {(0.84, 256), (0.70, 64), (0.88, 384)}
    assert sorted(front) == sorted(set(points) - dominated)
    assert recommend(study, 0.005).values == [0.899, 256]  # within 0.005 of 0.90, and smaller
    assert recommend(study, 0.0).values == [0.90, 384]
    assert recommend(study, 0.2).values == [0.80, 64]
    assert recommend(optuna.create_study(directions=["maximize", "minimize"]), 0.01) is None


def test_a_search_with_a_second_objective_gives_the_front_the_rule_and_the_plot(tiny_model_path, tmp_path):
    cfg = search_config(
        tiny_model_path,
        tmp_path,
        n_trials=3,
        second_objective="dimension",
        pruner={"type": "none"},
        space={"model.dense.out_features": {"type": "categorical", "choices": [None, 8, 16]}},
        sampler={"type": "grid"},
    )
    result = OptunaSearch(cfg).run()
    assert result.n_complete == 3 and result.objectives == ["dev cosine_ap", "embedding dimension"]
    rows = json.loads(result.trials_json.read_text())
    assert sorted(r["objective2"] for r in rows) == [8, 16, 32]  # the tiny BERT is 32 wide
    front = {r["number"] for r in result.pareto}
    values = {r["number"]: (r["value"], r["objective2"]) for r in rows}
    for n, (v, d) in values.items():  # the front: exactly the trials no other trial dominates
        dominated = any(v2 >= v and d2 <= d and (v2, d2) != (v, d) for m, (v2, d2) in values.items() if m != n)
        assert (n in front) == (not dominated)
    assert sum(r["recommended"] for r in result.pareto) == 1 and result.best_number in front
    assert "pareto_tolerance (0.005)" in result.pareto_rule
    assert (Path(cfg.output_dir) / "pareto.csv").is_file()
    assert [p.name for p in result.plots] == ["pareto_front.png"]
    assert (Path(cfg.output_dir) / "best" / "model").is_dir()


def test_a_second_objective_is_not_pruned_and_says_so(tiny_model_path, tmp_path, caplog):
    import optuna

    cfg = search_config(tiny_model_path, tmp_path, second_objective="latency", pruner={"type": "median"})
    with caplog.at_level("WARNING", logger="embedft.search.driver"):
        study = OptunaSearch(cfg).load_study()
    assert isinstance(study.pruner, optuna.pruners.NopPruner) and len(study.directions) == 2
    assert "pruner (median) is not used" in caplog.text


# ---------------------------------------------------------------------- the command line
def test_the_cli_flags_reach_the_search(tiny_model_path, tmp_path, monkeypatch):
    import yaml

    from embedft import cli

    earlier = earlier_study(tiny_model_path, tmp_path, [(2e-4, "CoSENTLoss", 0.9)])
    path = tmp_path / "search.yaml"
    cfg = search_config(tiny_model_path, tmp_path, n_trials=1, output_dir=str(tmp_path / "cli"))
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    seen = {}

    def fake_run(self):
        seen["config"] = self.config
        raise SystemExit(0)

    monkeypatch.setattr(OptunaSearch, "run", fake_run)
    with pytest.raises(SystemExit):
        cli.main(["--quiet", "search", str(path), "--warm-start", earlier.output_dir, "--dev-subsample", "50", "--second-objective", "latency"])
    got = seen["config"]
    assert got.warm_start == earlier.output_dir and got.dev_subsample == 50 and got.second_objective == "latency"
    with pytest.raises(SystemExit):
        cli.main(["--quiet", "search", str(path), "--grow-train-data", "--set", "pruner.type=successive_halving", "--set", "pruner.min_resource=2"])
    got = seen["config"]
    assert got.pruner.grow_train_data and got.trial_base().training.data_growth.first_step == 2
    assert cli.main(["--quiet", "search", str(path), "--grow-train-data"]) == 2  # pruner none: no rungs to grow with


# ---------------------------------------------------------------------- training data that grows with the rungs
def sampler(rows, labels=None, *, growth=(2, 3, 1.0, 20, 0), batch=10, seed=42, no_duplicates=False, group_by_length=False, drop_last=False, texts=None):
    """embedft's batch sampler on a made-up dataset; ``growth`` is (first_step, factor, epochs, max_steps, order seed)."""
    from datasets import Dataset

    from embedft.sampling import batch_sampler

    data = {"sentence1": texts or [f"q{i} " + "word " * (i % 9) for i in range(rows)], "sentence2": [f"p{i}" for i in range(rows)]}
    if labels is not None:
        data["label"] = labels
    make = batch_sampler(group_by_length=group_by_length, no_duplicates=no_duplicates, growth=growth)
    return make(Dataset.from_dict(data), batch_size=batch, drop_last=drop_last, valid_label_columns=["label"], generator=None, seed=seed)


def run_batches(s, epochs=None):
    """The batches the trainer draws: epoch after epoch, up to the run's steps (all of one epoch without growth)."""
    out = []
    for epoch in range(epochs or -(-s.total_steps // len(s))):
        s.set_epoch(epoch)
        got = list(s)
        assert len(got) == len(s)  # every epoch as long as the sampler says
        out += got
    return out[: s.total_steps] if s.pools else out


GROWTH_CASES = [  # rows, batch, first rung, factor, epochs, max_steps, length-grouped, no duplicates
    (100, 10, 2, 3, 2.0, None, False, False),
    (97, 8, 1, 2, 1.0, None, True, False),
    (97, 8, 1, 2, 1.5, None, False, True),
    (50, 4, 3, 3, 3.0, None, True, True),
    (60, 7, 2, 2, 1.0, 25, False, False),
    (1000, 32, 5, 4, 1.0, None, True, False),
]


@pytest.mark.parametrize(("rows", "batch", "first", "factor", "epochs", "max_steps", "grouped", "unique"), GROWTH_CASES)
def test_growing_pools_are_nested_stratified_and_a_full_run_draws_every_row(rows, batch, first, factor, epochs, max_steps, grouped, unique):
    import math

    from embedft.sampling import growth_pools

    labels = [int(i % 5 == 0) for i in range(rows)]  # 20 % positives
    total = max_steps or math.ceil(epochs * -(-rows // batch))
    s = sampler(rows, labels, growth=(first, factor, epochs, max_steps, 7), batch=batch, group_by_length=grouped, no_duplicates=unique)
    pools = growth_pools(rows=rows, total_steps=total, first_step=first, factor=factor, batch_size=batch)
    assert s.total_steps == total and s.pools == pools and pools
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(pools))  # nested: pools only grow
    rungs = [r for r, _ in pools]
    assert rungs == [first * factor**k for k in range(len(rungs))] and rungs[-1] < total <= rungs[-1] * factor
    batches = run_batches(s)
    assert len(batches) == total and all(0 < len(b) <= batch for b in batches)
    rank = {row: i for i, row in enumerate(s.order)}
    for step, b in enumerate(batches):
        pool = next((n for r, n in pools if step < r), rows)
        assert max(rank[i] for i in b) < pool, f"step {step} drew outside its pool of {pool} rows"
    for _, n in pools:  # every pool keeps the label balance of the whole split
        assert abs(sum(labels[i] for i in s.order[:n]) / n - 0.2) <= 1 / n + 1e-9
    assert {i for b in batches for i in b} == set(range(rows))  # the survivors' run sees every row
    assert batches[: rungs[0]] == run_batches(sampler(rows, labels, growth=(first, factor, epochs, max_steps, 7), batch=batch, group_by_length=grouped, no_duplicates=unique))[: rungs[0]]


@pytest.mark.parametrize(("rows", "epochs", "unique", "repeats"), [(487, 2.0, False, False), (40, 3.0, False, True), (200, 2.0, True, True)])
def test_with_drop_last_or_repeated_texts_every_step_stays_in_its_pool(rows, epochs, unique, repeats):
    """drop_last keeps only full batches, and no-duplicate packing over repeated texts leaves part-filled ones:
    the steps still keep to their pools, every epoch is as long as the sampler says, and with full batches
    over two epochs or more every row is drawn."""
    texts = [("dup" if i % 3 == 0 else f"q{i}") if repeats else f"q{i}" for i in range(rows)]
    s = sampler(rows, [i % 2 for i in range(rows)], texts=texts, batch=8, drop_last=True, no_duplicates=unique, group_by_length=True, growth=(1, 2, epochs, None, 7))
    batches = run_batches(s)
    assert len(batches) == s.total_steps
    rank = {row: i for i, row in enumerate(s.order)}
    for step, b in enumerate(batches):
        assert max(rank[i] for i in b) < next((n for r, n in s.pools if step < r), rows)
        assert len({texts[i] for i in b}) == len(b) or not unique
    if not unique:
        assert {i for b in batches for i in b} == set(range(rows))


def test_the_growth_order_comes_from_the_data_and_its_seed_and_batches_from_the_trial_seed():
    labels = [int(i % 3 == 0) for i in range(60)]
    a, b = sampler(60, labels, seed=1), sampler(60, labels, seed=2)
    assert a.order == b.order  # trials on the same training set share the order (data.seed), whatever their own seed
    assert run_batches(a) != run_batches(b)  # ... and draw their batches from it with their own seed
    assert sampler(60, labels, growth=(2, 3, 1.0, 20, 1)).order != a.order  # another data.seed, another order


def test_growing_pools_keep_texts_unique_in_a_batch_and_never_hang():
    import time

    texts = [f"question {i % 30} " + "word " * (i % 7) for i in range(90)]  # each text three times
    s = sampler(90, None, no_duplicates=True, group_by_length=True, texts=texts, batch=8, growth=(2, 2, 1.0, None, 0))
    batches = run_batches(s)
    assert len(batches) == 12 and all(len({texts[i] for i in b}) == len(b) for b in batches)
    t0 = time.perf_counter()  # three distinct texts cannot fill a batch of 8: drop_last leaves no batch, and the sampler ends
    assert list(sampler(42, None, texts=["x", "y", "z"] * 14, no_duplicates=True, group_by_length=True, batch=8, drop_last=True, growth=None)) == []
    grown = sampler(42, None, texts=["x", "y", "z"] * 14, no_duplicates=True, group_by_length=True, batch=8, drop_last=True, growth=(1, 2, 1.0, None, 0))
    batches = list(grown)  # growing pools keep part-filled batches then, so every step stays in its pool
    assert len(batches) == len(grown) == 5 and all(len(b) == 3 for b in batches)
    assert time.perf_counter() - t0 < 30


def test_without_growth_the_length_grouped_sampler_draws_as_before():
    """One shuffled pass per epoch: rows sorted by length within windows of 50 batches, the batches shuffled (the sampler of issue 16)."""
    import torch

    from embedft.sampling import WINDOW_BATCHES, batch_sampler

    assert not callable(batch_sampler(group_by_length=False, no_duplicates=True))  # sentence-transformers' own
    plain = sampler(900, None, growth=None, group_by_length=True, batch=8, seed=3)
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        g = torch.Generator()
        g.manual_seed(3 + epoch)
        order = torch.randperm(900, generator=g).tolist()
        expected = []
        for start in range(0, 900, 8 * WINDOW_BATCHES):
            chunk = sorted(order[start : start + 8 * WINDOW_BATCHES], key=lambda i: -plain.lengths[i])
            expected += [chunk[i : i + 8] for i in range(0, len(chunk), 8)]
        assert list(plain) == [expected[i] for i in torch.randperm(len(expected), generator=g).tolist()]


def test_grow_train_data_sets_the_trials_data_growth_and_is_refused_without_rungs(tiny_model_path, tmp_path, capsys):
    from embedft.cli import main

    cfg = search_config(tiny_model_path, tmp_path, pruner={"type": "successive_halving", "min_resource": 2, "reduction_factor": 2, "grow_train_data": True})
    assert cfg.base.training.data_growth is None  # the search's base is the user's; trials get the rungs
    assert cfg.trial_base().training.data_growth.model_dump() == {"first_step": 2, "factor": 2}
    assert SearchConfig.from_dict(cfg.to_dict()).trial_base() == cfg.trial_base()  # round trip
    hyper = search_config(tiny_model_path, tmp_path, pruner={"type": "hyperband", "grow_train_data": True})
    assert hyper.trial_base().training.data_growth.first_step == 1
    refusals = [
        ({"pruner": {"type": "median", "grow_train_data": True}}, "pruner.grow_train_data"),
        ({"pruner": {"type": "successive_halving", "grow_train_data": True}}, "pruner.min_resource"),
        ({"pruner": {"type": "hyperband", "grow_train_data": True}, "second_objective": "dimension"}, "pruner.grow_train_data"),
        ({"pruner": {"type": "hyperband", "grow_train_data": True}, "base": {**base(tiny_model_path, data_growth={"first_step": 4})}}, "pruner.grow_train_data"),
        ({"pruner": {"type": "hyperband", "grow_train_data": True}, "base": {**base(tiny_model_path, extra_losses=["MultipleNegativesRankingLoss"])}}, "pruner.grow_train_data"),
    ]
    for update, field in refusals:
        with pytest.raises(ConfigError) as err:
            search_config(tiny_model_path, tmp_path, **update)
        assert f"field: {field};" in str(err.value) and str(err.value).count("invalid config") <= 1
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({**base(tiny_model_path), "training": {"data_growth": {"first_step": 2}, "extra_losses": ["CoSENTLoss"]}})
    assert "field: training.data_growth;" in str(err.value)
    yaml_path = tmp_path / "grow.yaml"
    cfg.model_copy(update={"pruner": cfg.pruner.model_copy(update={"type": "median"})}).save(yaml_path)
    assert main(["search", str(yaml_path)]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("embedft: error:") and "grow_train_data" in err_lines[0]
    assert not (tmp_path / "search").exists()  # refused before anything was written


def test_a_grown_search_trains_on_the_pools_and_its_best_config_reproduces_the_trial(tiny_model_path, tmp_path):
    from transformers import TrainerCallback

    pruner = {"type": "successive_halving", "min_resource": 1, "reduction_factor": 2, "grow_train_data": True}
    cfg = search_config(tiny_model_path, tmp_path, n_trials=2, pruner=pruner, keep_best_model=False)
    result = OptunaSearch(cfg).run()
    best = RunConfig.from_file(result.best_config_path)
    assert best.training.data_growth is not None and best.training.data_growth.first_step == 1
    seen = []

    class Batches(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            seen.append(train_dataloader.batch_sampler)

    retrained = Trainer(best.model_copy(update={"output_dir": str(tmp_path / "again")}), callbacks=[Batches()]).fit()
    assert seen and seen[0].pools == [(1, 16), (2, 32)]  # 64 pairs, 4 steps: pools of 1/4 and 2/4 of the rows
    rows = json.loads(result.trials_json.read_text())
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["value"] == result.best_value]
    assert complete and retrained.after.dev_score == pytest.approx(result.best_value, abs=1e-5)
    plain = Trainer(best.model_copy(update={"output_dir": str(tmp_path / "plain"), "training": best.training.model_copy(update={"data_growth": None})})).fit()
    from sentence_transformers import SentenceTransformer

    texts = ["a short question", "another, longer question about something else"]
    grown_vectors, plain_vectors = (SentenceTransformer(str(r.model_path)).encode(texts) for r in (retrained, plain))
    assert abs(grown_vectors - plain_vectors).max() > 1e-6  # the batches differed, so did what was learnt


def test_a_rerun_with_another_dev_subsample_is_refused(tiny_model_path, tmp_path):
    cfg = search_config(tiny_model_path, tmp_path, n_trials=1, dev_subsample=20)
    OptunaSearch(cfg, trial_fn=search_helpers.fake_scores).run()
    with pytest.raises(ConfigError) as err:
        OptunaSearch(cfg.model_copy(update={"dev_subsample": 30, "n_trials": 2}), trial_fn=search_helpers.fake_scores).run()
    assert "field: dev_subsample;" in str(err.value) and "dev_subsample 20" in str(err.value)
    assert OptunaSearch(cfg.model_copy(update={"n_trials": 2}), trial_fn=search_helpers.fake_scores).run().n_complete == 2
    whole = search_config(tiny_model_path, tmp_path, n_trials=1, dev_subsample=100_000, output_dir=str(tmp_path / "whole"))
    OptunaSearch(whole, trial_fn=search_helpers.fake_scores).run()
    more = OptunaSearch(whole.model_copy(update={"dev_subsample": None, "n_trials": 2}), trial_fn=search_helpers.fake_scores)
    assert more.run().n_complete == 2  # a subsample larger than dev is all of dev: the same intermediate scores
    study = more.load_study()  # a study recorded before the subsample was part of the fingerprint: not compared
    study.set_user_attr("embedft_fingerprint", {k: v for k, v in study.user_attrs["embedft_fingerprint"].items() if k != "dev_subsample"})
    assert OptunaSearch(whole.model_copy(update={"dev_subsample": 10, "n_trials": 3}), trial_fn=search_helpers.fake_scores).run().n_complete == 3
