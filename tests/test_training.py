import json
import warnings

import numpy as np
import pytest

from embedft import ConfigError, ModelError, OutputExistsError, RunConfig, Trainer, get_task

from conftest import DEMO_DATA


def leftovers(parent, name="run"):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_fit_saves_loadable_model_config_and_metrics(train_kwargs, tmp_path):
    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = Trainer(**train_kwargs).fit()
    ours = [w for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning)) and "embedft" in w.filename]
    assert not ours, [str(w.message) for w in ours]
    out = tmp_path / "run"
    assert result.output_dir == out and result.model_path == out / "model"
    assert (out / "model" / "modules.json").is_file() and (out / "model" / "README.md").is_file()
    assert RunConfig.from_file(out / "config.yaml") == Trainer(**train_kwargs).config
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["after"]["test"]["cosine_ap"] == pytest.approx(result.after.test["cosine_ap"])
    assert result.train_pairs == 96 and result.train_steps == 3
    assert result.before.dev != result.after.dev  # training changed the model
    assert len(result.dev_history) >= 1
    loaded = SentenceTransformer(str(out / "model"), device="cpu")
    report = Trainer(**{**train_kwargs, "output_dir": str(tmp_path / "other")}).evaluate(str(out / "model"))
    assert report.test["cosine_ap"] == pytest.approx(result.after.test["cosine_ap"], abs=1e-6)
    assert loaded.encode(["hello"]).shape == (1, 32)
    assert leftovers(tmp_path) == []


def test_refuses_existing_output_and_leaves_it_untouched(train_kwargs, tmp_path):
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    (out / "model" / "keep.txt").write_text("precious")
    for overwrite in (False, True):  # a folder embedft did not write is never replaced, whatever the flags
        with pytest.raises(OutputExistsError) as err:
            Trainer(**{**train_kwargs, "overwrite": overwrite}).fit()
        assert err.value.field == "output_dir" and "not an embedft output" in str(err.value) and "--overwrite" not in str(err.value)
        assert (out / "model" / "keep.txt").read_text() == "precious"
    assert leftovers(tmp_path) == []
    result = Trainer(**{**train_kwargs, "output_dir": str(tmp_path / "run2")}).fit()
    with pytest.raises(OutputExistsError, match="overwrite"):  # an embedft run: the hint to overwrite is right
        Trainer(**{**train_kwargs, "output_dir": str(tmp_path / "run2")}).fit()
    again = Trainer(**{**train_kwargs, "output_dir": str(tmp_path / "run2"), "overwrite": True}).fit()
    assert (again.model_path / "modules.json").is_file() and result.model_path == again.model_path
    assert leftovers(tmp_path) == []


def test_crash_during_training_leaves_no_output(train_kwargs, tmp_path):
    class Boom(RuntimeError):
        pass

    def explode(step, metrics):
        raise Boom("pruned")

    with pytest.raises(Boom):
        Trainer(**train_kwargs, eval_steps=1, on_evaluate=[explode]).fit()
    assert not (tmp_path / "run").exists()
    assert leftovers(tmp_path) == []


def test_evaluate_hook_sees_dev_scores_and_can_stop(train_kwargs):
    seen = []

    def hook(step, metrics):
        seen.append((step, metrics["cosine_ap"]))
        return step >= 2

    result = Trainer(**train_kwargs, eval_steps=1, on_evaluate=[hook]).fit()
    assert [s for s, _ in seen] == [1, 2]
    assert result.train_steps == 2
    assert [s for s, _ in result.dev_history] == [1, 2]


def test_early_stopping(train_kwargs):
    result = Trainer(**{**train_kwargs, "max_train_pairs": None, "learning_rate": 1e-12}, eval_steps=1, warmup_ratio=0.0, early_stopping_patience=2).fit()
    assert result.stopped_early
    assert result.train_steps == 3  # no improvement at steps 2 and 3 with a zero-ish learning rate


@pytest.mark.parametrize("loss", sorted(get_task("pair-classification").losses))
def test_every_allowed_loss_trains(train_kwargs, loss):
    hard = loss == "MultipleNegativesRankingLoss"
    result = Trainer(**train_kwargs, loss=loss, hard_negatives=hard).fit()
    assert result.loss == loss
    assert result.train_loss is not None and np.isfinite(result.train_loss)
    assert result.after.dev != result.before.dev


def test_dense_head_with_frozen_backbone(train_kwargs, tiny_model_path):
    import torch
    from sentence_transformers import SentenceTransformer

    result = Trainer(**train_kwargs, dense={"out_features": 8, "activation": "relu"}, freeze_backbone=True).fit()
    base = SentenceTransformer(tiny_model_path, device="cpu")
    tuned = SentenceTransformer(str(result.model_path), device="cpu")
    assert tuned.encode(["a question"]).shape == (1, 8)
    b_state = base[0].state_dict()
    t_state = tuned[0].state_dict()
    assert all(torch.equal(b_state[k], t_state[k]) for k in b_state)  # backbone untouched


def test_same_seed_same_metrics(train_kwargs, tmp_path):
    a = Trainer(**train_kwargs).fit()
    b = Trainer(**{**train_kwargs, "output_dir": str(tmp_path / "again")}).fit()
    assert a.after.test == pytest.approx(b.after.test, abs=1e-6)
    assert a.train_loss == pytest.approx(b.train_loss, rel=1e-6)


def test_missing_model_path(train_kwargs, tmp_path):
    with pytest.raises(ModelError) as err:
        Trainer(**{**train_kwargs, "base_model": str(tmp_path / "no-model")}).fit()
    assert err.value.field == "model.base_model"
    assert not (tmp_path / "run").exists()
    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    with pytest.raises(ModelError, match="not a model folder"):
        Trainer(**{**train_kwargs, "base_model": str(not_a_model)}).fit()


def test_unknown_trainer_argument_and_loss():
    with pytest.raises(ConfigError) as err:
        Trainer(epochz=3)
    assert err.value.field == "epochz"
    with pytest.raises(ConfigError) as err:
        Trainer(loss="TripletLoss")
    assert "not allowed" in str(err.value)


def test_accepts_built_dataset_and_custom_loss(train_kwargs, tiny_model_path):
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss

    from embedft import DatasetBuilder

    from conftest import DEMO_DATA

    built = DatasetBuilder(cache=False, max_train_pairs=64).build(str(DEMO_DATA))
    kwargs = {k: v for k, v in train_kwargs.items() if k not in ("data", "cache", "max_train_pairs")}
    result = Trainer(data=built, loss=lambda model: CoSENTLoss(model), **kwargs).fit()
    assert result.train_pairs == 64 and result.loss == "CoSENTLoss"


def test_matryoshka_table_and_truncated_reload(tiny_model_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    from embedft import get_task
    from embedft.data import BuiltDataset

    kwargs = dict(data=str(DEMO_DATA), base_model=tiny_model_path, output_dir=str(tmp_path / "run"), cache=False, max_train_pairs=64, max_steps=3, batch_size=16, progress=False)
    result = Trainer(matryoshka_dims=[8, 32, 16], **kwargs).fit()
    assert [r.dimension for r in result.matryoshka] == [32, 16, 8]
    assert [r.bytes_per_vector for r in result.matryoshka] == [128, 64, 32]
    assert result.matryoshka[0].test == pytest.approx(result.after.test_score, abs=1e-4)
    assert all(r.base_test is not None for r in result.matryoshka)
    assert "dimension" in result.summary()
    # The saved model truncated to 8 dimensions gives the table's figure.
    built = Trainer(**{**kwargs, "output_dir": str(tmp_path / "other")}).build_data()
    assert isinstance(built, BuiltDataset)
    small = SentenceTransformer(str(result.model_path), device="cpu", truncate_dim=8)
    report = get_task("pair-classification").evaluate(small, built.dev, built.test, 32)
    assert report["test"]["cosine_ap"] == pytest.approx(result.matryoshka[-1].test, abs=1e-5)


def test_matryoshka_dims_are_checked(tiny_model_path, tmp_path):
    with pytest.raises(ConfigError) as err:
        Trainer(data=str(DEMO_DATA), base_model=tiny_model_path, output_dir=str(tmp_path / "r"), cache=False, matryoshka_dims=[64, 8], max_steps=1).fit()
    assert err.value.field == "training.matryoshka_dims" and "<= 32" in str(err.value)
    with pytest.raises(ConfigError):
        RunConfig.from_dict({"training": {"matryoshka_dims": [8, 8]}})


def test_gist_needs_and_uses_a_guide_model(tiny_model_path, tmp_path):
    from conftest import make_task_rows

    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"task": "retrieval", "training": {"loss": "GISTEmbedLoss"}})
    assert err.value.field == "training.guide_model"
    result = Trainer(
        task="retrieval",
        data=make_task_rows("retrieval"),
        base_model=tiny_model_path,
        loss="GISTEmbedLoss",
        guide_model=tiny_model_path,
        output_dir=str(tmp_path / "g"),
        cache=False,
        max_steps=2,
        batch_size=8,
        progress=False,
    ).fit(baseline=False)
    assert result.loss == "GISTEmbedLoss" and result.train_steps == 2


def test_frozen_backbone_trains_on_cached_embeddings(tiny_model_path, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("EMBEDFT_CACHE_DIR", str(tmp_path / "cache"))
    kwargs = dict(
        data=str(DEMO_DATA), base_model=tiny_model_path, cache=False, max_train_pairs=64, epochs=2, batch_size=16, learning_rate=1e-3, progress=False, dense={"out_features": 16}, freeze_backbone=True
    )
    first = Trainer(output_dir=str(tmp_path / "a"), **kwargs).fit()
    assert first.frozen_cache is not None and first.frozen_cache["computed"] > 0
    second = Trainer(output_dir=str(tmp_path / "b"), **kwargs).fit()
    assert second.frozen_cache["computed"] == 0 and second.frozen_cache["hits"] > 0  # a second run encodes nothing
    assert second.after.test_score == pytest.approx(first.after.test_score, abs=1e-6)
    # The result is a plain sentence-transformers model: backbone + trained head, same metrics.
    reloaded = SentenceTransformer(str(first.model_path), device="cpu")
    built = Trainer(output_dir=str(tmp_path / "c"), **kwargs).build_data()
    report = get_task("pair-classification").evaluate(reloaded, built.dev, built.test, 32)
    assert report["test"]["cosine_ap"] == pytest.approx(first.after.test_score, abs=1e-5)
    # The uncached path runs the same configuration through sentence-transformers' trainer.
    plain = Trainer(output_dir=str(tmp_path / "d"), cache_frozen_embeddings=False, **kwargs).fit()
    assert plain.frozen_cache is None and plain.train_steps == first.train_steps


def test_the_cli_owns_the_console_and_the_library_only_logs(tiny_model_path, tmp_path, capsys):
    """`embedft train` shows one bar per phase and the summary, not transformers' log dicts or the libraries' bars;
    -v shows them; Trainer.fit configures no logging handler of its own."""
    import logging

    from embedft.cli import main

    cfg = tmp_path / "run.json"
    cfg.write_text(
        json.dumps(
            {
                "data": {"source": str(DEMO_DATA), "cache": False, "max_train_pairs": 64},
                "model": {"base_model": tiny_model_path},
                "training": {"max_steps": 6, "batch_size": 16, "eval_steps": 3, "learning_rate": 1e-3},
                "output_dir": str(tmp_path / "run"),
            }
        )
    )
    assert main(["train", str(cfg)]) == 0
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    for hidden in ("{'loss'", "'grad_norm'", "Computing widget examples", "Loading weights", "Batches"):
        assert hidden not in shown, hidden
    for phase in ("data", "baseline evaluation", "training", "final evaluation"):
        assert f"{phase}: 100%" in captured.err, phase
    assert "loss=" in captured.err and "dev cosine_ap=" in captured.err  # the training bar's postfix
    assert "test metric" in captured.out and "cosine_ap" in captured.out  # the summary table
    assert RunConfig.from_file(tmp_path / "run" / "config.yaml").training.progress is True  # the display choice is not saved as the run's

    assert main(["-v", "train", str(cfg), "--overwrite"]) == 0
    assert "Computing widget examples" in capsys.readouterr().err  # -v: the libraries' own bars too

    handlers = list(logging.getLogger().handlers)
    Trainer(data=str(DEMO_DATA), base_model=tiny_model_path, output_dir=str(tmp_path / "api"), cache=False, max_train_pairs=32, max_steps=2, batch_size=16).fit()
    assert logging.getLogger().handlers == handlers
    captured = capsys.readouterr()
    assert "{'loss'" not in captured.out + captured.err  # the library never prints the log dicts either


# ---------------------------------------------------------------------- the best dev checkpoint, intervals, repeats
@pytest.mark.parametrize("patience", [None, 1])
def test_the_saved_weights_are_those_of_the_best_dev_evaluation(train_kwargs, patience):
    """Scripted dev scores peak at the second of four evaluations: the saved model is the weights of that step,
    with early stopping (which stops one evaluation later) too."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator
    from transformers import TrainerCallback

    class Scripted(SentenceEvaluator):
        scores = iter([0.5, 0.9, 0.6, 0.4])

        def __call__(self, model, output_path=None, epoch=-1, steps=-1):
            return {"cosine_ap": next(self.scores)}

    snapshots = {}

    class Snapshot(TrainerCallback):
        def on_evaluate(self, args, state, control, model=None, **kwargs):
            snapshots[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()}

    result = Trainer(**train_kwargs, max_steps=8, eval_steps=2, early_stopping_patience=patience, warmup_ratio=0.0, evaluator=Scripted(), callbacks=[Snapshot()]).fit(baseline=False)
    assert [s for s, _ in result.dev_history] == ([2, 4, 6, 8] if patience is None else [2, 4, 6])
    assert result.best_step == 4 and result.best_dev_score == 0.9 and result.stopped_early == (patience == 1)
    assert any(not torch.equal(p, snapshots[6][n]) for n, p in snapshots[4].items())  # training went on after step 4
    saved = dict(SentenceTransformer(str(result.model_path), device="cpu").named_parameters())
    assert all(torch.equal(saved[n], p) for n, p in snapshots[4].items())
    assert f"step 4 of {result.train_steps}" in result.summary()


def test_the_saved_model_scores_the_best_dev_score_of_the_history(train_kwargs, tmp_path):
    from sentence_transformers import SentenceTransformer

    result = Trainer(**{**train_kwargs, "max_train_pairs": None, "learning_rate": 3e-3}, eval_steps=1, max_steps=6, warmup_ratio=0.0, scheduler="constant").fit(baseline=False)
    best = max(score for _, score in result.dev_history)  # the tiny model is new each session: the last evaluation may or may not be the best
    assert result.best_dev_score == best and result.after.dev_score == pytest.approx(best, abs=1e-4)
    reloaded = get_task("pair-classification").evaluate(SentenceTransformer(str(result.model_path), device="cpu"), Trainer(**train_kwargs).build_data().dev, None, 64)
    assert reloaded["dev"]["cosine_ap"] == pytest.approx(best, abs=1e-4)


def test_intervals_and_the_verdict_reach_the_result_metrics_json_and_the_summary(train_kwargs, tmp_path):
    result = Trainer(**train_kwargs, bootstrap={"resamples": 200}).fit()
    for report in (result.before, result.after):
        low, high = report.intervals["test"]["cosine_ap"]
        assert low <= report.test["cosine_ap"] <= high and set(report.intervals) == {"dev", "test"}
    low, high = result.difference_intervals["test"]["cosine_ap"]
    assert low <= result.improvement() <= high
    assert result.verdict.split == "test" and result.verdict.interval == (low, high)
    assert result.verdict.outcome == ("better" if low > 0 else "worse" if high < 0 else "no measurable difference")
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert stored["verdict"]["outcome"] == result.verdict.outcome and stored["verdict"]["message"] == result.verdict.message
    assert stored["difference_intervals"]["test"]["cosine_ap"] == [low, high]
    lines = result.summary().splitlines()
    assert lines[0].startswith("test metric (95% interval)") and any(line.startswith("verdict: ") for line in lines)
    assert Trainer(**{**train_kwargs, "output_dir": str(tmp_path / "none")}, bootstrap={"resamples": 0}).fit().verdict is None


def test_repeats_train_each_seed_on_the_same_splits_and_report_mean_and_spread(train_kwargs, tmp_path):
    result = Trainer(**train_kwargs, max_steps=3, repeats=3, bootstrap={"resamples": 100}).fit()
    r = result.repeats
    values = r.values["cosine_ap"]
    assert r.seeds == [42, 43, 44] and r.split == "test" and len(values) == len(r.dev_scores) == 3
    assert r.mean["cosine_ap"] == pytest.approx(np.mean(values)) and r.std["cosine_ap"] == pytest.approx(np.std(values, ddof=1))
    assert r.std["cosine_ap"] > 0  # the seeds differ
    assert r.saved_seed == r.seeds[int(np.argmax(r.dev_scores))] and result.after.dev_score == max(r.dev_scores)
    assert result.after.test["cosine_ap"] == values[r.seeds.index(r.saved_seed)]
    assert "3 seeds (42, 43, 44)" in result.summary()
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())["repeats"]
    assert stored["mean"]["cosine_ap"] == pytest.approx(r.mean["cosine_ap"]) and stored["std"]["cosine_ap"] == pytest.approx(r.std["cosine_ap"])
