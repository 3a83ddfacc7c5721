"""Recipes (training.recipe), multi-task training (training.extra_losses) and length-grouped batches."""

import pytest
import yaml

from embedft import ConfigError, RunConfig, Trainer
from embedft.recipes import QUALITY, RECIPES, expand_recipe, recipe_values
from embedft.tasks import TASKS

from conftest import make_task_rows


# ------------------------------------------------------------------ expansion: plain config, set fields win
def test_quality_fills_only_unset_fields():
    cfg = RunConfig.from_dict({"training": {"recipe": "quality", "epochs": 1, "learning_rate": 1e-5}, "model": {"max_seq_length": 48}})
    assert cfg.training.epochs == 1 and cfg.training.learning_rate == 1e-5 and cfg.model.max_seq_length == 48  # set: they win
    assert cfg.training.group_by_length is True and cfg.training.warmup_ratio == 0.05 and cfg.training.loss == "OnlineContrastiveLoss"
    # an explicit value equal to the default still counts as set
    assert RunConfig.from_dict({"training": {"recipe": "quality", "epochs": 1.0}}).training.epochs == 1.0
    assert RunConfig.from_dict({"training": {"recipe": "quality"}}).training.epochs == 2


@pytest.mark.parametrize("how", ["dict", "overrides", "flat-kwargs", "config-object"])
def test_every_way_in_expands_the_same(how, tiny_model_path):
    given = {"model": {"base_model": tiny_model_path}, "training": {"batch_size": 8}}
    if how == "dict":
        cfg = RunConfig.from_dict({**given, "training": {**given["training"], "recipe": "quality"}})
    elif how == "overrides":  # what `embedft train --recipe quality` does to a loaded config
        cfg = RunConfig.from_dict(given).with_overrides({"training.recipe": "quality"})
    elif how == "flat-kwargs":
        cfg = Trainer(base_model=tiny_model_path, batch_size=8, recipe="quality").config
    else:
        cfg = Trainer(RunConfig.from_dict(given), recipe="quality").config
    assert cfg.training.batch_size == 8 and cfg.model.base_model == tiny_model_path
    assert cfg.training.epochs == 2 and cfg.training.group_by_length and cfg.model.max_seq_length == "auto"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_has_a_quality_recipe_that_validates(task):
    assert task in QUALITY
    cfg = RunConfig.from_dict({"task": task, "training": {"recipe": "quality"}})
    for dotted, value in recipe_values("quality", task).items():
        section, *rest = dotted.split(".")
        got = getattr(getattr(cfg, section), rest[0])
        if isinstance(value, dict):  # a section: the recipe's keys set in it
            assert {k: got.model_dump()[k] for k in value} == value, dotted
        else:
            assert got == value, dotted
    # expanded once: a full dump with the recipe removed is the same config
    data = cfg.to_dict()
    data["training"]["recipe"] = "default"
    assert RunConfig.from_dict(data).model_dump(exclude={"training": {"recipe"}}) == cfg.model_dump(exclude={"training": {"recipe"}})


def test_default_recipe_sets_nothing_and_unknown_is_refused():
    assert all(v == {} for v in RECIPES["default"].values()) and recipe_values("default", "sts") == {}
    assert RunConfig.from_dict({"training": {"recipe": "default"}}) == RunConfig()
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"training": {"recipe": "best"}})
    assert err.value.field == "training.recipe"
    with pytest.raises(ConfigError):
        expand_recipe({"training": {"recipe": "best"}})


def test_recipe_does_not_touch_the_callers_dict():
    data = {"training": {"recipe": "quality"}}
    RunConfig.from_dict(data)
    assert data == {"training": {"recipe": "quality"}}


def test_multi_task_settings_are_checked_before_any_model_loads():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"training": {"extra_losses": ["OnlineContrastiveLoss"]}})  # the default loss again
    assert err.value.field == "training.extra_losses"
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"training": {"extra_losses": ["TripletLoss"]}})  # not a pair-classification loss
    assert "allowed" in str(err.value)
    with pytest.raises(ConfigError):
        RunConfig.from_dict({"training": {"extra_losses": ["CoSENTLoss", "CoSENTLoss"]}})
    # hard negatives need one loss (of several) that takes them
    ok = RunConfig.from_dict({"training": {"hard_negatives": True, "extra_losses": ["MultipleNegativesRankingLoss"]}})
    assert ok.training.hard_negatives
    with pytest.raises(ConfigError):
        RunConfig.from_dict({"training": {"hard_negatives": True, "extra_losses": ["CoSENTLoss"]}})
    with pytest.raises(ConfigError) as err:  # a loss object replaces one loss: it cannot be multi-task
        Trainer(extra_losses=["MultipleNegativesRankingLoss"], loss=lambda model: None)
    assert err.value.field == "training.extra_losses"


# ------------------------------------------------------------------ training: the expanded config reproduces the run
def _kwargs(tiny_model_path, tmp_path, name):
    return dict(base_model=tiny_model_path, output_dir=str(tmp_path / name), batch_size=16, learning_rate=5e-4, progress=False, cache=False)


def test_expanded_config_retrains_to_the_same_dev_score(tiny_model_path, tmp_path):
    first = Trainer(data=make_task_rows("pair-classification", 40), recipe="quality", epochs=1, **_kwargs(tiny_model_path, tmp_path, "recipe")).fit()
    saved = yaml.safe_load(first.config_path.read_text())
    assert saved["training"]["recipe"] == "quality" and saved["training"]["group_by_length"] is True
    assert isinstance(saved["model"]["max_seq_length"], int)  # auto, sized to the data, recorded as a number
    saved["training"]["recipe"] = "default"
    saved["output_dir"] = str(tmp_path / "plain")
    again = Trainer(saved, data=make_task_rows("pair-classification", 40)).fit()
    assert again.after.dev_score == pytest.approx(first.after.dev_score, abs=1e-6)
    assert again.train_loss == pytest.approx(first.train_loss, rel=1e-6)


def test_max_seq_length_auto_follows_the_data(tiny_model_path, tmp_path):
    rows = [dict(r, question1=r["question1"] + " and more" * 12) for r in make_task_rows("pair-classification", 40)]
    short = Trainer(data=make_task_rows("pair-classification", 40), max_seq_length="auto", max_steps=1, **_kwargs(tiny_model_path, tmp_path, "short")).fit()
    long = Trainer(data=rows, max_seq_length="auto", max_steps=1, **_kwargs(tiny_model_path, tmp_path, "long")).fit()
    n_short = RunConfig.from_file(short.config_path).model.max_seq_length
    n_long = RunConfig.from_file(long.config_path).model.max_seq_length
    assert isinstance(n_short, int) and isinstance(n_long, int)
    assert n_short % 8 == 0 and n_short < n_long <= 64  # 64: the tiny model's own limit


def test_multi_task_trains_both_losses_in_one_trainer(tiny_model_path, tmp_path):
    run = Trainer(data=make_task_rows("paraphrase-mining", 40), task="paraphrase-mining", recipe="quality", epochs=1, **_kwargs(tiny_model_path, tmp_path, "mt")).fit()
    assert run.loss == "MultipleNegativesRankingLoss+OnlineContrastiveLoss"
    positives = sum(1 for r in make_task_rows("paraphrase-mining", 40) if r["is_duplicate"] == 1)
    assert run.train_pairs > positives  # the labelled pairs and the positive pairs both trained
    assert run.train_steps > 0 and run.after.dev_score == run.after.dev_score


def test_round_robin_takes_as_many_batches_of_each_dataset_as_the_smallest_has(tiny_model_path, tmp_path):
    common = dict(extra_losses=["MultipleNegativesRankingLoss"], batch_size=8, epochs=1)
    kw = {**_kwargs(tiny_model_path, tmp_path, "rr"), **common}
    rr = Trainer(data=make_task_rows("pair-classification", 40), multi_dataset_batch_sampler="round_robin", **kw).fit()
    pr = Trainer(data=make_task_rows("pair-classification", 40), **{**kw, "output_dir": str(tmp_path / "pr")}).fit()
    assert rr.train_steps < pr.train_steps


def test_multi_task_on_a_frozen_backbone_trains_on_the_cache(tiny_model_path, tmp_path, no_cache):
    run = Trainer(
        data=make_task_rows("pair-classification", 40),
        extra_losses=["MultipleNegativesRankingLoss"],
        group_by_length=True,
        max_seq_length="auto",
        dense={"out_features": 8},
        freeze_backbone=True,
        **{**_kwargs(tiny_model_path, tmp_path, "frozen"), "cache": True},
    ).fit()
    assert run.frozen_cache is not None and run.loss == "OnlineContrastiveLoss+MultipleNegativesRankingLoss"
    assert isinstance(RunConfig.from_file(run.config_path).model.max_seq_length, int)


def test_an_extra_loss_that_needs_the_backbone_leaves_the_cache_with_a_reason(tiny_model_path, tmp_path, no_cache, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="embedft"):
        run = Trainer(
            data=make_task_rows("triplets", 20),
            task="triplets",
            extra_losses=["CachedMultipleNegativesRankingLoss"],
            loss="TripletLoss",
            dense={"out_features": 8},
            freeze_backbone=True,
            max_steps=2,
            **{**_kwargs(tiny_model_path, tmp_path, "frozen"), "cache": True},
        ).fit()
    assert run.frozen_cache is None
    assert "GradCache" in caplog.text


# ------------------------------------------------------------------ length-grouped batches
def _sampler(rows, *, no_duplicates=False, batch_size=4, seed=0):
    from datasets import Dataset

    from embedft.sampling import batch_sampler

    factory = batch_sampler(group_by_length=True, no_duplicates=no_duplicates)
    return factory(Dataset.from_dict(rows), batch_size=batch_size, drop_last=False, valid_label_columns=["label"], seed=seed)


def test_length_grouped_batches_cover_every_row_once_and_group_lengths():
    import random

    rng = random.Random(0)
    texts = ["w" * rng.randint(1, 200) for _ in range(400)]
    rows = {"sentence1": texts, "sentence2": [t[::-1] + "x" for t in texts], "label": [1.0] * 400}
    sampler = _sampler(rows, batch_size=8)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(400)) and len(batches) == len(sampler)
    spread = sum(max(len(texts[i]) for i in b) - min(len(texts[i]) for i in b) for b in batches) / len(batches)
    shuffled = list(range(400))
    rng.shuffle(shuffled)
    random_spread = sum(max(len(texts[i]) for i in shuffled[k : k + 8]) - min(len(texts[i]) for i in shuffled[k : k + 8]) for k in range(0, 400, 8)) / 50
    assert spread < random_spread / 3
    # seeded: the same epoch gives the same batches; the next epoch others
    again = _sampler(rows, batch_size=8)
    assert list(again) == batches
    again.set_epoch(1)
    assert list(again) != batches


def test_length_grouped_batches_never_repeat_a_text_when_asked():
    anchors = [f"question {i % 10} " + "x" * (i % 7) for i in range(60)]  # each text six times
    rows = {"anchor": anchors, "positive": [f"answer {i}" for i in range(60)]}
    for batch in _sampler(rows, no_duplicates=True, batch_size=5):
        texts = [anchors[i] for i in batch]
        assert len(set(texts)) == len(texts)
