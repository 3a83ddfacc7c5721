"""Hard-negative mining as a DatasetBuilder step: train-split candidates only, counted."""

import pytest

from embedft import ConfigError, DataError, DatasetBuilder, RunConfig, Trainer
from embedft.config import MiningConfig
from embedft.data import normalize_text

from conftest import make_task_rows


@pytest.fixture(scope="module")
def model(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_model_path, device="cpu")


@pytest.mark.parametrize("task", ["retrieval", "triplets"])
def test_mined_negatives_come_from_train_and_are_counted(task, model):
    builder = DatasetBuilder(task=task, cache=False, splits={"train": 0.6, "dev": 0.2, "test": 0.2})
    built = builder.build(make_task_rows(task))
    mined, report = builder.mine_hard_negatives(built, model, MiningConfig(num_negatives=2))
    assert report.rows == len(built.train) and report.num_negatives == 2
    assert report.rows_with_negatives == len(mined.train) and report.negatives_found == 2 * len(mined.train)
    assert report.dropped_rows == report.rows - report.rows_with_negatives
    held_out = set()
    for name in ("dev", "test"):
        frame = built.split(name)
        for column in ("positive", "negative"):
            if column in frame.columns:
                held_out |= {normalize_text(t) for t in frame[column].dropna()}
    anchor = "query" if task == "retrieval" else "anchor"
    for row in mined.train.itertuples(index=False):
        negatives = [getattr(row, f"mined_{i}") for i in (1, 2)]
        assert not {normalize_text(n) for n in negatives} & held_out
        assert normalize_text(getattr(row, anchor)) not in {normalize_text(n) for n in negatives}
        assert row.positive not in negatives
    ds = mined.dataset("train")
    assert {"anchor", "positive"} <= set(ds.column_names) and len(ds.column_names) >= 4
    assert mined.dev is built.dev and mined.test is built.test


def test_mining_in_a_training_run(tiny_model_path, tmp_path):
    rows = make_task_rows("retrieval")
    result = Trainer(
        task="retrieval", data=rows, base_model=tiny_model_path, output_dir=str(tmp_path / "run"), cache=False, mine_hard_negatives={"num_negatives": 1}, max_steps=2, batch_size=8, progress=False
    ).fit(baseline=False)
    assert result.mining is not None and result.mining.negatives_found > 0
    assert "hard-negative mining" in result.summary()


def test_impossible_mining_is_a_clear_error(model):
    builder = DatasetBuilder(task="triplets", cache=False, splits={"train": 0.6, "dev": 0.2, "test": 0.2})
    built = builder.build(make_task_rows("triplets"))
    with pytest.raises(DataError) as err:
        builder.mine_hard_negatives(built, model, MiningConfig(num_negatives=1, max_score=-2.0))
    assert err.value.field == "data.mine_hard_negatives" and "relax" in str(err.value)


def test_mining_is_refused_where_no_loss_takes_negatives():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"task": "sts", "data": {"mine_hard_negatives": {"num_negatives": 1}}})
    assert err.value.field == "data.mine_hard_negatives"
