import pytest

from embedft import TASKS, ConfigError, DatasetBuilder, get_task, register_task
from embedft.tasks import TaskSpec

from conftest import DEMO_DATA


@pytest.fixture(scope="module")
def demo_splits():
    return DatasetBuilder(cache=False).build(str(DEMO_DATA))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_entry_contract(name, tiny_model_path, demo_splits):
    from sentence_transformers import SentenceTransformer

    task = get_task(name)
    assert task.default_loss in task.losses
    assert set(task.input_columns) <= set(task.column_aliases)
    model = SentenceTransformer(tiny_model_path, device="cpu")
    for loss_name, spec in task.losses.items():
        loss = spec.build(model)
        assert type(loss).__name__ == loss_name
        ds = demo_splits.dataset("train", loss=loss_name)
        assert len(ds) > 0
    evaluator = task.evaluator_factory(demo_splits.dev, "dev", 16)
    scores = evaluator(model)
    assert evaluator.primary_metric.endswith(task.primary_metric)
    assert 0.0 <= scores[evaluator.primary_metric] <= 1.0
    report = task.evaluate(model, demo_splits.dev, demo_splits.test, 16)
    assert task.primary_metric in report["dev"] and task.primary_metric in report["test"]
    # The training-time evaluator and the report agree on dev.
    assert report["dev"][task.primary_metric] == pytest.approx(scores[evaluator.primary_metric], abs=1e-4)


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
    assert err.value.field == "training.loss_kwargs"


def test_spec_is_frozen():
    task = get_task("pair-classification")
    assert isinstance(task, TaskSpec)
    with pytest.raises(Exception):
        task.default_loss = "CoSENTLoss"  # type: ignore[misc]
    with pytest.raises(TypeError):
        task.losses["X"] = None  # type: ignore[index]
