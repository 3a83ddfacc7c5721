"""Trial functions for executor tests; module-level so spawned workers can import them."""

import os

from embedft.trial import TrialResult, run_trial


def die_on_first(config, report):
    if config.number == 0:
        os._exit(3)
    return run_trial(config, report)


def raise_on_first(config, report):
    if config.number == 0:
        raise RuntimeError("boom")
    return run_trial(config, report)


def fake_scores(config, report):
    """No training: report a score per step from the learning rate; prune when told."""
    lr = config.run.training.learning_rate
    seen = []
    for step in (1, 2, 3, 4):
        value = lr * 1000 + step * 0.01
        seen.append((step, value))
        if report(step, value):
            return TrialResult(number=config.number, state="pruned", value=value, intermediate=seen, train_steps=step)
    return TrialResult(number=config.number, state="complete", value=seen[-1][1], intermediate=seen, train_steps=4)


def sleepy_scores(config, report):
    """fake_scores with 0.25 s per step: the trials of two drivers on one study overlap."""
    import time

    def late(step, value):
        time.sleep(0.25)
        return report(step, value)

    return fake_scores(config, late)


def slow(config, report):
    """A trial that would run for a minute, reporting every 0.1 s."""
    import time

    for step in range(600):
        time.sleep(0.1)
        if report(step + 1, 0.5):
            break
    return TrialResult(number=config.number, state="complete", value=0.5, train_steps=600)


def disk_full_on_first(config, report):
    """Trial 0's model save fails as on a full disk; the others train normally."""
    if config.number != 0:
        return run_trial(config, report)
    from unittest import mock

    from sentence_transformers import SentenceTransformer

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with mock.patch.object(SentenceTransformer, "save", full):
        return run_trial(config, report)


def marked_scores(config, report):
    """fake_scores that leaves a trial folder marked as embedft's run (no model in it)."""
    from embedft.files import mark

    mark(config.run.output_dir, "run")
    return fake_scores(config, report)


def visible_gpu(config, report):
    """No training: the trial's error is the CUDA_VISIBLE_DEVICES its worker process sees."""
    return TrialResult(number=config.number, state="fail", error=os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
