"""Training fails with one embedft error, never a traceback, and never reports a number silently.

Issue 13: loss keyword arguments and the ``loss``/``evaluator`` arguments are refused before a model
loads; ``max_seq_length`` past the position embeddings as soon as the model's config is read; a
NaN loss is a :class:`TrainingError` that says what to try; a full disk while saving is one error
and leaves nothing behind; non-finite metrics and the data report's warnings reach
``TrainResult.warnings``, its summary and ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
from pathlib import Path

import pytest

from embedft import ConfigError, EmbedftError, ModelError, Trainer, TrainingError, TrainResult, get_task

from conftest import make_task_rows


def leftovers(parent: Path, name: str = "run") -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a model loads."""
    import embedft.modeling

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(embedft.modeling, "load_model", refuse)


class NaNAfter:
    """A loss factory: CoSENTLoss whose value turns NaN from step ``step`` on."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, model):
        import torch
        from sentence_transformers.sentence_transformer.losses import CoSENTLoss

        nan_from = self.step

        class Loss(CoSENTLoss):
            calls = 0

            def forward(self, features, labels):
                Loss.calls += 1
                value = super().forward(features, labels)
                return value * torch.tensor(float("nan")) if Loss.calls >= nan_from else value

        return Loss(model)


# ---------------------------------------------------------------------- loss keyword arguments
BAD_LOSS_KWARGS = [
    ("pair-classification", None, {"margn": 0.3}, "training.loss_kwargs.margn", "['distance_metric', 'margin']"),
    ("pair-classification", None, {"margin": "big"}, "training.loss_kwargs.margin", "a finite number"),
    ("pair-classification", None, {"margin": True}, "training.loss_kwargs.margin", "True (bool)"),
    ("pair-classification", None, {"margin": float("nan")}, "training.loss_kwargs.margin", "finite"),
    ("pair-classification", "CoSENTLoss", {"scale": float("inf")}, "training.loss_kwargs.scale", "finite"),
    ("pair-classification", None, {"margin": {"value": 1}}, "training.loss_kwargs.margin", "(dict)"),
    ("pair-classification", "ContrastiveLoss", {"size_average": 1}, "training.loss_kwargs.size_average", "true or false"),
    ("pair-classification", "ContrastiveLoss", {"distance_metric": "hamming"}, "training.loss_kwargs.distance_metric", "COSINE_DISTANCE"),
    ("pair-classification", "CoSENTLoss", {"similarity_fct": 3}, "training.loss_kwargs.similarity_fct", "pairwise_cos_sim"),
    ("pair-classification", "MultipleNegativesRankingLoss", {"directions": "query_to_doc"}, "training.loss_kwargs.directions", "a list"),
    ("pair-classification", "MultipleNegativesRankingLoss", {"hardness_mode": "hardest"}, "training.loss_kwargs.hardness_mode", "in_batch_negatives"),
    ("triplets", "TripletLoss", {"distance_metric": "COSINE_DISTANCE"}, "training.loss_kwargs.distance_metric", "'COSINE'"),
    ("retrieval", "CachedMultipleNegativesRankingLoss", {"mini_batch_size": 2.0}, "training.loss_kwargs.mini_batch_size", "an integer"),
    ("retrieval", "GISTEmbedLoss", {"guide": "other"}, "training.loss_kwargs.guide", "training.guide_model"),
    ("sts", "CosineSimilarityLoss", {"loss_fct": "MSELoss"}, "training.loss_kwargs.loss_fct", "Python API only"),
]


@pytest.mark.parametrize(("task", "loss", "kwargs", "field", "text"), BAD_LOSS_KWARGS, ids=[c[3].rsplit(".", 1)[1] + "-" + str(i) for i, c in enumerate(BAD_LOSS_KWARGS)])
def test_loss_kwargs_are_checked_before_a_model_loads(task, loss, kwargs, field, text, tiny_model_path, tmp_path, no_model_load):
    extra = {"guide_model": tiny_model_path} if loss == "GISTEmbedLoss" else {}
    with pytest.raises(ConfigError) as err:
        Trainer(task=task, base_model=tiny_model_path, loss=loss, loss_kwargs=kwargs, output_dir=str(tmp_path / "run"), **extra)
    assert err.value.field == field and text in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_named_metrics_and_functions_map_to_the_loss_objects(tiny_model_path):
    from sentence_transformers import SentenceTransformer, util
    from sentence_transformers.sentence_transformer.losses import SiameseDistanceMetric, TripletDistanceMetric

    contrastive = get_task("pair-classification").loss("ContrastiveLoss")
    assert contrastive.prepare_kwargs({"distance_metric": "euclidean", "margin": 1}) == {"distance_metric": SiameseDistanceMetric.EUCLIDEAN, "margin": 1.0}
    triplet = get_task("triplets").loss("TripletLoss")
    assert triplet.prepare_kwargs({"distance_metric": "COSINE"})["distance_metric"] is TripletDistanceMetric.COSINE
    mnrl = get_task("retrieval").loss("MultipleNegativesRankingLoss")
    prepared = mnrl.prepare_kwargs({"similarity_fct": "dot_score", "directions": ["query_to_doc", "doc_to_query"], "hardness_mode": None})
    assert prepared == {"similarity_fct": util.dot_score, "directions": ("query_to_doc", "doc_to_query"), "hardness_mode": None}
    model = SentenceTransformer(tiny_model_path, device="cpu")
    built = contrastive.build(model, distance_metric="MANHATTAN", margin=2)
    assert built.distance_metric is SiameseDistanceMetric.MANHATTAN and built.margin == 2.0


def test_a_registered_factory_is_checked_against_its_own_signature():
    from embedft.tasks import LossSpec

    spec = LossSpec("Custom", lambda model, scale=1.0, name="x": None, "labelled-pairs", "a test loss")
    assert spec.prepare_kwargs({"scale": 2}) == {"scale": 2.0}
    with pytest.raises(ConfigError, match=r"training\.loss_kwargs\.scale"):
        spec.prepare_kwargs({"scale": "2"})
    with pytest.raises(ConfigError, match="one of \\['name', 'scale'\\]"):
        spec.prepare_kwargs({"size": 2})
    open_ended = LossSpec("Open", lambda model, **kw: None, "labelled-pairs", "takes anything")
    assert open_ended.prepare_kwargs({"anything": [1]}) == {"anything": [1]}


# ---------------------------------------------------------------------- Trainer(loss=..., evaluator=...)
@pytest.mark.parametrize("loss", [42, ["CoSENTLoss"], {"train": "CoSENTLoss"}, 0.5])
def test_a_loss_argument_that_is_no_loss_is_refused(loss, no_model_load):
    with pytest.raises(ConfigError) as err:
        Trainer(loss=loss)
    assert err.value.field == "loss" and "torch.nn.Module" in str(err.value)


def test_an_evaluator_argument_that_is_no_evaluator_is_refused(no_model_load):
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    for evaluator in ("dev", 3, {"dev": None}, EmbeddingSimilarityEvaluator):
        with pytest.raises(ConfigError) as err:
            Trainer(evaluator=evaluator)
        assert err.value.field == "evaluator", evaluator
    assert "the class EmbeddingSimilarityEvaluator" in str(err.value)
    Trainer(evaluator=EmbeddingSimilarityEvaluator(["a"], ["b"], [0.5]))  # an evaluator object is fine
    Trainer(evaluator=lambda model, **kw: {"score": 1.0})  # and so is a callable


def test_a_loss_factory_must_return_a_loss_module(train_kwargs, tmp_path):
    with pytest.raises(ConfigError) as err:
        Trainer(**train_kwargs, loss=lambda model: "CoSENTLoss").fit(baseline=False)
    assert err.value.field == "loss" and "str" in str(err.value)
    assert not (tmp_path / "run").exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------------- models
def test_max_seq_length_past_the_position_embeddings(tiny_model_path):
    from embedft.config import ModelConfig
    from embedft.modeling import load_model, position_limit

    with pytest.raises(ConfigError) as err:
        load_model(ModelConfig(base_model=tiny_model_path, max_seq_length=4096), "cpu")
    assert err.value.field == "model.max_seq_length" and "at most 128" in str(err.value) and "4096" in str(err.value)
    model = load_model(ModelConfig(base_model=tiny_model_path, max_seq_length=128), "cpu")
    assert model.max_seq_length == 128 and position_limit(model) == 128


def test_a_dense_head_needs_the_embedding_size(tiny_model_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    from embedft.config import ModelConfig
    from embedft.modeling import load_model

    monkeypatch.setattr(SentenceTransformer, "get_embedding_dimension", lambda self: None)  # a last module that reports no size
    with pytest.raises(ModelError) as err:
        load_model(ModelConfig(base_model=tiny_model_path, dense={"out_features": 16}), "cpu")
    assert err.value.field == "model.dense" and "embedding size" in str(err.value)


def test_position_limit_leaves_out_the_padding_offset():
    """RoBERTa-style embeddings start positions after the padding index: 514 positions hold 512 tokens."""
    from types import SimpleNamespace

    import torch

    from embedft.modeling import position_limit

    class Embeddings(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.padding_idx = 1
            self.position_embeddings = torch.nn.Embedding(514, 2)

    class Backbone(torch.nn.Module):
        config = SimpleNamespace(max_position_embeddings=514)

        def __init__(self):
            super().__init__()
            self.embeddings = Embeddings()

    wrapper = torch.nn.Module()
    wrapper.auto_model = Backbone()
    assert position_limit(torch.nn.Sequential(wrapper)) == 512
    assert position_limit(torch.nn.Sequential(torch.nn.Linear(2, 2))) is None


def test_a_guide_model_path_is_checked_before_the_model_loads(tiny_model_path, tmp_path, no_model_load):
    base = dict(task="retrieval", base_model=tiny_model_path, loss="GISTEmbedLoss", output_dir=str(tmp_path / "run"))
    with pytest.raises(ModelError, match="guide model path does not exist") as err:
        Trainer(**base, guide_model=str(tmp_path / "no-guide"))
    assert err.value.field == "training.guide_model"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("not a model")
    with pytest.raises(ModelError, match="not a model folder") as err:
        Trainer(**base, guide_model=str(tmp_path / "notes"))
    assert err.value.field == "training.guide_model"


# ---------------------------------------------------------------------- NaN loss
@pytest.mark.parametrize("step", [1, 3])
def test_a_nan_loss_is_a_training_error_that_says_what_to_try(step, train_kwargs, tmp_path):
    with pytest.raises(TrainingError) as err:
        Trainer(**train_kwargs, loss=NaNAfter(step), eval_steps=1).fit(baseline=False)
    message = str(err.value)
    assert f"training loss is nan at step {step}" in message
    assert err.value.field == "training.learning_rate" and "lower learning rate" in message and "fp32" in message
    assert isinstance(err.value, EmbedftError) and "\n" not in message
    assert not (tmp_path / "run").exists() and leftovers(tmp_path) == []


def test_a_nan_loss_from_the_loss_settings_names_them(train_kwargs, tmp_path):
    with pytest.raises(TrainingError, match=r"at step 1.*loss_kwargs \(scale=1e\+308\)"):
        Trainer(**train_kwargs, loss="CoSENTLoss", loss_kwargs={"scale": 1e308}).fit(baseline=False)
    assert leftovers(tmp_path) == []


def test_a_nan_loss_in_a_search_trial_is_a_failed_trial(train_kwargs, tmp_path):
    from embedft import DatasetBuilder
    from embedft.trial import TrialConfig, run_trial

    trainer = Trainer(**train_kwargs, loss="CoSENTLoss", loss_kwargs={"scale": 1e308})
    data_dir = DatasetBuilder(trainer.config.data).build().save(tmp_path / "data")
    result = run_trial(TrialConfig(number=0, params={}, run=trainer.config, data_dir=str(data_dir)))
    assert result.state == "fail" and "TrainingError" in result.error and "lower learning rate" in result.error


# ---------------------------------------------------------------------- what the numbers cannot support
def test_non_finite_metrics_and_data_warnings_reach_the_result(train_kwargs, tmp_path):
    trainer = Trainer(**train_kwargs)
    built = trainer.build_data()
    built = dataclasses.replace(built, report=built.report.model_copy(update={"warnings": ["dev split has 2 pairs (a test warning)"]}))
    trainer = Trainer(**{**train_kwargs, "data": built})
    task = trainer.task

    def evaluate(model, dev, test, *args, **kwargs):
        metrics = task.evaluate(model, dev, test, *args, **kwargs)
        metrics["test"]["cosine_ap"] = float("nan")
        metrics["dev"]["cosine_f1"] = float("inf")
        return metrics

    trainer.task = dataclasses.replace(task, evaluate=evaluate)
    result = trainer.fit()
    assert result.warnings[0] == "dev split has 2 pairs (a test warning)"
    assert f"base model {train_kwargs['base_model']}: test cosine_ap is nan" in " | ".join(result.warnings)
    assert any(w.startswith("fine-tuned model: dev cosine_f1 is inf") for w in result.warnings)
    summary = result.summary()
    assert "nan" in summary
    warning_lines = [line for line in summary.splitlines() if line.startswith("warning: ")]
    assert len(warning_lines) == len(result.warnings) == 5
    text = (tmp_path / "run" / "metrics.json").read_text()

    def strict(constant):
        raise AssertionError(f"bare {constant} in metrics.json")

    stored = json.loads(text, parse_constant=strict)
    assert stored["warnings"] == result.warnings and stored["after"]["test"]["cosine_ap"] == "NaN"
    again = TrainResult.model_validate_json(text)
    assert math.isnan(again.after.test["cosine_ap"]) and again.warnings == result.warnings


def test_a_clean_run_has_no_warnings(train_kwargs):
    result = Trainer(**train_kwargs).fit()
    assert result.warnings == list(result.data.warnings)
    assert [line for line in result.summary().splitlines() if line.startswith("warning: ")] == [f"warning: {w}" for w in result.data.warnings]


# ---------------------------------------------------------------------- disk full while saving
def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["model", "metrics"])
def test_disk_full_while_saving_is_one_error_and_leaves_nothing(where, train_kwargs, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    if where == "model":
        monkeypatch.setattr(SentenceTransformer, "save", _disk_full)
    else:
        real = Path.write_text

        def write_text(self, *args, **kwargs):
            if self.name == "metrics.json":
                _disk_full()
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(EmbedftError) as err:
        Trainer(**train_kwargs).fit(baseline=False)
    assert isinstance(err.value, OSError) and err.value.field == "output_dir"
    assert "No space left on device" in str(err.value) and str(tmp_path / "run") in str(err.value)
    assert not (tmp_path / "run").exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------------- settings that look odd but are fine
def test_step_settings_past_the_data_just_work(tiny_model_path, tmp_path):
    result = Trainer(
        data=make_task_rows("pair-classification"),
        base_model=tiny_model_path,
        output_dir=str(tmp_path / "run"),
        cache=False,
        max_train_pairs=32,
        batch_size=500,
        eval_steps=1000,
        max_steps=2,
        epochs=3,
        progress=False,
    ).fit(baseline=False)
    assert result.train_steps == 2 and result.train_pairs <= 32 and len(result.dev_history) >= 1


def test_a_run_whose_only_step_is_warm_up_says_the_model_did_not_change(train_kwargs):
    import json

    from embedft import Trainer

    result = Trainer(**{**train_kwargs, "max_train_pairs": 32, "batch_size": 32}).fit()
    assert result.train_steps == 1
    assert any("learning rate 0" in w for w in result.warnings), result.warnings
    assert "learning rate 0" in result.summary()
    assert any("learning rate 0" in w for w in json.loads(result.metrics_path.read_text())["warnings"])
    no_warmup = Trainer(**{**train_kwargs, "max_train_pairs": 32, "batch_size": 32, "warmup_ratio": 0.0, "overwrite": True}).fit()
    assert not any("warm-up" in w for w in no_warmup.warnings)


def test_evaluate_takes_a_run_folder_for_its_model(train_kwargs):
    from embedft import Trainer

    result = Trainer(**train_kwargs).fit()
    by_run = Trainer(**train_kwargs).evaluate(str(result.output_dir))
    by_model = Trainer(**train_kwargs).evaluate(str(result.model_path))
    assert by_run.test == by_model.test


def test_collapsed_embeddings_and_weak_splits_are_warned_in_evaluate_and_fit(train_kwargs, tiny_model_path):
    from embedft import Trainer

    result = Trainer(**{**train_kwargs, "max_seq_length": 2}).fit()  # [CLS][SEP] only: every text the same
    assert any("same embedding" in w for w in result.warnings), result.warnings
    report = Trainer(**train_kwargs).evaluate(tiny_model_path)
    assert not any("same embedding" in w for w in report.warnings)
    assert report.warnings == list(dict.fromkeys(report.warnings))


@pytest.mark.parametrize(
    "call",
    [
        "Trainer('base.yaml')",
        "Trainer(123)",
        "Trainer(on_evaluate=3)",
        "Trainer(callbacks='x')",
        "DatasetBuilder(5)",
        "load_config(None)",
        "RunConfig().with_overrides([3])",
        "OptunaSearch({}, sampler=3)",
        "OptunaSearch({}, pruner='median')",
        "OptunaSearch({}, executor=object())",
        "BuiltDataset.load(None)",
    ],
)
def test_python_api_misuse_is_an_embedft_error(call):
    from embedft import BuiltDataset, DatasetBuilder, EmbedftError, OptunaSearch, RunConfig, Trainer, load_config

    names = {"BuiltDataset": BuiltDataset, "DatasetBuilder": DatasetBuilder, "OptunaSearch": OptunaSearch, "RunConfig": RunConfig, "Trainer": Trainer, "load_config": load_config}
    with pytest.raises(EmbedftError):
        eval(call, names)  # noqa: S307 - test inputs


def test_one_override_string_is_one_override():
    from embedft import RunConfig

    assert RunConfig().with_overrides("training.epochs=2").training.epochs == 2
