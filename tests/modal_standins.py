"""In-process stand-ins for the Modal primitives the Modal executor touches over the network.

Only the network boundary is replaced: the App, Image, Volume declaration and the GPU
function are the real Modal objects, and every trial runs the real function body through
``Function.local()``. What raises follows modal 1.6.4: ``Volume.listdir`` of a missing path
raises ``modal.exception.NotFoundError``, ``remove_file``/``read_file`` turn it into
``FileNotFoundError``, a running call's ``get(timeout=0)`` raises the builtin ``TimeoutError``
and a timed-out function ``modal.exception.FunctionTimeoutError`` (not a builtin one).
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import modal

from embedft.executors.modal import ModalExecutor


class LocalQueue:
    def __init__(self) -> None:
        self._q: queue.Queue = queue.Queue()
        self.puts = 0

    def put(self, value) -> None:
        self.puts += 1
        self._q.put(value)

    def get_many(self, n_values: int, block: bool = True, timeout: float | None = None) -> list:
        out = []
        while len(out) < n_values:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                break
        return out


class LocalDict:
    def __init__(self) -> None:
        self._d: dict = {}
        self._lock = threading.Lock()

    def put(self, key, value, *, skip_if_exists: bool = False) -> bool:
        with self._lock:
            if skip_if_exists and key in self._d:
                return False
            self._d[key] = value
            return True

    def get(self, key, default=None):
        with self._lock:
            return self._d.get(key, default)


class EntryType(Enum):
    FILE = 1
    DIRECTORY = 2


@dataclass
class Entry:
    path: str
    type: EntryType


class LocalVolume:
    """A folder standing in for a Modal Volume; paths are relative to its root like on Modal."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.commits = 0
        self.reloads = 0
        self.uploads: list[str] = []

    def _path(self, rel: str) -> Path:
        return self.root / rel.strip("/")

    def listdir(self, path: str, *, recursive: bool = False) -> list[Entry]:
        base = self._path(path)
        if not base.exists():
            raise modal.exception.NotFoundError(f"No such file or directory: {path}")
        items = base.rglob("*") if recursive else base.iterdir()
        return [Entry(str(p.relative_to(self.root)), EntryType.FILE if p.is_file() else EntryType.DIRECTORY) for p in sorted(items)]

    @contextlib.contextmanager
    def batch_upload(self, force: bool = False):
        volume = self

        class Batch:
            def put_directory(self, local_path, remote_path, recursive: bool = True) -> None:
                volume.uploads.append(str(remote_path))
                shutil.copytree(local_path, volume._path(str(remote_path)), dirs_exist_ok=True)

        yield Batch()

    def read_file(self, path: str):
        data = self._path(path).read_bytes()
        for i in range(0, len(data), 1 << 16):
            yield data[i : i + (1 << 16)]

    def remove_file(self, path: str, recursive: bool = False) -> None:
        target = self._path(path)
        if not target.exists():
            raise FileNotFoundError(path)
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    def reload(self) -> None:
        self.reloads += 1

    def commit(self) -> None:
        self.commits += 1


class Preempted(Exception):
    """What a lost container looks like to the retry logic."""


class LocalCall:
    """A spawned call: runs attempts in a thread, retrying lost ones like ``modal.Retries``."""

    def __init__(self, attempt, retries: int) -> None:
        self._value = None
        self._error: BaseException | None = None
        self.attempts = 0
        self.cancelled = False

        def target() -> None:
            for _ in range(retries + 1):
                self.attempts += 1
                try:
                    self._value = attempt(self.attempts)
                    self._error = None
                    return
                except Preempted as exc:
                    self._error = exc
                except BaseException as exc:  # noqa: BLE001 - an exception in the function body (SystemExit too, as Modal reports it): no retry here
                    self._error = exc
                    return

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def get(self, timeout: float | None = None):
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError()
        if self._error is not None:
            raise self._error
        return self._value

    def cancel(self) -> None:
        self.cancelled = True


class OfflineModal(ModalExecutor):
    """The real ModalExecutor with its network boundary (app.run, ephemeral Queue/Dict, spawn) replaced.

    ``preempt`` holds trial numbers whose first attempt is lost after its first report;
    ``fail_calls`` holds trial numbers whose call raises like a timed-out function, or maps them
    to what their call's ``get`` raises (modal re-raises the remote exception, a ``SystemExit``
    or ``KeyboardInterrupt`` from the container included).
    """

    def __init__(self, config, volume: LocalVolume, preempt=(), fail_calls=(), **kwargs) -> None:
        super().__init__(config, volume=volume, **kwargs)
        self.preempt = set(preempt)
        timeout = modal.exception.FunctionTimeoutError("Function timeout after 900 seconds")
        self.fail_calls = dict(fail_calls) if isinstance(fail_calls, dict) else dict.fromkeys(fail_calls, timeout)
        self.calls: dict[int, LocalCall] = {}
        self.reports = LocalQueue()
        self.decisions = LocalDict()
        self._container = threading.Lock()
        self.in_flight: list[list[int]] = []  # at each spawn: the calls not yet finished

    def _connect(self, stack):
        import json

        retries = self.function_options["retries"].max_retries if self.function_options["retries"] else 0
        function = self.trial_function

        def spawn(payload, reports, decisions, volume):
            number = json.loads(payload)["number"]

            def attempt(n: int):
                if number in self.fail_calls:
                    raise self.fail_calls[number]
                if number in self.preempt and n == 1:
                    reports.put((number, 1, 0.0, "lost"))  # a report from the lost attempt
                    raise Preempted("container preempted")
                # Containers do not share a process; trials in one process do (accelerate's global
                # state), so the stand-in runs one body at a time while several calls are in flight.
                with self._container:
                    return function.local(payload, reports, decisions, volume, 60.0, 0.01)

            self.in_flight.append([n for n, c in self.calls.items() if c._thread.is_alive()] + [number])
            call = LocalCall(attempt, retries)
            self.calls[number] = call
            return call

        return spawn, self.reports, self.decisions
