import dataclasses

import pytest

from embedft import TASKS, ConfigError, DatasetBuilder, Trainer, get_task, register_task
from embedft.tasks import TaskSpec

from conftest import make_task_rows


def _built(name):
    return DatasetBuilder(task=name, cache=False, splits={"train": 0.6, "dev": 0.2, "test": 0.2}).build(make_task_rows(name))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_entry_contract(name, tiny_model_path, tmp_path):
    """Every registered task: build -> every loss builds and gets its columns -> the training-time
    evaluator agrees with the report -> train a few steps -> save -> reload gives the same metrics."""
    from sentence_transformers import SentenceTransformer

    task = get_task(name)
    assert task.default_loss in task.losses
    assert set(task.input_columns) <= set(task.column_aliases)
    assert set(task.text_columns) <= set(task.input_columns)
    built = _built(name)
    assert sum(built.report.leakage.values()) == 0
    model = SentenceTransformer(tiny_model_path, device="cpu")
    for loss_name, spec in task.losses.items():
        loss = spec.build(model, **({"guide": model} if spec.needs_guide else {}))
        assert type(loss).__name__ == loss_name
        ds = built.dataset("train", loss=loss_name)
        assert len(ds) > 0
        expected = {
            "labelled-pairs": {"sentence1", "sentence2", "label"},
            "scored-pairs": {"sentence1", "sentence2", "score"},
            "triplets": {"anchor", "positive", "negative"},
            "positive-pairs": {"anchor", "positive"},
        }[spec.input_format]
        assert expected <= set(ds.column_names)
    evaluator = task.evaluator_factory(built.dev, "dev", 16, built.corpus)
    scores = evaluator(model)
    assert evaluator.primary_metric.endswith(task.primary_metric)
    report = task.evaluate(model, built.dev, built.test, 16, False, built.corpus)
    assert task.primary_metric in report["dev"] and task.primary_metric in report["test"]
    # The training-time evaluator and the report agree on dev. Mining ranks thousands of
    # near-tied pairs from the random tiny model, where float rounding reorders ties
    # (with MiniLM the two agree exactly), hence its wider tolerance.
    tolerance = 0.01 if name == "paraphrase-mining" else 1e-4
    assert report["dev"][task.primary_metric] == pytest.approx(scores[evaluator.primary_metric], abs=tolerance)

    result = Trainer(task=name, data=built, base_model=tiny_model_path, output_dir=str(tmp_path / "run"), max_steps=3, batch_size=8, learning_rate=1e-3, progress=False).fit()
    assert result.train_steps == 3 and result.before is not None
    reloaded = SentenceTransformer(str(result.model_path), device="cpu")
    again = task.evaluate(reloaded, built.dev, built.test, 16, False, built.corpus)
    assert again["test"][task.primary_metric] == pytest.approx(result.after.test[task.primary_metric], abs=1e-5)
    assert result.summary().count(task.primary_metric) >= 1


def test_unknown_task_and_duplicate_registration():
    with pytest.raises(ConfigError) as err:
        get_task("nope")
    assert "pair-classification" in str(err.value)
    with pytest.raises(ConfigError, match="already registered"):
        register_task(get_task("pair-classification"))


def test_bad_loss_kwargs_name_the_field(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model_path, device="cpu")
    with pytest.raises(ConfigError) as err:
        get_task("pair-classification").loss(None).build(model, wrong=1)
    assert err.value.field == "training.loss_kwargs.wrong" and "margin" in str(err.value)


def test_spec_is_frozen():
    task = get_task("pair-classification")
    assert isinstance(task, TaskSpec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.default_loss = "CoSENTLoss"  # type: ignore[misc]
    with pytest.raises(TypeError):
        task.losses["X"] = None  # type: ignore[index]
