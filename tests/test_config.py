import json

import pytest

from embedft import ConfigError, RunConfig, load_config
from embedft.errors import EmbedftError


def test_defaults_and_roundtrip_yaml_json(tmp_path):
    cfg = RunConfig.from_dict({"data": {"source": "x.csv", "columns": {"text1": "q1"}}, "model": {"dense": {"out_features": 64}}, "training": {"loss": "CoSENTLoss", "epochs": 2}})
    for name in ("c.yaml", "c.json"):
        path = cfg.save(tmp_path / name)
        assert RunConfig.from_file(path) == cfg
    assert json.loads((tmp_path / "c.json").read_text())["training"]["loss"] == "CoSENTLoss"
    assert cfg.loss_name == "CoSENTLoss"
    assert RunConfig().loss_name == "OnlineContrastiveLoss"


def test_unknown_key_names_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.field == "training.epochz"
    assert "unknown config key" in str(err.value)


@pytest.mark.parametrize(
    "data, field, needle",
    [
        ({"data": {"splits": {"train": 0.8, "dev": 0.2, "test": 0.2}}}, "data.splits", "sum to 1"),
        ({"data": {"splits": {"train": 1.5, "dev": 0.1, "test": 0.1}}}, "data.splits.train", "less than 1"),
        ({"task": "telepathy"}, "task", "unknown task"),
        ({"training": {"loss": "TripletLoss"}}, "training.loss", "not allowed for task"),
        ({"training": {"loss": "NoSuchLoss"}}, "training.loss", "not allowed"),
        ({"training": {"hard_negatives": True}}, "training.hard_negatives", "hard_negatives"),
        ({"model": {"freeze_backbone": True}}, "model", "dense head"),
        ({"training": {"batch_size": 0}}, "training.batch_size", "greater than or equal to 2"),
        ({"training": {"scheduler": "wavy"}}, "training.scheduler", "linear"),
        ({"data": {"max_train_pairs": -5}}, "data.max_train_pairs", "greater than 0"),
        ({"data": {"columns": {"question": "q"}}}, "data.columns", "unknown column role"),
    ],
)
def test_invalid_configs(data, field, needle):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(data)
    assert err.value.field == field
    assert needle in str(err.value)
    assert isinstance(err.value, EmbedftError)


def test_overrides_parse_scalars():
    cfg = RunConfig().with_overrides(["training.learning_rate=3e-5", "training.epochs=2", "model.max_seq_length=null", "data.source=a.tsv", "model.dense.out_features=16"])
    assert cfg.training.learning_rate == pytest.approx(3e-5)
    assert cfg.training.epochs == 2
    assert cfg.data.source == "a.tsv"
    assert cfg.model.dense.out_features == 16
    with pytest.raises(ConfigError) as err:
        RunConfig().with_overrides(["training.nope=1"])
    assert err.value.field == "training.nope"
    with pytest.raises(ConfigError):
        RunConfig().with_overrides(["no-equals-sign"])


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("task: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(unsafe)
