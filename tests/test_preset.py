"""The search preset (``space: auto``, ``embedft search --preset auto``): a valid task-aware space sized to the budget."""

import itertools

import pytest
import yaml

from embedft import ConfigError, RunConfig, SearchConfig
from embedft.cli import main
from embedft.search import resolve_params
from embedft.search.config import CategoricalParam, FloatParam, IntParam
from embedft.search.preset import TIERS, auto_space, loss_choices
from embedft.tasks import TASKS

from conftest import DEMO_DATA

BUDGETS = [1, 6, 12, 25, 60]


def corners(space):
    """Every combination of the categorical choices, with every numeric range at its low and at its high end."""
    keys = list(space)
    options = []
    for key in keys:
        p = space[key]
        options.append(p.grid() if isinstance(p, CategoricalParam) else ["low", "high"])
    for combo in itertools.product(*options):
        for end in ("low", "high"):
            yield {k: (getattr(space[k], end) if v in ("low", "high") and not isinstance(space[k], CategoricalParam) else v) for k, v in zip(keys, combo, strict=True)}


@pytest.mark.parametrize("n_trials", BUDGETS)
@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_gets_a_valid_auto_space_at_every_budget(task, n_trials):
    cfg = SearchConfig.from_dict({"base": {"task": task}, "space": "auto", "n_trials": n_trials})
    assert cfg.preset == "auto" and "training.learning_rate" in cfg.space
    spec = TASKS[task]
    loss = cfg.space.get("training.loss")
    if loss is not None:
        assert set(loss.choices) <= set(spec.losses) and len(loss.choices) > 1
        assert not any(spec.losses[n].needs_guide for n in loss.choices)  # no guide model in the base config
    # No combination of the searched values is an impossible config (a trial that fails before it starts).
    for point in corners(cfg.space):
        resolve_params(cfg.base, point)
    # Every value is in a sane range for fine-tuning.
    lr = cfg.space["training.learning_rate"]
    assert isinstance(lr, FloatParam) and lr.log and 1e-6 <= lr.low < lr.high <= 1e-3
    if "training.epochs" in cfg.space:
        assert isinstance(cfg.space["training.epochs"], IntParam) and cfg.space["training.epochs"].high <= 5


@pytest.mark.parametrize("task", sorted(TASKS))
def test_more_trials_search_more_parameters(task):
    keys = [set(auto_space(RunConfig(task=task), n)) for n in BUDGETS]
    for fewer, more in itertools.pairwise(keys):
        assert fewer <= more
    assert len(keys[0]) == 1 and len(keys[-1]) >= 5
    assert len(auto_space(RunConfig(task=task), TIERS[1] - 1)) == 1


def test_losses_follow_the_base_config():
    assert "GISTEmbedLoss" not in loss_choices(RunConfig(task="retrieval"))
    guided = RunConfig.from_dict({"task": "retrieval", "training": {"guide_model": "some/guide"}})
    assert "GISTEmbedLoss" in loss_choices(guided)
    assert "CachedMultipleNegativesRankingLoss" not in loss_choices(RunConfig(task="retrieval"))  # the same loss as MNRL
    # With hard negatives on, only losses that take them.
    hard = RunConfig.from_dict({"training": {"loss": "MultipleNegativesRankingLoss", "hard_negatives": True}})
    assert loss_choices(hard) == ["MultipleNegativesRankingLoss"]
    # A frozen backbone on cached embeddings: no loss that cannot train a head on them.
    frozen = RunConfig.from_dict({"task": "retrieval", "model": {"freeze_backbone": True, "dense": {"out_features": 8}}})
    assert "CachedMultipleNegativesRankingLoss" not in loss_choices(frozen)


def test_hard_negatives_are_searched_where_every_loss_takes_them():
    hard = RunConfig.from_dict({"training": {"loss": "MultipleNegativesRankingLoss"}})
    # Pair classification mixes losses with and without hard negatives: the flag is not searched (a flat space cannot switch it per loss).
    assert "training.hard_negatives" not in auto_space(hard, 25)
    mining = RunConfig.from_dict({"task": "retrieval", "data": {"mine_hard_negatives": {"num_negatives": 1}}})
    space = SearchConfig.from_dict({"base": mining.to_dict(), "space": "auto", "n_trials": 25}).space
    assert {"data.mine_hard_negatives.range_min", "data.mine_hard_negatives.relative_margin"} <= set(space)
    assert "training.loss" not in space  # MultipleNegativesRankingLoss is the one retrieval loss without a guide model
    for point in corners({k: space[k] for k in ("data.mine_hard_negatives.range_min", "data.mine_hard_negatives.relative_margin", "training.batch_size")}):
        resolve_params(RunConfig.from_dict(mining.to_dict()), point)


def test_the_filled_space_is_saved_and_reproduces(tmp_path):
    cfg = SearchConfig.from_dict({"base": {"task": "sts"}, "space": "auto", "n_trials": 25})
    path = cfg.save(tmp_path / "search.yaml")
    written = yaml.safe_load(path.read_text())
    assert isinstance(written["space"], dict) and "training.loss" in written["space"]
    again = SearchConfig.from_file(path)
    assert again.space == cfg.space and again.preset is None  # explicit now: a later embedft's preset cannot change it


def test_overrides_resize_an_auto_space_and_an_explicit_space_wins():
    cfg = SearchConfig.from_dict({"space": "auto", "n_trials": 3})
    assert set(cfg.space) == {"training.learning_rate"}
    bigger = cfg.with_overrides({"n_trials": 30})
    assert {"training.loss", "training.batch_size", "training.epochs"} <= set(bigger.space) and bigger.preset == "auto"
    sts = bigger.with_overrides(["base.task=sts"])
    assert set(sts.space["training.loss"].choices) <= set(TASKS["sts"].losses)
    mine = {"training.epochs": {"type": "int", "low": 1, "high": 2}}
    explicit = bigger.with_overrides({"space": mine})
    assert set(explicit.space) == {"training.epochs"} and explicit.preset is None
    assert set(explicit.with_overrides({"n_trials": 3}).space) == {"training.epochs"}
    # A written-out space is not touched by overrides.
    plain = SearchConfig.from_dict({"space": mine, "n_trials": 3}).with_overrides({"n_trials": 50})
    assert set(plain.space) == {"training.epochs"}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"space": "magic"}, "space"),
        ({"space": "auto", "base": {"task": "nope"}}, "base.task"),
        ({"space": "auto", "n_trials": 0}, "n_trials"),
        ({"space": "auto", "base": {"training": {"learning_rate": 5}}}, "base.training.learning_rate"),
    ],
)
def test_bad_preset_configs_name_their_field(data, field):
    with pytest.raises(ConfigError) as err:
        SearchConfig.from_dict(data)
    assert err.value.field == field


def test_the_cli_searches_with_the_auto_preset_and_no_config_file(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "auto"
    sets = [
        f"base.model.base_model={tiny_model_path}",
        "base.data.cache=false",
        "base.data.max_train_pairs=48",
        "base.training.eval_steps=1",
        "sampler.type=random",
        "pruner.type=none",
    ]
    argv = ["-q", "search", "--preset", "auto", "--data", str(DEMO_DATA), "--n-trials", "2", "--output-dir", str(out)]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    printed = capsys.readouterr().out
    assert "best trial #" in printed and "training.learning_rate" in printed
    saved = yaml.safe_load((out / "search.yaml").read_text())
    assert set(saved["space"]) == {"training.learning_rate"} and saved["base"]["data"]["source"] == str(DEMO_DATA)
    assert SearchConfig.from_file(out / "search.yaml").space["training.learning_rate"].low > 0


def test_the_cli_refuses_no_config_and_no_preset_and_a_preset_over_a_written_space(tmp_path, capsys):
    assert main(["-q", "search"]) == 2
    assert "--preset auto" in capsys.readouterr().err
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump({"space": {"training.epochs": {"type": "int", "low": 1, "high": 2}}}))
    assert main(["-q", "search", str(config), "--preset", "auto"]) == 2
    assert "space" in capsys.readouterr().err
    config.write_text(yaml.safe_dump({"space": "auto", "base": {"task": "sts"}}))
    assert main(["-q", "search", str(config), "--preset", "auto", "--task", "nope"]) == 2
    assert "base.task" in capsys.readouterr().err
