import numpy as np
import pandas as pd
import pytest

from embedft.metrics import best_threshold, binary_metrics, evaluate_pair_classification


def brute_force(scores, labels, objective):
    best = -1.0
    for t in np.r_[scores, scores.max() + 1]:
        m = binary_metrics(scores, labels, t)
        if m[objective] > best + 1e-12:
            best = m[objective]
    return best


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("objective", ["accuracy", "f1"])
def test_best_threshold_matches_brute_force(seed, objective):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(labels * 0.6, 0.5), 1)  # rounded: many ties
    t = best_threshold(scores, labels, objective)
    assert binary_metrics(scores, labels, t)[objective] == pytest.approx(brute_force(scores, labels, objective))


class FakeModel:
    """Encodes a text as a unit vector at the angle given in the text."""

    def encode(self, texts, **kw):
        angles = np.array([float(t.split(":")[1]) for t in texts])
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def frame(angles, labels, tag):
    return pd.DataFrame({"text1": [f"{tag}{i}a:0" for i in range(len(angles))], "text2": [f"{tag}{i}b:{a}" for i, a in enumerate(angles)], "label": labels})


def test_test_metrics_use_dev_thresholds():
    dev = frame([0.1, 0.2, 1.0, 1.2], [1, 1, 0, 0], "d")  # dev separates at cos ~0.75
    test = frame([0.1, 0.9, 1.0, 1.2], [1, 1, 0, 0], "t")  # test's positive at 0.9 rad (cos 0.62) falls below it
    report = evaluate_pair_classification(FakeModel(), dev, test)
    assert report["dev"]["cosine_accuracy"] == 1.0
    assert report["test"]["accuracy_threshold"] == report["dev"]["accuracy_threshold"]
    assert report["test"]["cosine_accuracy"] == 0.75  # a test-tuned threshold would give 1.0
    assert report["test"]["cosine_ap"] == 1.0  # threshold-free metric still perfect
