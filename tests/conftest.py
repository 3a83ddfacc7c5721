"""Shared fixtures: a tiny offline BERT built once per session, small pair datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "embedft" / "resources" / "demo_duplicate_questions.tsv"
SHARED_DATA = REPO.parent / "shared" / "data"
QUORA = SHARED_DATA / "quora_duplicates" / "quora_duplicate_pairs.tsv.gz"

_VOCAB_SENTENCES = [
    "how do i learn python quickly",
    "what is the best way to cook rice",
    "why is the sky blue during the day",
    "how can i reverse or sort a list in python",
    "where should i travel in europe this summer",
    "what are good exercises for back pain",
    "how much money should i save for retirement",
    "which phone has the best camera",
    "how do i boil an egg soft or hard",
]


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """A 2-layer, 32-wide BERT with a WordPiece tokenizer trained here: a SentenceTransformer folder."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny-bert")
    sentences = _VOCAB_SENTENCES + [line.split("\t")[2] for line in DEMO_DATA.read_text().splitlines()[1:]]
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(sentences, trainers.WordPieceTrainer(vocab_size=800, special_tokens=special))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    hf_dir = root / "hf"
    BertModel(config).save_pretrained(hf_dir)
    fast.save_pretrained(hf_dir)
    st = SentenceTransformer(modules=[Transformer(str(hf_dir), max_seq_length=64), Pooling(32, "mean")], device="cpu")
    st_dir = root / "st"
    st.save(str(st_dir))
    return str(st_dir)


def make_pairs(n_groups: int = 40, seed: int = 0) -> list[dict]:
    """Rows in groups of three linked questions (2 positives + 1 hard negative per group)."""
    import random

    rng = random.Random(seed)
    topics = ["python", "rice", "sky", "europe", "retirement", "camera", "eggs", "guitar", "taxes", "running"]
    rows = []
    for g in range(n_groups):
        t = topics[g % len(topics)]
        a, b, c = f"how do i {t} thing {g}", f"what is the way to {t} thing {g}", f"why does {t} thing {g} fail"
        rows.append({"question1": a, "question2": b, "is_duplicate": 1})
        rows.append({"question1": b, "question2": c, "is_duplicate": 0})
        if rng.random() < 0.5:
            rows.append({"question1": a, "question2": c + " today", "is_duplicate": 0})
    return rows


def make_task_rows(task: str, n_groups: int = 30, seed: int = 0) -> list[dict]:
    """A few dozen rows in the column layout of ``task``, in groups that share no text."""
    import random

    if task in ("pair-classification", "paraphrase-mining"):
        return make_pairs(n_groups, seed)
    rng = random.Random(seed)
    topics = ["python", "rice", "sky", "europe", "retirement", "camera", "eggs", "guitar", "taxes", "running"]
    rows: list[dict] = []
    for g in range(n_groups):
        t = topics[g % len(topics)]
        a, b, c = f"how do i {t} thing {g}", f"what is the way to {t} thing {g}", f"why does {t} thing {g} fail"
        if task == "sts":
            rows.append({"sentence1": a, "sentence2": b, "score": round(rng.uniform(3.5, 5.0), 2)})
            rows.append({"sentence1": b, "sentence2": c, "score": round(rng.uniform(0.0, 1.5), 2)})
            rows.append({"sentence1": a, "sentence2": c + " today", "score": round(rng.uniform(1.5, 3.5), 2)})
        elif task == "triplets":
            rows.append({"anchor": a, "positive": b, "negative": c})
            rows.append({"anchor": b + " please", "positive": a + " now", "negative": c + " today"})
        elif task == "retrieval":
            doc = f"a guide to {t} thing {g}: the way to {t} it well"
            rows.append({"query": a, "positive": doc, "negative": f"the history of {t} thing {g + 1000}"})
            rows.append({"query": b, "positive": doc + " (second edition)", "negative": f"a note on {t} number {g}"})
        else:  # pragma: no cover
            raise ValueError(task)
    return rows


@pytest.fixture
def pairs() -> list[dict]:
    return make_pairs()


@pytest.fixture
def no_cache(tmp_path, monkeypatch):
    """Point the dataset cache at a temporary folder."""
    monkeypatch.setenv("EMBEDFT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def train_kwargs(tiny_model_path, tmp_path) -> dict:
    """Keyword arguments for a fast Trainer run on the demo data with the tiny model."""
    return dict(
        data=str(DEMO_DATA),
        base_model=tiny_model_path,
        output_dir=str(tmp_path / "run"),
        epochs=1,
        batch_size=32,
        learning_rate=5e-4,
        progress=False,
        cache=False,
        max_train_pairs=96,
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server on loopback for the session (Debian's package).

    Skipped when no server can be started, except under ``EMBEDFT_REQUIRE_POSTGRES=1``
    (set by CI), where that is a failure.
    """
    import glob
    import shutil
    import subprocess

    def unavailable(reason: str):
        if os.environ.get("EMBEDFT_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required here but {reason}")
        pytest.skip(f"no PostgreSQL server: {reason}")

    pytest.importorskip("psycopg", reason="psycopg is not installed")
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = bins[-1] if bins else shutil.which("initdb")
    if not initdb:
        unavailable("initdb not found (apt-get install postgresql)")
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    import tempfile

    # Not under pytest's tmp folder: that one is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="embedft-pg-"))
    data = root / "data"
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if not shutil.which("runuser"):
            unavailable("running as root without runuser")
        shutil.chown(root, "postgres")
        os.chmod(root, 0o700)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    try:
        subprocess.run([*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        unavailable(f"could not start one: {exc}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
