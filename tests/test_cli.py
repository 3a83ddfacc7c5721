import json
import subprocess
import sys

import pytest
import yaml

from embedft import ConfigError
from embedft.cli import demo_config, main

from conftest import DEMO_DATA


def write_config(path, tiny_model_path, out, **training):
    cfg = {
        "data": {"source": str(DEMO_DATA), "cache": False, "max_train_pairs": 64},
        "model": {"base_model": tiny_model_path},
        "training": {"epochs": 1, "batch_size": 32, "learning_rate": 5e-4, "progress": False, **training},
        "output_dir": str(out),
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_with_set_overrides(tmp_path, tiny_model_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_path, tmp_path / "out")
    code = main(["-q", "train", str(cfg), "--set", "training.loss=CoSENTLoss", "--set", "data.max_train_pairs=32"])
    assert code == 0
    out = capsys.readouterr().out
    assert "leakage check" in out and "cosine_ap" in out and "fine-tuned" in out
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert saved["training"]["loss"] == "CoSENTLoss" and saved["data"]["max_train_pairs"] == 32
    # Running again refuses, with one line and exit code 2, until --overwrite.
    assert main(["-q", "train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("embedft: error: output directory already holds a model")
    assert main(["-q", "train", str(cfg), "--overwrite"]) == 0


@pytest.mark.parametrize("missing", ["module", "tqdm"])
def test_quiet_libraries_hides_and_restores_every_bar_when_the_model_card_changed(monkeypatch, missing):
    """A sentence-transformers without the model-card module, or without its module-level tqdm: the other
    libraries' bars are still hidden, and restored after."""
    import sentence_transformers.base.model_card as model_card
    from datasets.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    from embedft.cli import _quiet_libraries

    if missing == "module":
        monkeypatch.setitem(sys.modules, "sentence_transformers.base.model_card", None)
    else:
        monkeypatch.delattr(model_card, "tqdm")
    before = (hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled())
    with _quiet_libraries():
        assert (hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()) == (False, True)
    assert (hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()) == before


def test_evaluate_and_inspect(tmp_path, tiny_model_path, capsys):
    assert main(["-q", "data", "inspect", str(DEMO_DATA), "--set", "data.cache=false", "--save", str(tmp_path / "splits")]) == 0
    out = capsys.readouterr().out
    assert "leakage check (texts shared between splits) OK" in out and "train/dev: 0" in out
    assert (tmp_path / "splits" / "test.parquet").is_file()
    assert main(["-q", "evaluate", tiny_model_path, "--data", str(DEMO_DATA), "--set", "data.cache=false", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0.0 <= report["test"]["cosine_ap"] <= 1.0
    assert report["test"]["f1_threshold"] == report["dev"]["f1_threshold"]


def test_user_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  lr: 0.1\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training.lr" in err and "Traceback" not in err
    assert main(["data", "inspect", str(tmp_path / "missing.csv")]) == 2
    assert "data file not found" in capsys.readouterr().err
    with pytest.raises(ConfigError):  # --debug: the error itself, with its traceback
        main(["--debug", "train", str(bad)])


def test_init_writes_a_config_train_accepts(tmp_path, capsys):
    path = tmp_path / "new.yaml"
    assert main(["init", str(path), "--data", "pairs.csv"]) == 0
    from embedft import RunConfig

    assert RunConfig.from_file(path).data.source == "pairs.csv"
    assert main(["init", str(path)]) == 2
    sts = tmp_path / "sts.yaml"
    assert main(["init", str(sts), "--task", "sts"]) == 0
    assert RunConfig.from_file(sts).loss_name == "CoSENTLoss"
    assert main(["init", str(tmp_path / "x.yaml"), "--task", "nope"]) == 2


def test_tasks_lists_every_registered_task(capsys):
    from embedft import TASKS

    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for task in TASKS.values():
        assert f"{task.name}: primary metric {task.primary_metric}" in out and task.default_loss in out


def test_data_inspect_of_a_beir_folder(tmp_path, capsys):
    from test_convert import _beir

    folder = _beir(tmp_path / "beir")
    assert main(["data", "inspect", str(folder), "--set", "task=retrieval", "--set", "data.cache=false"]) == 0
    out = capsys.readouterr().out
    assert "corpus 31 documents" in out and "leakage check (texts shared between splits) OK" in out


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "embedft", "--help"], capture_output=True, text=True, check=True)
    assert "train" in out.stdout and "demo" in out.stdout


def test_demo_config_points_at_shipped_data():
    cfg = demo_config()
    assert cfg.data.source.endswith("demo_product_codes.tsv")
    from pathlib import Path

    assert Path(cfg.data.source).is_file()


def test_the_demo_data_is_what_its_generator_writes(tmp_path):
    """embedft/resources/demo_product_codes.tsv comes from scripts/make_demo_data.py (seeded): regenerating gives the same bytes."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "make_demo_data.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "demo.tsv")], check=True, capture_output=True)
    assert (tmp_path / "demo.tsv").read_bytes() == Path(demo_config().data.source).read_bytes()
    from embedft import DatasetBuilder

    built = DatasetBuilder(demo_config().data).build()
    assert built.report.components == 250 and set(built.report.leakage.values()) == {0} and not built.report.warnings


def test_train_repeats_from_the_command_line(tmp_path, tiny_model_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_path, tmp_path / "out", max_steps=2)
    assert main(["-q", "train", str(cfg), "--repeats", "2", "--set", "training.bootstrap.resamples=100"]) == 0
    out = capsys.readouterr().out
    assert "2 seeds (42, 43) on the same splits" in out and "verdict: " in out
    stored = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert stored["repeats"]["seeds"] == [42, 43] and yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["training"]["repeats"] == 2
    assert main(["-q", "train", str(cfg), "--repeats", "0", "--overwrite"]) == 2
    assert "training.repeats" in capsys.readouterr().err


def test_search_command_prints_the_table_and_a_trainable_best_config(tmp_path, tiny_model_path, capsys):
    base = yaml.safe_load(write_config(tmp_path / "base.yaml", tiny_model_path, tmp_path / "unused").read_text())
    cfg = {
        "base": base,
        "space": {"training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}},
        "n_trials": 5,
        "output_dir": str(tmp_path / "from-file"),
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["-q", "search", str(path), "--n-trials", "2", "--output-dir", str(tmp_path / "s"), "--set", "base.training.batch_size=16"])
    assert code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("#"))
    assert lines[header].split()[:5] == ["#", "state", "value", "gain", "learning_rate"]
    assert [line.split()[1] for line in lines[header + 1 : header + 4]] == ["REFERENCE", "COMPLETE", "COMPLETE"]  # the base model first
    assert "trials: 2 complete, 0 pruned, 0 failed" in out
    saved = yaml.safe_load((tmp_path / "s" / "search.yaml").read_text())
    assert saved["n_trials"] == 2 and saved["base"]["training"]["batch_size"] == 16
    assert not (tmp_path / "from-file").exists()
    best = yaml.safe_load((tmp_path / "s" / "best_config.yaml").read_text())
    assert best["training"]["batch_size"] == 16 and 1e-4 <= best["training"]["learning_rate"] <= 1e-3
    assert main(["-q", "train", str(tmp_path / "s" / "best_config.yaml")]) == 0
