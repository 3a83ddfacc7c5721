"""The frozen-backbone fast path: embedding cache, head-only training, cached encoding."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from embedft.config import ModelConfig
from embedft.errors import ConfigError, DataError, TrainingError
from embedft.frozen import (
    IN_BATCH_NEGATIVE_LOSSES,
    SUPPORTED_LOSSES,
    CachedEncoder,
    EmbeddingCache,
    _batches,
    _head_model,
    _ShardStore,
    fit_head,
    split_backbone,
    supports,
)

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


def test_every_supported_loss_is_tested():
    assert {name for name, _ in LOSS_CASES} == SUPPORTED_LOSSES
    assert IN_BATCH_NEGATIVE_LOSSES <= SUPPORTED_LOSSES


@pytest.mark.filterwarnings("ignore:The MultipleNegativesSymmetricRankingLoss is deprecated:DeprecationWarning")
@pytest.mark.parametrize(("loss_name", "kind"), LOSS_CASES, ids=[f"{n}-{k}" for n, k in LOSS_CASES])
def test_loss_on_cached_embeddings_equals_loss_on_full_model(model, cache, loss_name, kind):
    """The unchanged loss class gives the same value on (cached embeddings -> head) as on the whole model."""
    import torch

    ds = _dataset(kind)
    text_cols, label_col = _split_columns(ds)
    labels = torch.tensor(ds[label_col]) if label_col else None
    cls = _loss_class(loss_name)
    model.eval()
    with torch.no_grad():
        full = cls(model)([model.preprocess(ds[c]) for c in text_cols], labels)
        head = _head_model(split_backbone(model)[1])
        cached = cls(head)([{"sentence_embedding": torch.from_numpy(cache.get(ds[c]))} for c in text_cols], labels)
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
    (a.directory / ".tmp-0123-x.keys.npy").write_bytes(b"\x93NUMPY garbage")
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
    assert not list(directory.glob(".tmp-*"))


# --------------------------------------------------------------------- training
FIT_CASES = [
    ("OnlineContrastiveLoss", "pairs"),
    ("CoSENTLoss", "scores"),
    ("MultipleNegativesRankingLoss", "positives"),
    ("TripletLoss", "triplets"),
    ("BatchAllTripletLoss", "classes"),
]


@pytest.mark.parametrize(("loss_name", "kind"), FIT_CASES, ids=[f"{n}-{k}" for n, k in FIT_CASES])
def test_fit_head_trains_only_the_head_and_lowers_the_loss(model, cache, loss_name, kind):
    backbone, head = split_backbone(model)
    frozen, start = _state(backbone), _state(head)
    ds = _dataset(kind, n=32)
    result = fit_head(model, ds, _loss_class(loss_name), {"epochs": 8, "batch_size": 8, "learning_rate": 1e-2, "warmup_ratio": 0.0, "seed": 1}, cache=cache)

    assert result.loss == loss_name and result.steps == 8 * 4 and result.epochs == 8
    assert all(np.isfinite(result.losses)) and len(result.losses) == result.steps
    assert result.final_loss < np.mean(result.losses[:4]), result.losses
    assert any(not np.array_equal(v, _state(head)[k]) for k, v in start.items()), "head did not change"
    assert all(np.array_equal(v, _state(backbone)[k]) for k, v in frozen.items()), "backbone changed"
    distinct = len({t for c in _split_columns(ds)[0] for t in ds[c]})
    assert result.cache_computed == distinct and result.cache_hits == 0

    again = fit_head(model, ds, _loss_class(loss_name), {"max_steps": 2, "batch_size": 8}, cache=cache)
    assert again.cache_computed == 0 and again.cache_hits == distinct and again.steps == 2


def test_fit_head_trains_the_head_sentence_transformers_trainer_would(tiny_model_path, tmp_path):
    """Same batches, optimiser, schedule and clipping: with dropout off, the same head weights."""
    import torch
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers.trainer_callback import PrinterCallback

    ds = _dataset("pairs", n=40)
    cached, plain = _model(tiny_model_path), _model(tiny_model_path)
    for module in split_backbone(plain)[0]:
        for sub in module.modules():
            if isinstance(sub, torch.nn.Dropout):
                sub.p = 0.0
    fit_head(cached, ds, _loss_class("OnlineContrastiveLoss"), {"epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "seed": 5}, cache=EmbeddingCache.for_model(cached, tmp_path))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "st"), num_train_epochs=2, per_device_train_batch_size=8, learning_rate=1e-2, warmup_steps=0.1,
        weight_decay=0.01, seed=5, data_seed=5, report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True,
    )
    trainer = SentenceTransformerTrainer(model=plain, args=args, train_dataset=ds, loss=_loss_class("OnlineContrastiveLoss")(plain))
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    got, expected, start = _state(split_backbone(cached)[1]), _state(split_backbone(plain)[1]), _state(split_backbone(_model(tiny_model_path))[1])
    assert max(float((got[k] - start[k]).abs().max()) for k in got) > 1e-3  # both moved...
    assert max(float((got[k] - expected[k]).abs().max()) for k in got) < 1e-6  # ...to the same place


def test_fit_head_is_deterministic(tiny_model_path, tmp_path):
    ds = _dataset("pairs")
    weights = []
    for _ in range(2):
        model = _model(tiny_model_path)
        fit_head(model, ds, _loss_class("ContrastiveLoss"), {"epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "seed": 3}, cache=EmbeddingCache.for_model(model, tmp_path))
        weights.append(_state(split_backbone(model)[1]))
    assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_in_batch_negative_batches_never_repeat_a_text():
    rows = np.array([[0, 1], [0, 2], [3, 1], [4, 5], [6, 7], [4, 8], [9, 10]])
    gen = _batches(len(rows), 3, seed=0, rows=rows)
    seen_rows = []
    while len(seen_rows) < len(rows):
        batch = next(gen)
        values = rows[batch].ravel()
        assert len(set(values.tolist())) == len(values)
        seen_rows += batch.tolist()
    assert sorted(seen_rows) == list(range(len(rows)))  # one epoch covers every row once


def test_saved_model_reloads_and_matches_the_cached_encoder(model, cache, tmp_path):
    from sentence_transformers import SentenceTransformer

    fit_head(model, _dataset("pairs"), _loss_class("OnlineContrastiveLoss"), {"epochs": 3, "batch_size": 8, "learning_rate": 1e-2}, cache=cache)
    model.save(str(tmp_path / "saved"))
    reloaded = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    encoder = CachedEncoder(model, cache)
    texts = [*_dataset("pairs")["sentence1"][:6], "a text the cache has not seen"]
    for kwargs in ({}, {"normalize_embeddings": True}):
        expected = reloaded.encode(texts, **kwargs)
        got = encoder.encode(texts, **kwargs)
        assert got.shape == expected.shape == (7, 16)
        assert np.max(np.abs(got - expected)) < 1e-5
    single = encoder.encode(texts[0], convert_to_tensor=True)
    assert tuple(single.shape) == (16,)
    assert isinstance(encoder.encode(texts[:2], convert_to_numpy=False), list)
    encoder.truncate_dim = 8
    assert encoder.encode(texts).shape == (7, 8) and encoder.get_embedding_dimension() == 8
    np.testing.assert_allclose(encoder.encode(texts, normalize_embeddings=True), reloaded.encode(texts, truncate_dim=8, normalize_embeddings=True), atol=1e-5)


def test_cached_encoder_gives_embedft_and_st_evaluators_the_same_scores(model, cache):
    import pandas as pd
    from sentence_transformers.sentence_transformer.evaluation import BinaryClassificationEvaluator

    from embedft.metrics import evaluate_pair_classification

    ds = _dataset("pairs")
    frame = pd.DataFrame({"text1": ds["sentence1"], "text2": ds["sentence2"], "label": [int(v) for v in ds["label"]]})
    encoder = CachedEncoder(model, cache)
    direct = evaluate_pair_classification(model, frame[:12], frame[12:])
    cached = evaluate_pair_classification(encoder, frame[:12], frame[12:])
    for split in ("dev", "test"):
        assert cached[split]["cosine_ap"] == pytest.approx(direct[split]["cosine_ap"], abs=1e-9)
    evaluator = BinaryClassificationEvaluator(ds["sentence1"], ds["sentence2"], [int(v) for v in ds["label"]], name="dev", write_csv=False)
    assert evaluator(encoder)["dev_cosine_ap"] == pytest.approx(evaluator(model)["dev_cosine_ap"], abs=1e-9)


def test_evaluation_schedule_and_hooks(model, cache):
    calls = []
    result = fit_head(
        model, _dataset("pairs", n=40), _loss_class("CoSENTLoss"), {"max_steps": 5, "batch_size": 8, "eval_steps": 2},
        cache=cache, evaluate=lambda: {"score": float(len(calls)), "note": "ignored"}, hooks=[lambda step, metrics: calls.append((step, metrics))],
    )
    assert [s for s, _ in result.eval_history] == [2, 4, 5] and not result.stopped_early
    assert calls == result.eval_history and calls[0] == (2, {"score": 0.0})


def test_a_hook_returning_true_stops_and_a_raising_hook_aborts(model, cache):
    cfg = {"epochs": 10, "batch_size": 8, "eval_steps": 3}
    result = fit_head(model, _dataset("pairs"), _loss_class("CoSENTLoss"), cfg, cache=cache, evaluate=lambda: {"ap": 0.5}, hooks=[lambda step, m: step >= 6])
    assert result.steps == 6 and result.stopped_early and len(result.eval_history) == 2

    class Pruned(Exception):
        pass

    def prune(step, metrics):
        raise Pruned(step)

    with pytest.raises(Pruned):
        fit_head(model, _dataset("pairs"), _loss_class("CoSENTLoss"), cfg, cache=cache, evaluate=lambda: {"ap": 0.5}, hooks=[prune])
    with pytest.raises(ConfigError, match="need an evaluate"):
        fit_head(model, _dataset("pairs"), _loss_class("CoSENTLoss"), cfg, cache=cache, hooks=[prune])


def test_nan_loss_raises_before_the_step(model, cache):
    from datasets import Dataset

    head = split_backbone(model)[1]
    start = _state(head)
    ds = Dataset.from_dict({"sentence1": ["a b", "c d"], "sentence2": ["e f", "g h"], "score": [float("nan"), 0.5]})
    with pytest.raises(TrainingError, match="at step 1.*lower learning rate") as err:
        fit_head(model, ds, _loss_class("CosineSimilarityLoss"), {"epochs": 1, "batch_size": 2}, cache=cache)
    assert err.value.field == "training.learning_rate"
    assert all(np.array_equal(v, _state(head)[k]) for k, v in start.items())


def test_unsupported_losses_are_refused(model, cache):
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    assert supports("OnlineContrastiveLoss") and supports(MultipleNegativesRankingLoss)
    for name in ("CachedMultipleNegativesRankingLoss", "GISTEmbedLoss", "MatryoshkaLoss", "SoftmaxLoss"):
        assert not supports(name)
    with pytest.raises(ConfigError) as info:
        fit_head(model, _dataset("positives"), lambda m: MatryoshkaLoss(m, MultipleNegativesRankingLoss(m), [8, 4]), {"epochs": 1}, cache=cache)
    assert info.value.field == "training.loss" and info.value.found == "MatryoshkaLoss" and "patches" in str(info.value)
    with pytest.raises(ConfigError) as info:  # built on the full model, not on the head stand-in
        fit_head(model, _dataset("positives"), lambda m: MultipleNegativesRankingLoss(model), {"epochs": 1}, cache=cache)
    assert info.value.field == "loss_factory"
    assert cache.stats.computed == 0  # refused before any encoding


def test_a_cache_of_another_backbone_is_refused(model, tiny_model_path, tmp_path):
    import torch

    other = _model(tiny_model_path)
    with torch.no_grad():
        split_backbone(other)[0][0].auto_model.embeddings.word_embeddings.weight[5] += 1.0
    with pytest.raises(ConfigError, match="another backbone"):
        CachedEncoder(model, EmbeddingCache.for_model(other, tmp_path))
    CachedEncoder(model, EmbeddingCache.for_model(_model(tiny_model_path), tmp_path))  # same weights: accepted


def test_bad_training_data_is_reported(model, cache):
    from datasets import Dataset

    with pytest.raises(DataError, match="no text columns"):
        fit_head(model, Dataset.from_dict({"label": [1.0]}), _loss_class("CoSENTLoss"), {"epochs": 1}, cache=cache)
    with pytest.raises(DataError) as info:
        fit_head(model, Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", None], "label": [1.0, 0.0]}), _loss_class("CoSENTLoss"), {"epochs": 1}, cache=cache)
    assert info.value.field == "sentence2[1]"
    with pytest.raises(DataError) as info:
        fit_head(model, Dataset.from_dict({"sentence1": ["a"], "sentence2": ["c"], "label": ["yes"]}), _loss_class("CoSENTLoss"), {"epochs": 1}, cache=cache)
    assert info.value.field == "label"
    from datasets import DatasetDict

    with pytest.raises(DataError, match="one datasets.Dataset"):
        fit_head(model, DatasetDict({"a": _dataset("pairs")}), _loss_class("CoSENTLoss"), {"epochs": 1}, cache=cache)


def test_import_stays_light():
    code = "import sys, embedft.frozen\nprint([m for m in ('torch', 'sentence_transformers', 'transformers', 'datasets') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
