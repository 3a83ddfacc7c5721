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
from embedft.executors.base import Executor, OnReport, RemoteTrialError, is_executor
from embedft.executors.local import InProcessExecutor, ProcessExecutor, TrialFn
from embedft.files import check_output_dir
from embedft.trial import TrialResult, run_trial

if TYPE_CHECKING:  # pragma: no cover
    from embedft.search.config import SearchConfig

__all__ = ["Executor", "OnReport", "TrialFn", "RemoteTrialError", "InProcessExecutor", "ProcessExecutor", "is_executor", "make_executor", "run_once", "study_key"]

logger = logging.getLogger(__name__)


def make_executor(config: SearchConfig, *, trial_fn: TrialFn | None = None) -> Executor:
    """The executor a search config asks for, with its trial folders: ``OUTPUT_DIR/trials`` locally,
    ``runs/<study_name>-<key>/trials`` on the Modal volume, ``key`` a hash of the study's storage
    (its URL, or the output folder of a journal study) and name, so no two studies share a folder.

    ``trial_fn`` replaces :func:`~embedft.trial.run_trial` in local executors (a Modal trial
    always runs ``run_trial``). Building one starts nothing; :meth:`Executor.start` does.
    """
    kind, output_dir = config.executor, Path(config.output_dir).expanduser()
    if kind == "modal":
        from embedft.executors.modal import ModalExecutor

        return ModalExecutor(config.modal, trials_dir=f"runs/{config.study_name}-{study_key(config)}/trials")
    fn = trial_fn or run_trial
    if kind == "inprocess" or (kind == "auto" and config.workers == 1):
        return InProcessExecutor(fn, trials_dir=output_dir / "trials")
    return ProcessExecutor(config.workers, fn, trials_dir=output_dir / "trials")


def study_key(config: SearchConfig) -> str:
    """A short hash of the study's identity: its name and where it is stored, so two studies never share a remote folder.

    A server storage (PostgreSQL, MySQL) is the same study from every machine: its URL (without the
    password) is the identity. A file storage (the default journal in ``output_dir``, a journal
    file, SQLite) is a file on one machine: its absolute path and the machine's name are, so two
    people running the same config from their own folders (or the same relative ``sqlite:///s.db``)
    get different folders.
    """
    import hashlib
    import socket

    from embedft.redact import redact_url

    storage = config.storage or ""
    if storage.startswith("sqlite:///"):
        storage = f"{socket.gethostname()}:sqlite:{Path(storage[len('sqlite:///') :]).expanduser().resolve()}"
    elif "://" in storage:
        storage = redact_url(storage)
    else:  # a journal file, or the default journal in output_dir
        storage = f"{socket.gethostname()}:{Path(storage.removeprefix('journal:') or config.output_dir).expanduser().resolve()}"
    return hashlib.sha256(f"{storage}\n{config.study_name}".encode()).hexdigest()[:8]


def run_once(run: RunConfig, executor: Executor, local_output: str | Path | None = None) -> TrialResult:
    """One training run (base model, train, test) as a one-trial job on ``executor``.

    ``local_output`` is checked first, as ``output_dir`` of a run (a folder embedft did not write,
    or a finished run without ``run.overwrite``, is refused before anything runs). The splits are
    built here; the run's folder is fetched to ``local_output`` with the config as written (not the
    executor's paths). Raises :class:`RemoteTrialError` when the run fails, and whatever stops
    the fetch. An executor without a ``trials_dir`` keeps the run in a temporary folder.
    """
    from embedft.training import Trainer

    trainer = Trainer(run)
    if local_output is not None:
        check_output_dir(local_output, kind="run", overwrite=run.overwrite, inputs=trainer.inputs())
    built = trainer.build_data()
    name = f"{Path(run.output_dir).name}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="embedft-") as tmp:
        if getattr(executor, "trials_dir", "") is None:
            executor.trials_dir = Path(tmp) / "trials"
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
            executor.fetch(name, Path(local_output).expanduser())
            run.save(Path(local_output).expanduser() / "config.yaml")  # the config as the user wrote it, not the executor's paths
    if executor.gpu_seconds is not None:
        logger.info("training job: %.0f in-trial seconds", executor.gpu_seconds)
    return result
