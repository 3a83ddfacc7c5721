"""The frozen-backbone fast path: embedding cache, and the cached model that trains and encodes in place of the model."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from embedft import Trainer
from embedft.config import ModelConfig
from embedft.errors import ConfigError, DataError, TrainingError
from embedft.frozen import CacheStats, EmbeddingCache, _cached_classes, _ShardStore, cached_model, split_backbone
from embedft.tasks import TASKS

from conftest import DEMO_DATA

TOPICS = ["python", "rice", "sky", "europe", "retirement", "camera", "eggs", "guitar"]


def _model(path, **model_kw):
    from embedft.modeling import load_model

    cfg = {"base_model": path, "dense": {"out_features": 16}, "freeze_backbone": True, **model_kw}
    return load_model(ModelConfig(**cfg), "cpu", seed=0)


def _state(modules):
    return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(modules) for k, v in m.state_dict().items()}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's products are too small for several threads to help (they hurt on a busy machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model(tiny_model_path):
    return _model(tiny_model_path)


@pytest.fixture
def cache(model, tmp_path):
    return EmbeddingCache.for_model(model, tmp_path / "cache")


@pytest.fixture
def encode_calls(monkeypatch):
    """Counts texts passed to SentenceTransformer.encode (the backbone's only way to embed)."""
    from sentence_transformers import SentenceTransformer

    calls: list[int] = []
    original = SentenceTransformer.encode

    def counting(self, inputs, *args, **kwargs):
        calls.append(len(inputs))
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "encode", counting)
    return calls


# --------------------------------------------------------------------- datasets per input format
def _dataset(kind: str, n: int = 24):
    from datasets import Dataset

    q = [f"how do i {TOPICS[i % len(TOPICS)]} thing {i}" for i in range(n)]
    p = [f"what is the way to {TOPICS[i % len(TOPICS)]} thing {i}" for i in range(n)]
    neg = [f"why does {TOPICS[(i + 3) % len(TOPICS)]} fail {i}" for i in range(n)]
    if kind == "pairs":  # labelled pairs: half duplicates, half a paraphrase of another question
        return Dataset.from_dict({"sentence1": q, "sentence2": [p[i] if i % 2 else p[(i + 1) % n] for i in range(n)], "label": [float(i % 2) for i in range(n)]})
    if kind == "scores":
        return Dataset.from_dict({"sentence1": q, "sentence2": [p[i] if i % 2 else neg[i] for i in range(n)], "score": [0.9 if i % 2 else 0.1 for i in range(n)]})
    if kind == "positives":
        return Dataset.from_dict({"anchor": q, "positive": p})
    if kind == "triplets":
        return Dataset.from_dict({"anchor": q, "positive": p, "negative": neg})
    if kind == "classes":  # single texts with a class id (batch triplet losses)
        return Dataset.from_dict({"sentence": q[: n // 2] + p[: n // 2], "label": [i % 4 for i in range(n // 2)] * 2})
    if kind == "margins":  # MarginMSE: teacher margin sim(q, p) - sim(q, n)
        return Dataset.from_dict({"query": q, "positive": p, "negative": neg, "label": [0.5] * n})
    if kind == "distill":  # DistillKLDiv: teacher scores per candidate
        return Dataset.from_dict({"query": q, "positive": p, "negative": neg, "label": [[0.9, 0.2]] * n})
    raise AssertionError(kind)


LOSS_CASES = [
    ("OnlineContrastiveLoss", "pairs"),
    ("ContrastiveLoss", "pairs"),
    ("CoSENTLoss", "scores"),
    ("AnglELoss", "scores"),
    ("CosineSimilarityLoss", "scores"),
    ("MultipleNegativesRankingLoss", "positives"),
    ("MultipleNegativesRankingLoss", "triplets"),
    ("MultipleNegativesSymmetricRankingLoss", "positives"),
    ("TripletLoss", "triplets"),
    ("BatchAllTripletLoss", "classes"),
    ("BatchHardTripletLoss", "classes"),
    ("BatchSemiHardTripletLoss", "classes"),
    ("BatchHardSoftMarginTripletLoss", "classes"),
    ("MarginMSELoss", "margins"),
    ("DistillKLDivLoss", "distill"),
]


def _loss_class(name):
    from sentence_transformers.sentence_transformer import losses

    return getattr(losses, name)


def _split_columns(ds):
    label = next((c for c in ("label", "score") if c in ds.column_names), None)
    return [c for c in ds.column_names if c != label], label


def test_every_registry_loss_that_trains_on_cached_embeddings_is_tested():
    cacheable = {spec.name for task in TASKS.values() for spec in task.losses.values() if spec.not_on_cached_embeddings is None}
    assert cacheable <= {name for name, _ in LOSS_CASES}


@pytest.mark.filterwarnings("ignore:The MultipleNegativesSymmetricRankingLoss is deprecated:DeprecationWarning")
@pytest.mark.parametrize(("loss_name", "kind"), [*LOSS_CASES, ("MatryoshkaLoss", "positives")], ids=[f"{n}-{k}" for n, k in [*LOSS_CASES, ("MatryoshkaLoss", "positives")]])
def test_loss_on_cached_embeddings_equals_loss_on_full_model(model, cache, loss_name, kind):
    """The unchanged loss class gives the same value on the cached model as on the whole model."""
    import torch

    ds = _dataset(kind)
    text_cols, label_col = _split_columns(ds)
    labels = torch.tensor(ds[label_col]) if label_col else None
    if loss_name == "MatryoshkaLoss":

        def build(m):
            return _loss_class(loss_name)(m, _loss_class("MultipleNegativesRankingLoss")(m), [16, 8])
    else:
        build = _loss_class(loss_name)
    fast = cached_model(model, cache)
    model.eval()
    with torch.no_grad():
        full = build(model)([model.preprocess(ds[c]) for c in text_cols], labels)
        cached = build(fast)([fast.preprocess(ds[c]) for c in text_cols], labels)
    assert float(full) == pytest.approx(float(cached), rel=1e-4, abs=1e-5)


# --------------------------------------------------------------------- splitting
def test_split_backbone_separates_frozen_backbone_and_head(tiny_model_path):
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    model = _model(tiny_model_path)
    backbone, head = split_backbone(model)
    assert [type(m) for m in backbone] == [Transformer, Pooling]
    assert [type(m) for m in head] == [Dense]
    assert head[0] is list(model._modules.values())[2]  # the model's own module, not a copy

    from sentence_transformers import SentenceTransformer

    normalized = SentenceTransformer(modules=[*backbone, Dense(32, 8), Normalize()], device="cpu")
    _, head = split_backbone(normalized)
    assert [type(m) for m in head] == [Dense, Normalize]


def test_split_backbone_refuses_unfrozen_or_headless_models(tiny_model_path):
    with pytest.raises(ConfigError) as info:
        split_backbone(_model(tiny_model_path, freeze_backbone=False))
    assert info.value.field == "model.freeze_backbone" and "Transformer" in str(info.value)
    from sentence_transformers import SentenceTransformer

    with pytest.raises(ConfigError) as info:
        split_backbone(SentenceTransformer(tiny_model_path, device="cpu"))
    assert info.value.field == "model.dense" and "Transformer -> Pooling" in str(info.value)


# --------------------------------------------------------------------- the cache
def test_cache_computes_each_text_once_and_hits_after(model, cache, encode_calls):
    texts = ["how do i cook rice", "why is the sky blue", "how do i cook rice"]
    first = cache.get(texts)
    assert first.shape == (3, 32) and first.dtype == np.float32
    assert np.array_equal(first[0], first[2])
    assert cache.stats.computed == 2 and cache.stats.hits == 0 and sum(encode_calls) == 2

    again = cache.get(["why is the sky blue", "how do i cook rice"])
    assert sum(encode_calls) == 2, "a cached text was encoded again"
    assert cache.stats.hits == 2 and cache.stats.computed == 2
    assert np.array_equal(again, first[[1, 0]])

    backbone = split_backbone(model)[0]
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(modules=backbone, device="cpu").encode(texts, normalize_embeddings=False)
    np.testing.assert_allclose(first, reference, atol=1e-6)
    assert cache.get([]).shape == (0, 32)


def test_cache_survives_the_process_and_ignores_the_path(model, tiny_model_path, tmp_path, encode_calls):
    texts = ["where should i travel in europe", "which phone has the best camera"]
    first = EmbeddingCache.for_model(model, tmp_path / "cache").get(texts)
    copy = tmp_path / "copy-of-model"
    shutil.copytree(tiny_model_path, copy)
    other = EmbeddingCache.for_model(_model(str(copy)), tmp_path / "cache")  # a fresh object: reads the disk
    encode_calls.clear()
    assert np.array_equal(other.get(texts), first)
    assert encode_calls == [] and other.stats.hits == 2 and other.stats.computed == 0
    assert len(other) == 2


def test_cache_key_follows_max_seq_length_and_weights(model, tiny_model_path, tmp_path):
    import torch

    root = tmp_path / "cache"
    base = EmbeddingCache.for_model(model, root)
    key = base.key
    base.get(["a long question about cooking rice in a pot"])
    assert base.key == key  # the tokenizer's per-call truncation state is not part of the key
    short = EmbeddingCache.for_model(_model(tiny_model_path, max_seq_length=4), root)
    assert short.key != base.key
    short.get(["a long question about cooking rice in a pot"])
    assert short.stats.computed == 1 and short.stats.hits == 0

    model.max_seq_length = 4  # the key is read live: the same object now misses too
    assert base.key == short.key
    model.max_seq_length = 64

    changed = _model(tiny_model_path)
    with torch.no_grad():
        split_backbone(changed)[0][0].auto_model.embeddings.word_embeddings.weight[5] += 1.0
    assert EmbeddingCache.for_model(changed, root).key != base.key


def test_cache_root_from_environment(model, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDFT_CACHE_DIR", str(tmp_path / "env"))
    cache = EmbeddingCache.for_model(model)
    assert cache.directory == tmp_path / "env" / "embeddings" / cache.key
    cache.get(["hello"])
    assert any(cache.directory.glob("*.keys.npy")) and (cache.directory / "meta.json").is_file()


def test_cache_rejects_non_text(cache):
    with pytest.raises(DataError) as info:
        cache.get(["ok", 3])
    assert info.value.field == "texts[1]"
    with pytest.raises(DataError):
        cache.get("one string")


def test_two_cache_objects_share_one_directory(model, tmp_path, monkeypatch):
    """Writers that race both compute; every entry stays readable and correct."""
    root = tmp_path / "cache"
    a, b = EmbeddingCache.for_model(model, root), EmbeddingCache.for_model(model, root)
    a.get(["text one", "text two"])
    b.get(["text one"])  # b looks at the disk before encoding: no work
    assert b.stats.computed == 0 and b.stats.hits == 1

    monkeypatch.setattr(_ShardStore, "refresh", lambda self: 0)  # b cannot see a's next write: both compute
    x = a.get(["text three", "text four"])
    y = b.get(["text four", "text three"])
    monkeypatch.undo()
    assert b.stats.computed == 2
    np.testing.assert_array_equal(x, y[[1, 0]])

    # Leftovers of a killed writer: a temporary file and vectors without keys.
    (a.directory / ".0123-x.keys.npy.tmp-0123abcd").write_bytes(b"\x93NUMPY garbage")
    np.save(a.directory / "orphan.vectors.npy", np.zeros((3, 32), dtype=np.float32))
    (a.directory / "broken.keys.npy").write_bytes(b"not a numpy file")
    fresh = EmbeddingCache.for_model(model, root)
    assert len(fresh) == 4
    got = fresh.get(["text one", "text two", "text three", "text four"])
    assert fresh.stats.computed == 0
    np.testing.assert_array_equal(got[2:], x)


_WRITER = r"""
import hashlib, sys
import numpy as np
from pathlib import Path
from embedft.frozen import _ShardStore

store = _ShardStore(Path(sys.argv[1]), 8)
rng = np.random.default_rng(int(sys.argv[2]))
for _ in range(40):
    keys = sorted(set(rng.integers(0, 150, size=12).tolist()))
    store.add([hashlib.sha256(str(k).encode()).digest() for k in keys], np.stack([np.full(8, k, np.float32) for k in keys]))
"""


def test_concurrent_writer_processes_leave_a_readable_cache(tmp_path):
    directory = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(directory), str(seed)], stderr=subprocess.PIPE) for seed in (1, 2)]
    keys = {hashlib.sha256(str(k).encode()).digest(): k for k in range(150)}

    def check(store: _ShardStore) -> int:
        store.refresh()
        present = [d for d in keys if d in store]
        if present:
            got = store.gather(present)
            assert np.array_equal(got[:, 0], np.array([keys[d] for d in present], dtype=np.float32))
        return len(present)

    while any(p.poll() is None for p in procs):  # read while they write
        check(_ShardStore(directory, 8))
        time.sleep(0.02)
    for p in procs:
        assert p.wait() == 0, p.stderr.read().decode()
    assert check(_ShardStore(directory, 8)) > 100
    assert not list(directory.glob(".*tmp-*"))


# --------------------------------------------------------------------- training through sentence-transformers' trainer
def _train(model, ds, loss, tmp_path, *, no_duplicates=False, **settings):
    """sentence-transformers' trainer on ``model`` (the cached model or a full one), as embedft.Trainer runs it."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from transformers.trainer_callback import PrinterCallback

    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "st"),
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        logging_steps=1,
        batch_sampler=BatchSamplers.NO_DUPLICATES if no_duplicates else BatchSamplers.BATCH_SAMPLER,
        **settings,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss(model) if isinstance(loss, type) else loss)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


FIT_CASES = [
    ("OnlineContrastiveLoss", "pairs"),
    ("CoSENTLoss", "scores"),
    ("MultipleNegativesRankingLoss", "positives"),
    ("TripletLoss", "triplets"),
    ("BatchAllTripletLoss", "classes"),
]


@pytest.mark.parametrize(("loss_name", "kind"), FIT_CASES, ids=[f"{n}-{k}" for n, k in FIT_CASES])
def test_the_cached_model_trains_only_the_head_and_lowers_the_loss(model, cache, encode_calls, tmp_path, loss_name, kind):
    backbone, head = split_backbone(model)
    frozen, start = _state(backbone), _state(head)
    ds = _dataset(kind, n=32)
    fast = cached_model(model, cache)
    assert fast[1] is head[0]  # the model's own head module
    distinct = len({t for c in _split_columns(ds)[0] for t in ds[c]})
    fast[0].add(t for c in _split_columns(ds)[0] for t in ds[c])
    assert cache.stats.computed == distinct and cache.stats.hits == 0 and sum(encode_calls) == distinct
    losses = _train(fast, ds, _loss_class(loss_name), tmp_path, num_train_epochs=8, per_device_train_batch_size=8, learning_rate=1e-2, warmup_steps=0, seed=1)

    assert len(losses) == 8 * 4 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:4]), losses
    assert any(not np.array_equal(v, _state(head)[k]) for k, v in start.items()), "head did not change"
    assert all(np.array_equal(v, _state(backbone)[k]) for k, v in frozen.items()), "backbone changed"
    assert sum(encode_calls) == distinct, "training ran the backbone"

    again = cached_model(model, EmbeddingCache.for_model(model, cache.root))  # a fresh cache object reads the disk
    again[0].add(t for c in _split_columns(ds)[0] for t in ds[c])
    assert again[0].cache.stats.computed == 0 and again[0].cache.stats.hits == distinct


@pytest.mark.parametrize(("loss_name", "kind", "no_duplicates"), [("OnlineContrastiveLoss", "pairs", False), ("MultipleNegativesRankingLoss", "positives", True)])
def test_the_cached_model_trains_the_head_the_full_model_would(tiny_model_path, tmp_path, loss_name, kind, no_duplicates):
    """The same trainer, batches, optimiser, schedule and clipping: with dropout off, the same head weights."""
    import torch

    ds = _dataset(kind, n=40)
    cached, plain = _model(tiny_model_path), _model(tiny_model_path)
    for module in split_backbone(plain)[0]:
        for sub in module.modules():
            if isinstance(sub, torch.nn.Dropout):
                sub.p = 0.0
    settings = dict(num_train_epochs=2, per_device_train_batch_size=8, learning_rate=1e-2, warmup_steps=0.1, weight_decay=0.01, seed=5, data_seed=5)
    _train(cached_model(cached, EmbeddingCache.for_model(cached, tmp_path / "cache")), ds, _loss_class(loss_name), tmp_path, no_duplicates=no_duplicates, **settings)
    _train(plain, ds, _loss_class(loss_name), tmp_path, no_duplicates=no_duplicates, **settings)
    got, expected, start = _state(split_backbone(cached)[1]), _state(split_backbone(plain)[1]), _state(split_backbone(_model(tiny_model_path))[1])
    assert max(float((got[k] - start[k]).abs().max()) for k in got) > 1e-3  # both moved...
    assert max(float((got[k] - expected[k]).abs().max()) for k in got) < 1e-6  # ...to the same place


def test_training_the_cached_model_is_deterministic(tiny_model_path, tmp_path):
    ds = _dataset("pairs")
    weights = []
    for _ in range(2):
        model = _model(tiny_model_path)
        _train(
            cached_model(model, EmbeddingCache.for_model(model, tmp_path / "cache")),
            ds,
            _loss_class("ContrastiveLoss"),
            tmp_path,
            num_train_epochs=2,
            per_device_train_batch_size=8,
            learning_rate=1e-2,
            seed=3,
        )
        weights.append(_state(split_backbone(model)[1]))
    assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_in_batch_negative_batches_never_repeat_a_text(model, cache, tmp_path):
    """The trainer's NO_DUPLICATES sampler sees texts, and equal texts are equal rows of the cached model."""
    import torch
    from datasets import Dataset

    rows = [("a", "b"), ("a", "c"), ("d", "b"), ("e", "f"), ("g", "h"), ("e", "i"), ("j", "k")]
    ds = Dataset.from_dict({"anchor": [f"text {a}" for a, _ in rows], "positive": [f"text {p}" for _, p in rows]})
    fast = cached_model(model, cache)
    batches = []

    class Recording(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.model, self.inner = m, _loss_class("MultipleNegativesRankingLoss")(m)

        def forward(self, features, labels):
            batches.append(torch.cat([f["input_ids"] for f in features]).tolist())
            return self.inner(features, labels)

    _train(fast, ds, Recording(fast), tmp_path, no_duplicates=True, num_train_epochs=1, per_device_train_batch_size=3)
    assert all(len(set(batch)) == len(batch) for batch in batches), batches
    assert sum(len(b) for b in batches) == 2 * len(rows)  # one epoch covers every row once
    assert sorted({r for b in batches for r in b}) == list(range(11))  # 11 distinct texts, one row each


def test_saved_model_reloads_and_matches_the_cached_model(model, cache, tmp_path):
    from sentence_transformers import SentenceTransformer

    fast = cached_model(model, cache)
    _train(fast, _dataset("pairs"), _loss_class("OnlineContrastiveLoss"), tmp_path, num_train_epochs=3, per_device_train_batch_size=8, learning_rate=1e-2)
    model.save(str(tmp_path / "saved"))
    reloaded = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    texts = [*_dataset("pairs")["sentence1"][:6], "a text the cache has not seen"]
    for kwargs in ({}, {"normalize_embeddings": True}):
        expected = reloaded.encode(texts, **kwargs)
        got = fast.encode(texts, **kwargs)
        assert got.shape == expected.shape == (7, 16)
        assert np.max(np.abs(got - expected)) < 1e-5
    single = fast.encode(texts[0], convert_to_tensor=True)
    assert tuple(single.shape) == (16,)
    assert isinstance(fast.encode(texts[:2], convert_to_numpy=False), list)
    fast.truncate_dim = 8
    assert fast.encode(texts).shape == (7, 8) and fast.get_embedding_dimension() == 8
    np.testing.assert_allclose(fast.encode(texts, normalize_embeddings=True), reloaded.encode(texts, truncate_dim=8, normalize_embeddings=True), atol=1e-5)
    fast.save(str(tmp_path / "via-fast"))  # saves the model it was made from
    np.testing.assert_allclose(SentenceTransformer(str(tmp_path / "via-fast"), device="cpu").encode(texts), reloaded.encode(texts), atol=1e-6)


def test_trainer_checkpoints_of_the_cached_model_are_the_model_and_load_back(model, cache, tmp_path):
    """sentence-transformers' checkpoints (every 500 steps by default) save the cached model: they hold the
    model, with the trainer's model card, and a checkpoint loads back into the cached model (best model, resume)."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    fast, head = cached_model(model, cache), split_backbone(model)[1]
    assert fast.model_card_data is model.model_card_data and model.model_card_data.model is model
    saved = {}

    class Remember(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            saved[state.global_step] = _state(head)

    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "st"), save_steps=2, max_steps=4, per_device_train_batch_size=8, learning_rate=1e-2, report_to="none", disable_tqdm=True, use_cpu=True
    )
    SentenceTransformerTrainer(model=fast, args=args, train_dataset=_dataset("pairs"), loss=_loss_class("OnlineContrastiveLoss")(fast), callbacks=[Remember()]).train()
    assert sorted(saved) == [2, 4]
    checkpoint = SentenceTransformer(str(tmp_path / "st" / "checkpoint-2"), device="cpu")
    assert all(np.array_equal(v, _state([checkpoint[2]])[k]) for k, v in saved[2].items())  # its head is the Dense at step 2
    assert "OnlineContrastiveLoss" in (tmp_path / "st" / "checkpoint-2" / "README.md").read_text()
    fast.load_state_dict(checkpoint.state_dict())  # what load_best_model_at_end and resume_from_checkpoint do
    assert all(np.array_equal(v, _state(head)[k]) for k, v in saved[2].items())


class _StubCache:
    """What the cached model's input module uses of an EmbeddingCache: the vector of ``"text <n>"`` is n
    everywhere; ``delay`` widens the window in which two threads add at once."""

    dimension = 4
    stats = CacheStats()

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.bars = delay, []

    def get(self, texts, prompt=None, show_progress=None):
        self.bars.append(show_progress)
        time.sleep(self.delay)
        return np.array([[float(t.split()[-1])] * self.dimension for t in texts], dtype=np.float32)


def _looked_up(stand_in, texts):
    return stand_in({"input_ids": stand_in.preprocess(texts)["input_ids"]})["sentence_embedding"][:, 0].tolist()


def test_the_table_grows_in_amortised_steps_and_lazy_adds_draw_no_bar():
    stub = _StubCache()
    stand_in, copies, pointer = _cached_classes()[0](stub), 0, None
    for i in range(300):  # what encoding new texts batch by batch does
        stand_in.preprocess([f"text {i}"])
        copies += stand_in.table.data_ptr() != pointer
        pointer = stand_in.table.data_ptr()
    assert copies <= 10, "the table was copied at every add"
    assert stub.bars == [False] * 300  # an add from preprocess never draws a progress bar
    assert _looked_up(stand_in, [f"text {i}" for i in (299, 0, 150)]) == [299.0, 0.0, 150.0]


def test_threads_adding_at_once_give_every_text_its_own_row():
    import threading

    stand_in, wrong = _cached_classes()[0](_StubCache(delay=0.01)), []

    def work(k):
        for r in range(8):
            texts = [f"text {1000 * k + 10 * r + i}" for i in range(3)]
            if _looked_up(stand_in, texts) != [float(t.split()[-1]) for t in texts]:
                wrong.append(texts)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == [] and len(stand_in.rows) == 72


def test_the_cached_model_gives_embedft_and_st_evaluators_the_same_scores(model, cache):
    import pandas as pd
    from sentence_transformers.sentence_transformer.evaluation import BinaryClassificationEvaluator

    from embedft.metrics import evaluate_pair_classification

    ds = _dataset("pairs")
    frame = pd.DataFrame({"text1": ds["sentence1"], "text2": ds["sentence2"], "label": [int(v) for v in ds["label"]]})
    fast = cached_model(model, cache)
    direct = evaluate_pair_classification(model, frame[:12], frame[12:])
    cached = evaluate_pair_classification(fast, frame[:12], frame[12:])
    for split in ("dev", "test"):
        assert cached[split]["cosine_ap"] == pytest.approx(direct[split]["cosine_ap"], abs=1e-9)
    evaluator = BinaryClassificationEvaluator(ds["sentence1"], ds["sentence2"], [int(v) for v in ds["label"]], name="dev", write_csv=False)
    assert evaluator(fast)["dev_cosine_ap"] == pytest.approx(evaluator(model)["dev_cosine_ap"], abs=1e-9)


def test_prompts_are_part_of_the_key(model, cache):
    fast = cached_model(model, cache)
    plain, prompted = fast.encode(["hello"]), fast.encode(["hello"], prompt="query: ")
    np.testing.assert_allclose(prompted, model.encode(["hello"], prompt="query: "), atol=1e-6)
    assert not np.allclose(plain, prompted) and len(fast[0].rows) == 2
    with pytest.raises(DataError):
        fast[0].preprocess(["ok", 3])


# --------------------------------------------------------------------- through embedft.Trainer
FROZEN = dict(data=str(DEMO_DATA), cache=False, max_train_pairs=64, batch_size=16, learning_rate=1e-3, progress=False, dense={"out_features": 16}, freeze_backbone=True)


@pytest.fixture
def frozen_kwargs(tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDFT_CACHE_DIR", str(tmp_path / "cache"))
    return dict(base_model=tiny_model_path, output_dir=str(tmp_path / "run"), **FROZEN)


@pytest.mark.parametrize("cached", [True, False])
def test_dev_is_scored_by_the_same_evaluator_and_hooks_on_both_paths(frozen_kwargs, cached):
    calls = []
    result = Trainer(**frozen_kwargs, cache_frozen_embeddings=cached, max_steps=5, eval_steps=2, on_evaluate=[lambda step, m: calls.append((step, m))]).fit(baseline=False)
    assert (result.frozen_cache is not None) == cached
    assert [s for s, _ in calls] == [2, 4, 5] and [s for s, _ in result.dev_history] == [2, 4, 5]
    assert {"cosine_ap", "cosine_f1", "cosine_accuracy"} <= set(calls[0][1])  # sentence-transformers' BinaryClassificationEvaluator, on both paths


def test_a_hook_returning_true_stops_and_a_raising_hook_aborts_on_the_cached_path(frozen_kwargs, tmp_path):
    result = Trainer(**frozen_kwargs, epochs=10, eval_steps=3, on_evaluate=[lambda step, m: step >= 6]).fit(baseline=False)
    assert result.frozen_cache is not None and result.train_steps == 6 and len(result.dev_history) == 2

    class Pruned(Exception):
        pass

    def prune(step, metrics):
        raise Pruned(step)

    with pytest.raises(Pruned):
        Trainer(**{**frozen_kwargs, "output_dir": str(tmp_path / "pruned")}, epochs=10, eval_steps=3, on_evaluate=[prune]).fit(baseline=False)
    assert not (tmp_path / "pruned").exists()


def test_nan_loss_raises_before_the_step_on_the_cached_path(frozen_kwargs):
    with pytest.raises(TrainingError, match=r"at step 1.*lower learning rate") as err:
        Trainer(**frozen_kwargs, loss="CoSENTLoss", loss_kwargs={"scale": 1e308}).fit(baseline=False)
    assert err.value.field == "training.learning_rate"


def test_matryoshka_custom_evaluators_and_callbacks_use_the_cache(frozen_kwargs, tmp_path):
    from sentence_transformers.sentence_transformer.evaluation import BinaryClassificationEvaluator
    from transformers import TrainerCallback

    steps = []

    class Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    built = Trainer(**frozen_kwargs).build_data()
    evaluator = BinaryClassificationEvaluator(built.dev["text1"].tolist(), built.dev["text2"].tolist(), built.dev["label"].tolist(), name="mine")
    result = Trainer(**frozen_kwargs, max_steps=3, eval_steps=1, matryoshka_dims=[16, 8], evaluator=evaluator, callbacks=[Steps()]).fit()
    assert result.frozen_cache is not None and steps == [1, 2, 3] and len(result.dev_history) == 3
    assert [r.dimension for r in result.matryoshka] == [16, 8] and result.matryoshka[0].test == pytest.approx(result.after.test_score, abs=1e-4)


def test_a_loss_factory_trains_on_the_cache_and_a_loss_object_on_the_full_model(frozen_kwargs, tiny_model_path, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss

    factory = Trainer(**frozen_kwargs, loss=lambda m: CoSENTLoss(m), max_steps=2).fit(baseline=False)
    assert factory.frozen_cache is not None and factory.loss == "CoSENTLoss" and factory.train_steps == 2
    loss_object = CoSENTLoss(SentenceTransformer(tiny_model_path, device="cpu"))
    full = Trainer(**{**frozen_kwargs, "output_dir": str(tmp_path / "full")}, loss=loss_object, max_steps=2).fit(baseline=False)
    assert full.frozen_cache is None and full.loss == "CoSENTLoss"


@pytest.mark.parametrize(("task", "loss"), [("retrieval", "CachedMultipleNegativesRankingLoss"), ("retrieval", "GISTEmbedLoss")])
def test_losses_that_need_the_backbone_train_the_full_model(frozen_kwargs, tiny_model_path, caplog, task, loss):
    import logging

    from conftest import make_task_rows

    spec = TASKS[task].loss(loss)
    assert spec.not_on_cached_embeddings
    kwargs = {**frozen_kwargs, "data": make_task_rows(task), "task": task, "loss": loss, "max_steps": 2, "batch_size": 8}
    if spec.needs_guide:
        kwargs["guide_model"] = tiny_model_path
    with caplog.at_level(logging.INFO, logger="embedft"):
        result = Trainer(**kwargs).fit(baseline=False)
    assert result.frozen_cache is None and result.loss == loss and result.train_steps == 2
    assert spec.not_on_cached_embeddings in caplog.text


@pytest.mark.parametrize("variant", ["baseline", "no baseline", "mining"])
def test_every_text_is_looked_up_once_before_anything_encodes(frozen_kwargs, tmp_path, monkeypatch, variant):
    """fit() puts every text in the table first (training texts, then dev, test and corpus): no cache look-up,
    cache file or bar per evaluation batch; frozen_cache counts the training texts' look-up whatever came
    before; the trainer's model card reaches the saved model; torch's thread count is left alone."""
    import torch

    from conftest import make_task_rows

    calls, threads = [], []
    get = EmbeddingCache.get
    monkeypatch.setattr(EmbeddingCache, "get", lambda self, texts, **kw: calls.append(len(texts)) or get(self, texts, **kw))
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    kwargs = {**frozen_kwargs, "data": make_task_rows("retrieval", n_groups=24), "task": "retrieval", "batch_size": 8, "eval_batch_size": 4, "max_steps": 4, "eval_steps": 2}
    if variant == "mining":
        kwargs["mine_hard_negatives"] = {"num_negatives": 1}
    trainer = Trainer(**kwargs)
    train = trainer.build_data().train
    result = trainer.fit(baseline=variant != "no baseline")
    distinct = len({t for c in ("query", "positive", "negative") for t in train[c]})
    assert result.frozen_cache["computed"] == distinct and result.frozen_cache["hits"] == 0
    assert len(calls) == 2, calls
    assert len(list((tmp_path / "cache" / "embeddings").rglob("*.keys.npy"))) == 2
    assert threads == []
    card = (result.model_path / "README.md").read_text()
    assert "generated_from_trainer" in card and "MultipleNegativesRankingLoss" in card


def test_a_loss_factory_that_needs_the_backbone_is_refused_on_the_cached_path(frozen_kwargs, tiny_model_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss

    from conftest import make_task_rows

    guide = SentenceTransformer(tiny_model_path, device="cpu")
    with pytest.raises(ConfigError) as err:
        Trainer(**{**frozen_kwargs, "data": make_task_rows("retrieval"), "task": "retrieval", "batch_size": 8}, loss=lambda m: GISTEmbedLoss(m, guide)).fit(baseline=False)
    assert err.value.field == "training.loss" and "cache_frozen_embeddings: false" in str(err.value)


def test_a_cache_of_another_backbone_is_refused(model, tiny_model_path, tmp_path):
    import torch

    other = _model(tiny_model_path)
    with torch.no_grad():
        split_backbone(other)[0][0].auto_model.embeddings.word_embeddings.weight[5] += 1.0
    with pytest.raises(ConfigError, match="another backbone"):
        cached_model(model, EmbeddingCache.for_model(other, tmp_path))
    cached_model(model, EmbeddingCache.for_model(_model(tiny_model_path), tmp_path))  # same weights: accepted


def test_import_stays_light():
    code = "import sys, embedft.frozen\nprint([m for m in ('torch', 'sentence_transformers', 'transformers', 'datasets') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
