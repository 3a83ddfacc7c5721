"""The Modal executor: trials (and one-trial training jobs) on Modal serverless GPUs.

This is the only embedft module that imports ``modal`` (``pip install "embedft[modal]"``),
and nothing Modal is created at import: :class:`ModalExecutor` builds the App, Image, Volume
and GPU function from a :class:`~embedft.config.ModalConfig` when a search or a training run
asks for it::

    from embedft import OptunaSearch, SearchConfig

    cfg = SearchConfig.from_file("search.yaml")          # executor: modal, modal: {gpu: L4, max_containers: 8}
    OptunaSearch(cfg).run()                               # the study stays in the local journal

A remote trial gets only its config and Volume paths: the splits (uploaded once per data
fingerprint under ``data/``), a local base model (once, under ``models/``). The GPU function runs
:func:`embedft.trial.run_trial` unchanged and writes its model to ``runs/<study>-<key>/trials/<number>``;
intermediate dev scores go to a ``modal.Queue`` and the driver's prune decisions come back in a
``modal.Dict``; preemptions are retried (``modal.Retries``), and a timeout or an exception (even a
``SystemExit`` in the container) becomes a failed trial with its message (docs/modal.md tells the
whole story).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from embedft.config import ModalConfig
from embedft.errors import require
from embedft.executors.base import Executor, OnReport, RemoteTrialError
from embedft.files import check_output_dir, new_scratch, remove_owned, replace_dir
from embedft.trial import TrialConfig, TrialResult, run_trial

modal = require("modal", "modal")

__all__ = ["ModalExecutor", "RemoteTrialError", "pinned_requirements", "remote_trial", "decision_key"]

logger = logging.getLogger(__name__)

# The distributions a remote container needs, pinned to the versions installed here.
_RUNTIME_PACKAGES = ("torch", "sentence-transformers", "transformers", "accelerate", "datasets", "pydantic", "pyyaml", "pandas", "pyarrow", "scikit-learn", "optuna", "tqdm", "matplotlib")
_NO_TOKEN = "a Modal token (run `modal setup`) and network access to Modal"


def pinned_requirements(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """``name==version`` for each runtime package installed here (local build tags such as ``+cpu`` dropped).

    Dropping ``+cpu`` lets the GPU image take the CUDA build of the same torch release.
    """
    pins = []
    for name in _RUNTIME_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
    return pins + list(extra)


def decision_key(number: int, step: int, attempt: str) -> str:
    """The ``modal.Dict`` key under which the driver answers a report of trial ``number`` at ``step``.

    ``attempt`` is drawn per call, so a retried trial never reads an answer meant for its lost attempt.
    """
    return f"{number}:{step}:{attempt}"


def remote_trial(payload: str, reports: Any, decisions: Any, volume: Any, decision_timeout: float = 600.0, poll: float = 0.5) -> str:
    """The body of the GPU function: one trial, its reports over ``reports`` and answers from ``decisions``.

    ``reports`` needs ``put``, ``decisions`` needs ``get`` (a ``modal.Queue`` and ``modal.Dict``
    remotely), ``volume`` needs ``reload`` and ``commit``. Returns the :class:`TrialResult` as JSON.
    """
    config = TrialConfig.model_validate_json(payload)
    attempt = uuid.uuid4().hex[:12]
    volume.reload()  # see splits uploaded after this container started

    def report(step: int, value: float) -> bool:
        reports.put((config.number, step, value, attempt))
        deadline = time.monotonic() + decision_timeout
        while time.monotonic() < deadline:
            decision = decisions.get(decision_key(config.number, step, attempt))
            if decision is not None:
                return bool(decision)
            time.sleep(poll)
        return False  # the driver is gone or slow: keep training

    result = run_trial(config, report)
    if result.state == "complete":
        volume.commit()  # the trial's model and metrics become visible to the driver
    return result.model_dump_json()


class ModalExecutor(Executor):
    """Runs trials on a Modal GPU function; its App, Image, Volume and function are built offline.

    Nothing touches the network until :meth:`start` (or :meth:`pull`) is used.
    ``function_options`` holds exactly what the GPU function was declared with. Trial folders
    live on the Volume under ``trials_dir`` (``runs/<study_name>-<key>/trials`` for a search);
    ``volume`` replaces only the handle used for I/O from here (tests pass a local stand-in).
    """

    trials_dir: Path  # always set: a folder on the Volume
    gpu_seconds: float = 0.0  # billed time of this executor's calls, always known

    def __init__(self, config: ModalConfig | dict[str, Any] | None = None, *, trials_dir: str = "runs/embedft/trials", volume: Any = None) -> None:
        super().__init__(trials_dir)
        self.config = cfg = config if isinstance(config, ModalConfig) else ModalConfig(**(config or {}))
        python = cfg.python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
        self.requirements = pinned_requirements(cfg.pip)
        self.app = modal.App(cfg.app_name)
        self.image = (
            modal.Image.debian_slim(python_version=python).uv_pip_install(*self.requirements).env({"HF_HOME": f"{cfg.mount}/hf", "TOKENIZERS_PARALLELISM": "false"}).add_local_python_source("embedft")
        )
        self.modal_volume = modal.Volume.from_name(cfg.volume, create_if_missing=True)  # the Volume the function mounts
        self.volume = volume if volume is not None else self.modal_volume
        self.function_options: dict[str, Any] = {
            "image": self.image,
            "gpu": cfg.gpu,
            "timeout": cfg.timeout,
            "retries": modal.Retries(max_retries=cfg.retries, initial_delay=5.0, backoff_coefficient=2.0) if cfg.retries else None,
            "max_containers": cfg.max_containers,
            "scaledown_window": cfg.scaledown_window,
            "volumes": {cfg.mount: self.modal_volume},
            "secrets": [modal.Secret.from_name(name) for name in cfg.secrets],
            "serialized": True,
            "name": "embedft_trial",
        }
        self.trial_function = self.app.function(**self.function_options)(remote_trial)
        self.max_parallel = cfg.max_containers
        self._calls: dict[int, tuple[Any, float]] = {}
        self._stack: contextlib.ExitStack | None = None
        self._getter: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ volume paths
    def remote_path(self, *parts: str) -> str:
        """A path inside the container (under the mount)."""
        return "/".join([self.config.mount.rstrip("/"), *parts])

    def trial_dir(self, name: str) -> str:
        """The trial folder ``name`` inside the container."""
        return self.remote_path(self.trials_dir.as_posix(), name)

    def _rel(self, remote: str) -> str:
        """A Volume path: a container path (under the mount) or one already relative to the Volume."""
        rel = remote[len(self.config.mount) :] if remote.startswith(self.config.mount + "/") else remote
        return "/" + rel.strip("/")

    def _upload_once(self, local_dir: str | Path, rel: str, marker: str) -> None:
        try:
            present = {PurePosixPath(e.path).name for e in self.volume.listdir(rel)}
        except Exception:  # noqa: BLE001 - NotFoundError: not uploaded yet (any other failure shows in the upload below)
            present = set()
        if marker in present:
            return
        logger.info("uploading %s to volume %s:%s", local_dir, self.config.volume, rel)
        try:
            with self.volume.batch_upload(force=True) as batch:
                batch.put_directory(str(local_dir), rel)
        except Exception as exc:
            raise RemoteTrialError(f"cannot upload to the Modal volume: {type(exc).__name__}: {exc}", field="modal.volume", expected=_NO_TOKEN, found=f"{self.config.volume}:{rel}") from exc

    def upload_data(self, local_dir: str | Path, fingerprint: str) -> str:
        """Upload built splits once per fingerprint; returns their path inside the container."""
        self._upload_once(local_dir, f"/data/{fingerprint}", "report.json")
        return self.remote_path("data", fingerprint)

    def upload_model(self, local_dir: str | Path) -> str:
        """Upload a local model folder once (keyed by its files' names, sizes and times); returns its container path."""
        import hashlib

        from embedft.modeling import local_model_digest

        local_dir = Path(local_dir).expanduser().resolve()
        digest = hashlib.sha256(f"{local_dir}:{local_model_digest(str(local_dir))}".encode())
        key = f"{local_dir.name}-{digest.hexdigest()[:12]}"
        self._upload_once(local_dir, f"/models/{key}", "modules.json" if (local_dir / "modules.json").is_file() else "config.json")
        return self.remote_path("models", key)

    def pull(self, remote: str, local: str | Path, *, kind: str = "model") -> Path:
        """Copy a folder from the Volume (a path inside the container or relative to it) to ``local``, atomically.

        ``local`` must be new, empty or an embedft ``kind`` folder (it is then replaced once the new
        copy is complete); a folder embedft did not write is refused before anything is fetched.
        """
        rel, local = self._rel(remote), Path(local).expanduser()
        check_output_dir(local, kind=kind, field="local", overwrite=True)
        tmp = new_scratch(local)
        try:
            try:
                files = [e for e in self.volume.listdir(rel, recursive=True) if _is_file(e)]
            except (FileNotFoundError, modal.exception.NotFoundError):
                files = []
            except modal.exception.AuthError as exc:
                expected = "a Modal token (run `modal token new` or set MODAL_TOKEN_ID/MODAL_TOKEN_SECRET)"
                raise RemoteTrialError(f"Modal refused the credentials: {exc}", field="executor", expected=expected, found=self.config.volume) from None
            if not files:
                raise RemoteTrialError("nothing to pull", field="remote", expected="a folder on the volume with files", found=f"{self.config.volume}:{rel}")
            for entry in files:
                path = "/" + entry.path.strip("/")
                target = tmp / PurePosixPath(path).relative_to(rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as fh:
                    for chunk in self.volume.read_file(path):
                        fh.write(chunk)
            replace_dir(tmp, local, kind=kind, overwrite=True)  # an existing copy goes only once the new one is complete
        finally:
            remove_owned(tmp)
        return local

    def remove_trials(self, numbers: Iterable[int]) -> None:
        """Delete the Volume folders of trials ``numbers``; a missing one is skipped."""
        rel = self._rel(self.trials_dir.as_posix())
        for number in numbers:
            try:
                self.volume.remove_file(f"{rel}/{number:04d}", recursive=True)
            except (FileNotFoundError, modal.exception.NotFoundError):
                continue  # never written (a failed or pruned trial), or removed already
            except Exception as exc:  # noqa: BLE001 - a lost connection is never worth failing the search
                logger.warning("could not remove losing trial folders from the volume: %s", exc)
                return

    def fetch(self, name: str, local: Path) -> Path:
        """Pull trial folder ``name`` from the Volume to ``local`` (see :meth:`pull`)."""
        return self.pull(self.trial_dir(name), local, kind="run")

    # ------------------------------------------------------------------ running
    def start(self, data_dir: str | Path, models: Iterable[str] = ()) -> None:
        """Upload the splits (named by their folder, the data fingerprint) and local base models once, then start the app."""
        self.data_dir, self.gpu_seconds = self.upload_data(data_dir, Path(data_dir).name), 0.0
        # Containers cannot see local folders: local base models go to the volume once.
        self.models = {m: self.upload_model(m) for m in sorted(set(models)) if Path(m).expanduser().is_dir()}
        logger.info("trial folders on volume %s: %s", self.config.volume, self._rel(self.trials_dir.as_posix()))
        self.connect()

    def _connect(self, stack: contextlib.ExitStack) -> tuple[Callable[..., Any], Any, Any]:
        """Start the app and the ephemeral channels: the network boundary. Returns (spawn, reports, decisions)."""
        stack.enter_context(self.app.run())
        reports = stack.enter_context(modal.Queue.ephemeral())
        decisions = stack.enter_context(modal.Dict.ephemeral())
        return self.trial_function.spawn, reports, decisions

    def connect(self) -> None:
        """Start the app and the report/decision channels; :meth:`close` stops them."""
        stack = contextlib.ExitStack()
        try:
            self._spawn, self._reports, self._decisions = self._connect(stack)
        except Exception as exc:
            stack.close()
            raise RemoteTrialError(f"cannot start the Modal app: {type(exc).__name__}: {exc}", field="executor", expected=_NO_TOKEN, found=self.config.app_name) from exc
        self._stack = stack
        self._getter = ThreadPoolExecutor(1, thread_name_prefix="embedft-modal-get")

    def submit(self, config: TrialConfig) -> None:
        """Spawn the GPU function for a trial (Modal queues it when ``max_containers`` are busy)."""
        call = self._spawn(config.model_dump_json(), self._reports, self._decisions, self.volume)
        self._calls[config.number] = (call, time.monotonic())

    def wait(self, on_report: OnReport, timeout: float = 1.0) -> list[TrialResult]:
        """Relay reports from the Queue to ``on_report`` and its answers to the Dict for up to ``timeout``
        seconds; return the trials that ended (a timeout or a failed call is a failed result).

        A call's result is read on a helper thread: whatever it raises, a ``BaseException`` such
        as a remote ``SystemExit`` included, is the trial's outcome, while a Ctrl-C here (it
        reaches only the main thread) still stops the search."""
        if self._getter is None:
            raise RemoteTrialError("the Modal app is not running", field="executor", expected="executor.start(data_dir) before wait()", found=self.config.app_name)
        results: list[TrialResult] = []
        deadline = time.monotonic() + timeout
        while True:
            for number, step, value, attempt in self._reports.get_many(1000, block=False):
                if number in self._calls:
                    self._decisions.put(decision_key(number, step, attempt), bool(on_report(number, step, value)))
            for number, (call, started) in list(self._calls.items()):
                future = self._getter.submit(call.get, timeout=0)
                exc = future.exception()  # a Ctrl-C while this waits is the user's: it propagates
                if isinstance(exc, TimeoutError):  # still running
                    continue
                if exc is None:
                    output = future.result()
                else:  # timeout, exception after retries, lost container, a SystemExit in the container
                    error = f"remote trial failed: {type(exc).__name__}: {exc}"
                    output = TrialResult(number=number, state="fail", error=error, seconds=time.monotonic() - started).model_dump_json()
                del self._calls[number]
                result = TrialResult.model_validate_json(output)
                self.gpu_seconds += result.seconds or (time.monotonic() - started)
                results.append(result)
            if results or time.monotonic() >= deadline:
                return results
            time.sleep(max(0.0, min(self.config.poll_seconds, deadline - time.monotonic())))

    def close(self) -> None:
        """Cancel trials still running (Ctrl-C, budget) so no GPU keeps billing, then stop the app and channels."""
        for call, _ in self._calls.values():
            with contextlib.suppress(Exception):
                call.cancel()
        self._calls.clear()
        if self._getter is not None:
            self._getter.shutdown(wait=False, cancel_futures=True)
            self._getter = None
        if self._stack is not None:
            self._stack.close()
            self._stack = None


def _is_file(entry: Any) -> bool:
    kind = getattr(entry, "type", None)
    return getattr(kind, "name", str(kind)).upper().endswith("FILE")
