"""Executors run trials: in this process, in local worker processes, or on Modal GPUs.

One setting chooses them (``executor: inprocess | process | modal``, or ``auto``: inprocess
for one worker, else process) and one factory builds them, :func:`make_executor`; the search
driver only calls the :class:`Executor` interface. A single training run on an executor is a
one-trial job (:func:`run_once`) through the same interface. Building an executor starts
nothing; :meth:`Executor.start` does (worker processes, the Modal app)::

    >>> from embedft.search import SearchConfig
    >>> executor = make_executor(SearchConfig(workers=2))
    >>> type(executor).__name__, executor.max_parallel
    ('ProcessExecutor', 2)

Only :mod:`embedft.executors.modal` imports ``modal``.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from embedft.config import RunConfig
from embedft.executors.base import Executor, OnReport, RemoteTrialError
from embedft.executors.local import InProcessExecutor, ProcessExecutor, TrialFn
from embedft.trial import TrialResult, run_trial

if TYPE_CHECKING:  # pragma: no cover
    from embedft.search.config import SearchConfig

__all__ = ["Executor", "OnReport", "TrialFn", "RemoteTrialError", "InProcessExecutor", "ProcessExecutor", "make_executor", "run_once"]

logger = logging.getLogger(__name__)


def make_executor(config: SearchConfig, *, trial_fn: TrialFn | None = None) -> Executor:
    """The executor a search config asks for, with its trial folders: ``OUTPUT_DIR/trials`` locally,
    ``runs/<study_name>/trials`` on the Modal volume.

    ``trial_fn`` replaces :func:`~embedft.trial.run_trial` in local executors (a Modal trial
    always runs ``run_trial``). Building one starts nothing; :meth:`Executor.start` does.
    """
    kind = config.executor
    if kind == "modal":
        from embedft.executors.modal import ModalExecutor

        return ModalExecutor(config.modal, trials_dir=f"runs/{config.study_name}/trials")
    trials_dir, fn = Path(config.output_dir).expanduser() / "trials", trial_fn or run_trial
    if kind == "inprocess" or (kind == "auto" and config.workers == 1):
        return InProcessExecutor(trials_dir, fn)
    return ProcessExecutor(trials_dir, config.workers, fn)


def run_once(run: RunConfig, executor: Executor, local_output: str | Path | None = None) -> TrialResult:
    """One training run (base model, train, test) as a one-trial job on ``executor``.

    The splits are built here; the run's folder is fetched to ``local_output`` with the config as
    written (not the executor's paths). Raises :class:`RemoteTrialError` when the run fails.
    """
    from embedft.training import Trainer

    built = Trainer(run).build_data()
    name = f"{Path(run.output_dir).name}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="embedft-") as tmp:
        executor.start(built.save(Path(tmp) / built.report.fingerprint), [run.model.base_model])
        try:
            executor.submit(executor.trial(0, {}, run, name=name, baseline=True, evaluate_test=True))
            results: list[TrialResult] = []
            while not results:
                results = executor.wait(lambda *_: False, timeout=30.0)
        finally:
            executor.close()
        result = results[0]
        if result.state != "complete":
            raise RemoteTrialError("the training run failed", field="executor", expected="a completed run", found=result.error)
        if local_output is not None:
            if executor.fetch(name, Path(local_output).expanduser()) is None:
                raise RemoteTrialError("the run's folder could not be fetched", field="executor", expected="the run's model folder", found=executor.trial_dir(name))
            run.save(Path(local_output).expanduser() / "config.yaml")  # the config as the user wrote it, not the executor's paths
    if executor.gpu_seconds is not None:
        logger.info("training job: %.0f GPU-seconds", executor.gpu_seconds)
    return result
