"""Paired bootstrap intervals (embedft.compare) and the weighted metrics they resample (embedft.metrics)."""

import dataclasses
import time

import numpy as np
import pytest
from scipy.stats import norm, pearsonr, spearmanr
from sklearn.metrics import average_precision_score, roc_auc_score

from embedft.compare import compare_reports, paired_bootstrap, resample_counts
from embedft.metrics import CorrelationScores, MeanScores, PairScores, binary_metrics, retrieval_metrics, retrieval_per_query
from embedft.results import EvalReport


# ------------------------------------------------------------------ weighted metrics = the reported ones
@pytest.mark.parametrize("seed", range(4))
def test_pair_metrics_match_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300).astype(bool)
    scores = np.round(rng.normal(labels * 0.6, 0.5), 1)  # rounded: many ties
    found = PairScores(np.arange(300), scores, labels, 0.3, 0.2).point()
    by_acc, by_f1 = binary_metrics(scores, labels, 0.3), binary_metrics(scores, labels, 0.2)
    assert found["cosine_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert found["cosine_roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert found["cosine_accuracy"] == pytest.approx(by_acc["accuracy"])
    assert [found[f"cosine_{k}"] for k in ("f1", "precision", "recall")] == pytest.approx([by_f1[k] for k in ("f1", "precision", "recall")])
    gold = np.round(rng.random(300), 1)
    corr = CorrelationScores(np.arange(300), scores, gold).point()
    assert corr["spearman_cosine"] == pytest.approx(spearmanr(scores, gold).statistic, abs=1e-12)
    assert corr["pearson_cosine"] == pytest.approx(pearsonr(scores, gold).statistic, abs=1e-12)


def test_a_group_drawn_twice_counts_as_its_rows_twice():
    """A resample's weights give the metrics of the data with each group's rows repeated."""
    rng = np.random.default_rng(1)
    n = 60
    groups = np.unique(rng.integers(0, 25, n), return_inverse=True)[1]
    labels, scores, gold = rng.integers(0, 2, n).astype(bool), np.round(rng.normal(0, 1, n), 1), rng.random(n)
    counts = rng.integers(0, 3, (1, groups.max() + 1)).astype(float)
    rows = np.repeat(np.arange(n), counts[0, groups].astype(int))
    for weighted, repeated in (
        (PairScores(groups, scores, labels, 0.1, -0.2), PairScores(np.arange(len(rows)), scores[rows], labels[rows], 0.1, -0.2)),
        (CorrelationScores(groups, scores, gold), CorrelationScores(np.arange(len(rows)), scores[rows], gold[rows])),
        (MeanScores(groups, {"acc": gold}), MeanScores(np.arange(len(rows)), {"acc": gold[rows]})),
    ):
        got, want = weighted.metrics(counts), repeated.point()
        assert {k: float(v[0]) for k, v in got.items()} == pytest.approx(want, abs=1e-12)


def test_retrieval_per_query_averages_to_the_report():
    rng = np.random.default_rng(0)
    scores, relevant = rng.random((30, 120)), [set(rng.choice(120, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(30)]
    per_query = retrieval_per_query(scores, relevant)
    assert {k: float(v.mean()) for k, v in per_query.items()} == retrieval_metrics(scores, relevant)
    assert all(len(v) == 30 for v in per_query.values())


# ------------------------------------------------------------------ the intervals
def test_resample_counts_draw_as_many_groups_as_there_are():
    counts = resample_counts(50, 200, np.random.default_rng(0))
    assert counts.shape == (200, 50) and (counts.sum(axis=1) == 50).all()
    assert counts.mean() == pytest.approx(1.0) and counts.std() > 0.5


def _synthetic(rng, n_groups, mu_base, mu_tuned, max_size=4):
    """Pairs in groups of 1..max_size rows sharing one draw; the model is right with probability Phi(mu)."""
    sizes = rng.integers(1, max_size + 1, n_groups)
    groups = np.repeat(np.arange(n_groups), sizes)
    labels = np.repeat(rng.integers(0, 2, n_groups).astype(bool), sizes)
    shared = np.repeat(rng.normal(size=n_groups), sizes)  # rows of a group move together: not independent
    sign = np.where(labels, 1.0, -1.0)
    base = PairScores(groups, sign * (mu_base + shared), labels, 0.0, 0.0)
    tuned = PairScores(groups, sign * (mu_tuned + 0.8 * shared + 0.6 * np.repeat(rng.normal(size=n_groups), sizes)), labels, 0.0, 0.0)
    return base, tuned


def test_the_interval_of_the_difference_covers_the_true_difference_at_about_the_nominal_rate():
    """300 seeded data sets with a known accuracy difference Phi(0.9) - Phi(0.5): the 90% interval covers it about 90% of the time."""
    true_difference = norm.cdf(0.9) - norm.cdf(0.5)
    covered = []
    for seed in range(300):
        base, tuned = _synthetic(np.random.default_rng(seed), 60, 0.5, 0.9)
        low, high = paired_bootstrap({"test": base}, {"test": tuned}, resamples=400, confidence=0.9, seed=seed).difference["test"]["cosine_accuracy"]
        covered.append(low <= true_difference <= high)
    assert 0.84 <= np.mean(covered) <= 0.96, np.mean(covered)


def test_group_resampling_gives_wider_intervals_than_row_resampling_on_duplicated_groups():
    rng = np.random.default_rng(0)
    base, tuned = _synthetic(rng, 80, 0.3, 0.6, max_size=1)
    copies = 5  # every group's row five times, as when many pairs share a text
    dup = {name: dataclasses.replace(s, groups=np.repeat(s.groups, copies), scores=np.repeat(s.scores, copies), labels=np.repeat(s.labels, copies)) for name, s in (("base", base), ("tuned", tuned))}
    by_rows = {name: dataclasses.replace(s, groups=np.arange(len(s.groups))) for name, s in dup.items()}

    def width(b, t):
        low, high = paired_bootstrap({"test": b}, {"test": t}, resamples=1000, seed=0).difference["test"]["cosine_ap"]
        return high - low

    assert width(dup["base"], dup["tuned"]) > 1.8 * width(by_rows["base"], by_rows["tuned"])  # sqrt(5) = 2.2 in theory


def test_same_resamples_for_both_models_and_seeded():
    base, tuned = _synthetic(np.random.default_rng(3), 50, 0.5, 0.5)
    same = paired_bootstrap({"test": tuned}, {"test": tuned}, resamples=200, seed=1)
    assert same.difference["test"]["cosine_ap"] == (0.0, 0.0)  # paired: a model minus itself is 0 in every resample
    assert same.base == same.tuned
    assert paired_bootstrap({"test": base}, {"test": tuned}, resamples=200, seed=1) == paired_bootstrap({"test": base}, {"test": tuned}, resamples=200, seed=1)


def _reports(base, tuned):
    def report(s):
        return EvalReport(primary_metric="cosine_ap", dev=s.point(), test=s.point())

    return {"dev": base, "test": base}, {"dev": tuned, "test": tuned}, report(base), report(tuned)


@pytest.mark.parametrize(("mu_tuned", "outcome"), [(1.2, "better"), (0.5, "no measurable difference"), (-0.2, "worse")])
def test_the_verdict_reads_the_interval_of_the_primary_metric_on_test(mu_tuned, outcome):
    base, tuned = _synthetic(np.random.default_rng(7), 150, 0.5, mu_tuned)
    if outcome == "no measurable difference":
        tuned = dataclasses.replace(tuned, scores=tuned.scores + np.random.default_rng(1).normal(0, 0.01, len(tuned.scores)))
        base = dataclasses.replace(tuned, scores=tuned.scores + np.random.default_rng(2).normal(0, 0.01, len(tuned.scores)))
    before, after, difference, verdict = compare_reports(*_reports(base, tuned), resamples=500)
    assert verdict.outcome == outcome and verdict.split == "test" and verdict.metric == "cosine_ap"
    assert verdict.interval == difference["test"]["cosine_ap"]
    assert set(before.intervals) == set(after.intervals) == {"dev", "test"} and after.confidence == 0.95
    assert ("base model is at least as good" in verdict.message) == (outcome == "no measurable difference")
    assert ("embedft search" in verdict.message) == (outcome != "better")


def test_no_resamples_no_intervals_and_a_single_model_gets_its_own():
    base, tuned = _synthetic(np.random.default_rng(0), 40, 0.5, 0.9)
    b_scores, t_scores, before, after = _reports(base, tuned)
    assert compare_reports(b_scores, t_scores, before, after, resamples=0) == (before, after, {}, None)
    alone = compare_reports(None, t_scores, None, after, resamples=100)
    assert alone.before is None and alone.verdict is None and alone.after.intervals["test"]["cosine_ap"][0] <= after.test["cosine_ap"]
    assert "interval" in alone.after.summary()


def test_bootstrap_of_3372_pairs_costs_well_under_two_seconds():
    """The budget of the issue: <= 2 s extra for 3,372 test pairs (both models, 1,000 resamples), checked with slack."""
    base, tuned = _synthetic(np.random.default_rng(0), 2500, 0.5, 0.7, max_size=2)
    t0 = time.perf_counter()
    paired_bootstrap({"test": base}, {"test": tuned}, resamples=1000)
    assert time.perf_counter() - t0 < 4.0  # 0.3-0.5 s on an idle 2-core machine; slack for a busy one


@pytest.mark.parametrize("name", ["pair-classification", "paraphrase-mining", "sts", "triplets", "retrieval"])
def test_every_task_evaluation_carries_scores_that_give_intervals_of_its_report_metrics(name, tiny_model_path):
    from sentence_transformers import SentenceTransformer

    from embedft import DatasetBuilder, get_task

    from conftest import make_task_rows

    task = get_task(name)
    built = DatasetBuilder(task=name, cache=False, splits={"train": 0.6, "dev": 0.2, "test": 0.2}).build(make_task_rows(name))
    report = task.evaluate(SentenceTransformer(tiny_model_path, device="cpu"), built.dev, built.test, 16, False, built.corpus)
    assert set(report.scores) == {"dev", "test"}
    for split in ("dev", "test"):
        assert report.scores[split].point() == pytest.approx({k: report[split][k] for k in report.scores[split].point()}, nan_ok=True)
    found = paired_bootstrap(report.scores, report.scores, resamples=200)
    for metric in task.report_metrics:
        low, high = found.tuned["test"][metric]
        assert np.isfinite(low) and low <= high, (metric, low, high)  # percentile intervals need not contain a biased estimate (AP)
        assert found.difference["test"][metric] == (0.0, 0.0)
    expected_groups = built.test["query_id"].nunique() if name == "retrieval" else built.test["component"].nunique()
    assert found.groups["test"] <= expected_groups
