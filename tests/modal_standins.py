"""In-process stand-ins for the Modal primitives the Modal executor touches over the network.

Only the network boundary is replaced (image build, ``app.run``, ephemeral Queue/Dict, spawn,
``.remote``, Volume I/O): the App, Image, Volume declaration and functions are the real Modal
objects, and every input runs the real function body through ``Function.local()``. The stand-ins
are written from modal 1.6.4's source and are as strict as the service where it matters:

- **Arguments and results cross a serialisation round trip** (cloudpickle, as Modal's own
  ``serialize``); a Queue, Dict or Volume crosses as a handle to the same object.
- **Containers**: up to ``max_containers``, each kept warm and reused for later inputs (one input
  at a time). A container sees the Volume as it was when it started or last called ``reload()``;
  a trial whose splits or models were not in that view fails. ``reload()``/``commit()`` work only
  inside a container; ``reload()`` raises ``RuntimeError`` (Modal's message) while a file on the
  Volume is open in that container: the hub client keeps its xet log file open for the life of
  the process when ``HF_HOME`` is on the Volume.
- **The driver sees only committed files**: ``listdir``/``read_file``/``remove_file`` show what
  ``batch_upload`` or a container's ``commit()`` made durable, nothing else.
- **Retries** (``modal.Retries``): an input whose call raised or timed out is run again, up to
  ``max_retries``; a preempted container is rescheduled whatever the retries say (and not
  counted); a cancelled input is never retried.
- **Cancellation**: ``FunctionCall.cancel()`` raises ``modal.exception.InputCancellation`` (a
  ``BaseException``) inside the running input at whatever Python code it runs (Modal raises it
  from a signal handler; here it is an asynchronous exception on the input's thread), training
  included; an input cancelled between bodies gets it at its next Queue, Dict or Volume call.
- **The hub cache**: a trial that names a hub model reads it from the Volume's hub cache; offline
  (``HF_HUB_OFFLINE=1`` in the trial function's env) a model not in its view of the cache fails
  the trial, online every such trial is recorded in ``hub_contacts`` (it asks the hub, and may
  write into the shared cache). The prefetch function must be online.
- What raises follows modal: ``Volume.listdir`` of a missing path raises
  ``modal.exception.NotFoundError``, ``remove_file``/``read_file`` ``FileNotFoundError``, a running
  call's ``get(timeout=0)`` the builtin ``TimeoutError``, a timed-out function
  ``modal.exception.FunctionTimeoutError`` (not a builtin one).

Simplification: all containers write into one local folder (the mount); "not visible" is
enforced from the commit record rather than by separate copies.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import queue
import shutil
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import cloudpickle
import modal

from embedft.executors.modal import ModalExecutor, Remote, hub_ids

_HANDLES: dict[int, object] = {}
_current = threading.local()  # .container and .call of the input running on this thread


def _handle(key: int) -> object:
    return _HANDLES[key]


class _Handle:
    """Pickles as a reference to this very object, like a Modal Queue, Dict or Volume handle."""

    def __reduce__(self):
        _HANDLES[id(self)] = self
        return (_handle, (id(self),))


def round_trip(value):
    """What crosses the network: a cloudpickle round trip (Modal pickles arguments and results)."""
    return cloudpickle.loads(cloudpickle.dumps(value))


def _checkpoint() -> None:
    """Where a cancelled input gets Modal's InputCancellation: at its next call to a Modal object."""
    call = getattr(_current, "call", None)
    if call is not None and call.cancelled:
        raise modal.exception.InputCancellation("Input was cancelled by user")


class LocalQueue(_Handle):
    def __init__(self) -> None:
        self._q: queue.Queue = queue.Queue()
        self.puts = 0

    def put(self, value) -> None:
        _checkpoint()
        self.puts += 1
        self._q.put(round_trip(value))

    def get_many(self, n_values: int, block: bool = True, timeout: float | None = None) -> list:
        out = []
        while len(out) < n_values:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                break
        return out


class LocalDict(_Handle):
    def __init__(self) -> None:
        self._d: dict = {}
        self._lock = threading.Lock()

    def put(self, key, value, *, skip_if_exists: bool = False) -> bool:
        with self._lock:
            if skip_if_exists and key in self._d:
                return False
            self._d[key] = round_trip(value)
            return True

    def get(self, key, default=None):
        _checkpoint()
        with self._lock:
            return self._d.get(key, default)


class EntryType(Enum):
    FILE = 1
    DIRECTORY = 2


@dataclass
class Entry:
    path: str
    type: EntryType


@dataclass
class Container:
    """One warm container: its view of the Volume and the files it holds open there."""

    number: int
    view: int
    open_files: set[str] = field(default_factory=set)
    inputs: int = 0
    read_view: int | None = None  # the view this input read its inputs in (before its own commit moved it)


class LocalVolume(_Handle):
    """A folder standing in for a Modal Volume; paths are relative to its root like on Modal.

    ``committed`` maps each durable file to the version that made it durable; ``version`` grows by
    one per upload or commit. ``reloads``/``commits`` count the calls that succeeded.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.commits = 0
        self.reloads = 0
        self.uploads: list[str] = []
        self.committed: dict[str, int] = {}
        self.version = 0
        self._lock = threading.Lock()
        self._durable()  # what an earlier run left in the folder was committed then

    def _path(self, rel: str) -> Path:
        return self.root / rel.strip("/")

    def _durable(self) -> None:
        """Make every file now in the folder durable (an upload or a container's commit)."""
        with self._lock:
            self.version += 1
            for p in self.root.rglob("*"):
                if p.is_file():
                    self.committed.setdefault(p.relative_to(self.root).as_posix(), self.version)

    def visible(self, rel: str, view: int) -> bool:
        """Whether the files under ``rel`` were durable at version ``view`` (what a container with that view sees)."""
        rel = rel.strip("/")
        found = [v for path, v in self.committed.items() if path == rel or path.startswith(rel + "/")]
        return bool(found) and max(found) <= view

    # -- the driver's side (the Volume API from outside a container)
    def listdir(self, path: str, *, recursive: bool = False) -> list[Entry]:
        rel = path.strip("/")
        files = sorted(p for p in self.committed if not rel or p.startswith(rel + "/"))
        if not files:
            raise modal.exception.NotFoundError(f"No such file or directory: {path}")
        entries: dict[str, EntryType] = {}
        for f in files:
            parts = f[len(rel) + 1 :].split("/") if rel else f.split("/")
            for depth in range(1, len(parts) + 1):
                if not recursive and depth > 1:
                    break
                name = "/".join([rel, *parts[:depth]]) if rel else "/".join(parts[:depth])
                entries[name] = EntryType.FILE if depth == len(parts) else EntryType.DIRECTORY
        return [Entry(p, t) for p, t in sorted(entries.items())]

    @contextlib.contextmanager
    def batch_upload(self, force: bool = False):
        volume = self

        class Batch:
            def put_directory(self, local_path, remote_path, recursive: bool = True) -> None:
                volume.uploads.append(str(remote_path))
                shutil.copytree(local_path, volume._path(str(remote_path)), dirs_exist_ok=True)

        yield Batch()
        self._durable()  # a batch upload is durable when the block ends

    def read_file(self, path: str):
        if path.strip("/") not in self.committed:
            raise FileNotFoundError(path)
        data = self._path(path).read_bytes()
        for i in range(0, len(data), 1 << 16):
            yield data[i : i + (1 << 16)]

    def remove_file(self, path: str, recursive: bool = False) -> None:
        rel = path.strip("/")
        gone = [p for p in self.committed if p == rel or p.startswith(rel + "/")]
        if not gone:
            raise FileNotFoundError(path)
        with self._lock:
            for p in gone:
                del self.committed[p]
        target = self._path(path)
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)

    # -- a container's side
    def _container(self, action: str) -> Container:
        _checkpoint()
        container = getattr(_current, "container", None)
        if container is None:
            raise RuntimeError(f"Volume.{action}() must be called inside a container that mounts the Volume")
        return container

    def reload(self) -> None:
        container = self._container("reload")
        if any(f.startswith(str(self.root)) for f in container.open_files):
            first = sorted(container.open_files)[0]
            raise RuntimeError(f"there are open files preventing the operation: path {first} is open")
        container.view = self.version
        self.reloads += 1

    def commit(self) -> None:
        container = self._container("commit")
        if container.read_view is None:
            container.read_view = container.view
        self._durable()
        container.view = self.version
        self.commits += 1


class Preempted(Exception):
    """A lost container: Modal reschedules the input whatever the retry policy says."""


class LocalCall:
    """A spawned call: runs its attempts on a container from the pool, with ``modal.Retries``' meaning."""

    def __init__(self, run_attempt, retries: int) -> None:
        self._value = None
        self._error: BaseException | None = None
        self.attempts = 0
        self.cancelled = False
        self.containers: list[int] = []
        self.in_body = False  # an attempt's body runs on this call's thread: cancel() interrupts it there
        self._lock = threading.Lock()

        def target() -> None:
            failures = 0
            while not self.cancelled:
                self.attempts += 1
                try:
                    self._value, self._error = run_attempt(self, self.attempts), None
                    return
                except Preempted as exc:  # rescheduled, not counted against the retries
                    self._error = exc
                except modal.exception.InputCancellation as exc:  # cancelled: terminated without retrying
                    self._error = exc
                    return
                except BaseException as exc:  # noqa: BLE001 - the call raised or timed out (a SystemExit too): Retries re-runs it
                    self._error = exc
                    failures += 1
                    if failures > retries:
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

    def cancel(self, terminate_containers: bool = False) -> None:
        with self._lock:
            self.cancelled = True
            if self.in_body:  # Modal's signal handler: InputCancellation at the input's next bytecode, wherever it is
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread.ident), ctypes.py_object(modal.exception.InputCancellation))

    def enter_body(self) -> None:
        with self._lock:
            self.in_body = True
        _checkpoint()  # cancelled before this attempt's body started

    def leave_body(self) -> None:
        with self._lock:
            self.in_body = False
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread.ident), None)  # one not yet delivered is dropped

    def join(self, timeout: float = 60.0) -> None:
        self._thread.join(timeout)


class OfflineModal(ModalExecutor):
    """The real ModalExecutor with its network boundary (image build, app.run, ephemeral Queue/Dict, spawn, remote) replaced.

    ``preempt`` holds trial numbers whose first attempt is lost after its first report;
    ``fail_calls`` holds trial numbers whose call raises like a timed-out function, or maps them
    to what their call's attempts raise (modal re-raises the remote exception, a ``SystemExit``
    or ``KeyboardInterrupt`` from the container included). ``build_error`` and ``run_error`` are
    raised by the image build and ``app.run()``. ``output_seen`` records whether Modal's output
    was enabled during the image build and while the app ran.
    """

    def __init__(self, config, volume: LocalVolume, preempt=(), fail_calls=(), build_error=None, run_error=None, **kwargs) -> None:
        super().__init__(config, volume=volume, **kwargs)
        self.preempt = set(preempt)
        timeout = modal.exception.FunctionTimeoutError("Function timeout after 900 seconds")
        self.fail_calls = dict(fail_calls) if isinstance(fail_calls, dict) else dict.fromkeys(fail_calls, timeout)
        self.build_error, self.run_error = build_error, run_error
        self.calls: dict[int, LocalCall] = {}
        self.reports = LocalQueue()
        self.decisions = LocalDict()
        self.containers: list[Container] = []
        self.prefetched: list[list[str]] = []
        self.output_seen: dict[str, bool] = {}
        self.hub_contacts: list[tuple[int, str]] = []  # (trial, hub model) a trial asked the hub for
        self._process = threading.Lock()  # trials in one process share accelerate's global state: one body at a time
        self._pool = threading.Condition()
        self._idle: list[Container] = []
        self._numbers = itertools.count()
        self.in_flight: list[list[int]] = []  # at each spawn: the calls not yet finished

    @staticmethod
    def _output_enabled() -> bool:
        from modal._output.manager import OutputManager

        return bool(getattr(OutputManager.get(), "is_enabled", False))

    @contextlib.contextmanager
    def _run_app(self, *, stream: bool):
        """The app run: the image builds on entry (its progress shows if output is enabled then); the app's logs only with ``stream``."""
        self.output_seen["build"] = self._output_enabled()
        if self.build_error is not None:
            raise self.build_error
        if self.run_error is not None:
            raise self.run_error
        self.output_seen["run"] = stream and self._output_enabled()
        yield self.app

    # -- containers
    def _acquire(self) -> Container:
        with self._pool:
            while not self._idle and len(self.containers) >= self.config.max_containers:
                self._pool.wait()
            if self._idle:
                return self._idle.pop()
            container = Container(next(self._numbers), view=self.volume.version)
            self.containers.append(container)
            return container

    def _release(self, container: Container) -> None:
        with self._pool:
            self._idle.append(container)
            self._pool.notify()

    def _in_container(self, call: LocalCall | None, body):
        """Run ``body(container)`` on a trial container (``call`` given: warm ones are reused) or a fresh one of another function."""
        container = self._acquire() if call is not None else Container(-1, view=self.volume.version)
        _current.container, _current.call = container, call
        try:
            if call is not None:
                call.containers.append(container.number)
            container.inputs += 1
            container.read_view = None
            if call is None:
                return body(container)
            try:
                call.enter_body()
                return body(container)
            finally:
                call.leave_body()
        finally:
            # The hub client opens its xet log under HF_HOME and keeps it open while the process lives.
            home = self.container_env.get("HF_HOME")
            if home and Path(home).is_relative_to(self.volume.root):
                container.open_files.add(f"{home}/xet/logs/xet.log")
            _current.container = _current.call = None
            if call is not None:
                self._release(container)

    def _hub_cache(self, name: str) -> str:
        """The Volume path of hub model ``name`` in the hub cache (``HF_HUB_CACHE``)."""
        cache = self.container_env["HF_HUB_CACHE"][len(self.config.mount) :].strip("/")
        return f"{cache}/models--{name.replace('/', '--')}"

    def _check_hub(self, number: int, names: list[str], env: dict, view: int) -> None:
        """What the hub client does in a trial container for the hub models it names."""
        for name in hub_ids(names):
            if env.get("HF_HUB_OFFLINE") != "1":
                self.hub_contacts.append((number, name))  # online: it asks the hub (and may write into the shared cache)
            elif not self.volume.visible(self._hub_cache(name), view):
                raise OSError(f"{name}: offline (HF_HUB_OFFLINE=1) and not in this container's view of the hub cache")

    def _connect(self, stack):
        self._start_app(stack)
        retries = self.function_options["retries"].max_retries if self.function_options["retries"] else 0
        function = self.trial_function
        volume = self.volume

        def spawn(*args):
            payload, reports, decisions, vol = round_trip(args)
            config = json.loads(payload)
            number = config["number"]
            needed = [config["data_dir"], config["run"]["model"]["base_model"], config["run"]["training"].get("guide_model")]
            needed = [p for p in needed if p and str(p).startswith(self.config.mount + "/")]

            def attempt(call: LocalCall, n: int):
                def body(container: Container):
                    if number in self.fail_calls:
                        raise self.fail_calls[number]
                    if number in self.preempt and n == 1:
                        reports.put((number, 1, 0.0, "lost"))  # a report from the lost attempt
                        raise Preempted("container preempted")
                    with self._process:
                        out = function.local(payload, reports, decisions, vol, 60.0, 0.01)
                    view = container.view if container.read_view is None else container.read_view
                    for path in needed:  # what the trial read had to be in this container's view
                        if not volume.visible(path[len(self.config.mount) :], view):
                            raise FileNotFoundError(f"{path}: not in this container's view of the volume (uploaded or committed after its last reload)")
                    env = {**self.container_env, **(self.function_options.get("env") or {})}
                    self._check_hub(number, [config["run"]["model"]["base_model"], config["run"]["training"].get("guide_model") or ""], env, view)
                    return round_trip(out)

                return self._in_container(call, body)

            self.in_flight.append([n for n, c in self.calls.items() if c._thread.is_alive()] + [number])
            call = LocalCall(attempt, retries)
            self.calls[number] = call
            return call

        def prefetch(names, vol):
            names, vol = round_trip((names, vol))
            if {**self.container_env, **(self._shared_options.get("env") or {})}.get("HF_HUB_OFFLINE") == "1":
                raise OSError("the prefetch function is offline (HF_HUB_OFFLINE=1): it cannot download from the hub")
            self.prefetched.append(list(names))
            return self._in_container(None, lambda _: self.prefetch_function.local(names, vol))

        return Remote(spawn, prefetch, self.reports, self.decisions)
