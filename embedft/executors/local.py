"""Executors on this machine: one trial at a time in this process, or N worker processes.

Trial folders live in ``trials_dir`` (``OUTPUT_DIR/trials`` for a search) and trials read the
saved splits in place. Across processes, intermediate dev scores travel over each worker's pipe
and the prune decision comes back the same way.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import Any

from embedft.executors.base import Executor, OnReport
from embedft.trial import Report, TrialConfig, TrialResult, run_trial, worker_models

__all__ = ["InProcessExecutor", "ProcessExecutor", "TrialFn"]

TrialFn = Callable[..., TrialResult]
"""The function an executor runs per trial: ``trial_fn(TrialConfig, report) -> TrialResult`` (:func:`run_trial`)."""


def _guarded(trial_fn: TrialFn, config: TrialConfig, report: Report) -> TrialResult:
    """Run ``trial_fn``; an exception it lets through becomes a failed result."""
    try:
        return trial_fn(config, report)
    except Exception as exc:  # noqa: BLE001 - a failed trial is a result, never a crash of the search
        return TrialResult(number=config.number, state="fail", error=f"{type(exc).__name__}: {exc}")


class InProcessExecutor(Executor):
    """Runs one trial at a time in the calling process.

    The trials share this process's base-model copy (:func:`~embedft.trial.worker_models`), dropped at :meth:`close`.
    """

    def __init__(self, trial_fn: TrialFn = run_trial, *, trials_dir: str | Path | None = None) -> None:
        super().__init__(trials_dir)
        self._trial_fn = trial_fn
        self._pending: deque[TrialConfig] = deque()

    def submit(self, config: TrialConfig) -> None:
        """Queue a trial; it runs in the next ``wait``."""
        self._pending.append(config)

    def wait(self, on_report: OnReport, timeout: float = 0.0) -> list[TrialResult]:
        """Run the next queued trial to its end (``timeout`` is ignored) and return its result."""
        if not self._pending:
            return []
        config = self._pending.popleft()
        return [_guarded(self._trial_fn, config, lambda step, value: on_report(config.number, step, value))]

    def close(self) -> None:
        """Drop the queued trials and the base model this process kept for them."""
        self._pending.clear()
        worker_models().clear()


def _worker_main(conn: mp_connection.Connection, trial_fn: TrialFn, threads: int, gpu: str | None, decision_timeout: float) -> None:
    """A worker process: takes trial configs over its pipe, runs them, sends reports and results back.

    Each worker has its own duplex pipe, written synchronously: a worker that dies can lose
    only its own messages and never leaves a shared lock held. ``gpu`` pins it to one GPU.
    """
    if gpu is not None:  # before torch initialises CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(threads)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        if message[0] != "trial":  # a prune decision that came after its report timed out
            continue
        config = TrialConfig.model_validate_json(message[1])

        def report(step: int, value: float) -> bool:
            conn.send(("report", step, value))
            deadline = time.monotonic() + decision_timeout
            while conn.poll(max(0.0, deadline - time.monotonic())):
                kind, answered_step, prune = conn.recv()
                if kind == "decision" and answered_step == step:
                    return bool(prune)
                if time.monotonic() >= deadline:
                    break
            return False  # no answer in time: keep training

        result = _guarded(trial_fn, config, report)
        conn.send(("result", result.model_dump_json()))


@dataclass
class _Worker:
    proc: Any
    conn: Any
    number: int | None = None  # the trial it is running


class ProcessExecutor(Executor):
    """N worker processes on this machine, started by :meth:`start`; CPU threads are divided among them.

    The driver hands each trial to one idle worker itself, so it always knows which trial a
    worker holds. A worker that dies (killed, out of memory, ``os._exit``) fails only the trial it
    was running, recorded with its exit code; a fresh worker takes its place. With GPUs, each
    worker is pinned to one GPU round-robin: worker ``i`` gets ``CUDA_VISIBLE_DEVICES`` set to
    the ``i``-th (modulo their number) of the GPUs this process sees, as this process names them.
    """

    def __init__(self, workers: int, trial_fn: TrialFn = run_trial, decision_timeout: float = 60.0, *, trials_dir: str | Path | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        super().__init__(trials_dir)
        self.max_parallel = workers
        self._trial_fn = trial_fn
        self._decision_timeout = decision_timeout
        self._ctx = mp.get_context("spawn")
        self._threads = max(1, (os.cpu_count() or 1) // workers)
        self._gpus: list[str] = []
        self._workers: list[_Worker] = []
        self._pending: deque[TrialConfig] = deque()
        self._slot = 0

    def start(self, data_dir: str | Path, models: Iterable[str] = ()) -> None:
        """Start the worker processes."""
        super().start(data_dir, models)
        self._gpus = _visible_gpus()
        self._workers = [self._spawn() for _ in range(self.max_parallel)]

    def _spawn(self) -> _Worker:
        gpu = self._gpus[self._slot % len(self._gpus)] if self._gpus else None
        self._slot += 1
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child, self._trial_fn, self._threads, gpu, self._decision_timeout), daemon=True)
        proc.start()
        child.close()
        return _Worker(proc, parent)

    def submit(self, config: TrialConfig) -> None:
        """Queue a trial and hand it to an idle worker, if there is one."""
        self._pending.append(config)
        self._dispatch()

    def _dispatch(self) -> None:
        for worker in self._workers:
            if not self._pending:
                return
            if worker.number is None and worker.proc.is_alive():
                config = self._pending.popleft()
                worker.number = config.number
                worker.conn.send(("trial", config.model_dump_json()))

    def wait(self, on_report: OnReport, timeout: float = 1.0) -> list[TrialResult]:
        """Relay worker reports to ``on_report`` for up to ``timeout`` seconds; return the trials that ended.

        A worker that dies mid-trial gives a failed result for its trial and is replaced.
        """
        results: list[TrialResult] = []
        deadline = time.monotonic() + timeout
        while True:
            self._dispatch()
            handles = [w.conn for w in self._workers] + [w.proc.sentinel for w in self._workers]
            ready = set(mp_connection.wait(handles, timeout=max(0.0, deadline - time.monotonic())))
            for index, worker in enumerate(list(self._workers)):
                if worker.conn in ready:
                    if not self._drain(worker, on_report, results):
                        results.extend(self._replace(index, worker))
                elif worker.proc.sentinel in ready:
                    results.extend(self._replace(index, worker))
            if results or time.monotonic() >= deadline:
                self._dispatch()
                return results

    def _drain(self, worker: _Worker, on_report: OnReport, results: list[TrialResult]) -> bool:
        """Read every message a worker has sent; False when its pipe is closed."""
        try:
            while worker.conn.poll():
                message = worker.conn.recv()
                if message[0] == "report" and worker.number is not None:
                    _, step, value = message
                    worker.conn.send(("decision", step, bool(on_report(worker.number, step, value))))
                elif message[0] == "result":
                    results.append(TrialResult.model_validate_json(message[1]))
                    worker.number = None
        except (EOFError, OSError):
            return False
        return True

    def _replace(self, index: int, worker: _Worker) -> list[TrialResult]:
        """A worker died: fail the trial it held and start a fresh worker in its place."""
        worker.proc.join(timeout=5)
        worker.conn.close()
        self._workers[index] = self._spawn()
        if worker.number is None:
            return []
        error = f"worker process died with exit code {worker.proc.exitcode} while running the trial"
        return [TrialResult(number=worker.number, state="fail", error=error)]

    def close(self) -> None:
        """Drop the queued trials and stop the workers (one still busy after 5 s is killed)."""
        self._pending.clear()
        for worker in self._workers:
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(None)
        for worker in self._workers:
            worker.proc.join(timeout=5)
            if worker.proc.is_alive():
                worker.proc.kill()
                worker.proc.join(timeout=5)
            worker.conn.close()
        self._workers.clear()


def _visible_gpus() -> list[str]:
    """The GPUs this process sees, as ``CUDA_VISIBLE_DEVICES`` names them (indices 0..n-1 when it is unset)."""
    count, named = _gpu_count(), os.environ.get("CUDA_VISIBLE_DEVICES")
    return [g.strip() for g in named.split(",")][:count] if named else [str(i) for i in range(count)]


def _gpu_count() -> int:
    with contextlib.suppress(ImportError):
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    return 0
