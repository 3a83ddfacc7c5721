"""The Modal backend: search trials and single training runs on serverless GPUs.

This is the only embedft module that imports ``modal`` (``pip install "embedft[modal]"``),
and nothing Modal is created at import: :class:`ModalBackend` builds the App, Image,
Volume and GPU function from a :class:`~embedft.config.ModalConfig` when a search or a
training run asks for it::

    from embedft import OptunaSearch, SearchConfig

    cfg = SearchConfig.from_file("search.yaml")          # backend: modal, modal: {gpu: L4, max_containers: 8}
    OptunaSearch(cfg).run()                               # the study stays in the local journal

How a remote trial runs:

* the splits are built locally once and uploaded to the Volume under ``data/<fingerprint>``
  (skipped when already there); a trial receives only its config and that path;
* the GPU function runs :func:`embedft.trial.run_trial` unchanged and writes its model to
  ``runs/<study>/trials/<number>`` on the Volume; the hub cache (``HF_HOME``) lives on the
  Volume too, so weights are downloaded once for all containers;
* intermediate dev scores go to a ``modal.Queue``; the local driver reports them to the
  study, asks the pruner and writes the decision to a ``modal.Dict`` that the trial reads;
* preemptions and infrastructure errors are retried (``modal.Retries``); a timeout or an
  exception becomes a failed trial with its message.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedft.config import ModalConfig, RunConfig
from embedft.errors import EmbedftError, require
from embedft.files import check_output_dir, new_scratch, remove_owned, replace_dir
from embedft.trial import TrialConfig, TrialResult, run_trial

if TYPE_CHECKING:  # pragma: no cover
    from embedft.executors import OnReport

modal = require("modal", "modal")

__all__ = ["ModalBackend", "ModalExecutor", "RemoteTrialError", "pinned_requirements", "remote_trial", "decision_key"]

logger = logging.getLogger(__name__)

# The distributions a remote container needs, pinned to the versions installed here.
_RUNTIME_PACKAGES = (
    "torch",
    "sentence-transformers",
    "transformers",
    "accelerate",
    "datasets",
    "pydantic",
    "pyyaml",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "optuna",
    "tqdm",
    "matplotlib",
)


class RemoteTrialError(EmbedftError):
    """A remote call failed in a way that is not a trial result (e.g. the results could not be fetched)."""


def pinned_requirements(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """``name==version`` for each runtime package installed here (local build tags such as ``+cpu`` dropped).

    Dropping ``+cpu`` lets the GPU image take the CUDA build of the same torch release.
    """
    pins = []
    for name in _RUNTIME_PACKAGES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        pins.append(f"{name}=={version.split('+')[0]}")
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


class ModalExecutor:
    """Runs trials on the Modal GPU function: spawn, relay reports and decisions, collect results.

    ``spawn(payload, reports, decisions, volume)`` returns a call handle with ``get(timeout=0)``
    (raising ``TimeoutError`` while the trial runs) and ``cancel()``; it is the GPU function's
    ``spawn`` for real runs.
    """

    def __init__(self, spawn, reports, decisions, volume, max_parallel: int, poll_seconds: float = 1.0, on_close=None) -> None:
        self.max_parallel = max_parallel
        self._spawn = spawn
        self._reports = reports
        self._decisions = decisions
        self._volume = volume
        self._poll = poll_seconds
        self._on_close = on_close
        self._calls: dict[int, tuple[Any, float]] = {}
        self.gpu_seconds = 0.0

    def submit(self, config: TrialConfig) -> None:
        """Spawn the GPU function for a trial (Modal queues it when ``max_containers`` are busy)."""
        call = self._spawn(config.model_dump_json(), self._reports, self._decisions, self._volume)
        self._calls[config.number] = (call, time.monotonic())

    def wait(self, on_report: OnReport, timeout: float = 1.0) -> list[TrialResult]:
        """Relay reports from the Queue to ``on_report`` and its answers to the Dict for up to ``timeout``
        seconds; return the trials that ended (a timeout or a failed call is a failed result)."""
        results: list[TrialResult] = []
        deadline = time.monotonic() + timeout
        while True:
            for number, step, value, attempt in self._reports.get_many(1000, block=False):
                if number in self._calls:
                    self._decisions.put(decision_key(number, step, attempt), bool(on_report(number, step, value)))
            for number, (call, started) in list(self._calls.items()):
                try:
                    output = call.get(timeout=0)
                except TimeoutError:  # still running
                    continue
                except Exception as exc:  # timeout, exception after retries, lost container
                    output = TrialResult(
                        number=number, state="fail", error=f"remote trial failed: {type(exc).__name__}: {exc}", seconds=time.monotonic() - started
                    ).model_dump_json()
                del self._calls[number]
                result = TrialResult.model_validate_json(output)
                self.gpu_seconds += result.seconds or (time.monotonic() - started)
                results.append(result)
            if results or time.monotonic() >= deadline:
                return results
            time.sleep(max(0.0, min(self._poll, deadline - time.monotonic())))

    def close(self) -> None:
        """Cancel trials still running (Ctrl-C, budget) so no GPU keeps billing, then release the channels."""
        for call, _ in self._calls.values():
            with contextlib.suppress(Exception):
                call.cancel()
        self._calls.clear()
        if self._on_close is not None:
            self._on_close()


class ModalBackend:
    """The Modal App, Image, Volume and GPU function for one :class:`ModalConfig`, built offline.

    Nothing touches the network until :meth:`executor` (or :meth:`upload_data` /
    :meth:`pull`) is used. ``function_options`` holds exactly what the GPU function was
    declared with.
    """

    def __init__(self, config: ModalConfig | dict[str, Any] | None = None, *, volume: Any = None) -> None:
        self.config = config if isinstance(config, ModalConfig) else ModalConfig(**(config or {}))
        cfg = self.config
        python = cfg.python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
        self.requirements = pinned_requirements(cfg.pip)
        self.app = modal.App(cfg.app_name)
        self.image = (
            modal.Image.debian_slim(python_version=python)
            .uv_pip_install(*self.requirements)
            .env({"HF_HOME": f"{cfg.mount}/hf", "TOKENIZERS_PARALLELISM": "false"})
            .add_local_python_source("embedft")
        )
        # The Volume the function mounts; ``volume`` replaces only the handle used for I/O from here.
        self.modal_volume = modal.Volume.from_name(cfg.volume, create_if_missing=True)
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

    # ------------------------------------------------------------------ volume paths
    def remote_path(self, *parts: str) -> str:
        """A path inside the container (under the mount)."""
        return "/".join([self.config.mount.rstrip("/"), *parts])

    def _upload_once(self, local_dir: str | Path, rel: str, marker: str) -> None:
        try:
            present = {Path(e.path).name for e in self.volume.listdir(rel)}
        except Exception:  # NotFoundError: not uploaded yet
            present = set()
        if marker not in present:
            logger.info("uploading %s to volume %s:%s", local_dir, self.config.volume, rel)
            try:
                with self.volume.batch_upload(force=True) as batch:
                    batch.put_directory(str(local_dir), rel)
            except Exception as exc:
                raise RemoteTrialError(
                    f"cannot upload to the Modal volume: {type(exc).__name__}: {exc}",
                    field="modal.volume",
                    expected="a Modal token (run `modal setup`) and network access to Modal",
                    found=f"{self.config.volume}:{rel}",
                ) from exc

    def upload_data(self, local_dir: str | Path, fingerprint: str) -> str:
        """Upload built splits once per fingerprint; returns their path inside the container."""
        self._upload_once(local_dir, f"/data/{fingerprint}", "report.json")
        return self.remote_path("data", fingerprint)

    def upload_model(self, local_dir: str | Path) -> str:
        """Upload a local model folder once (keyed by its files' names, sizes and times); returns its container path."""
        import hashlib

        from embedft.modeling import local_model_digest

        local_dir = Path(local_dir).resolve()
        digest = hashlib.sha256(f"{local_dir}:{local_model_digest(str(local_dir))}".encode())
        key = f"{local_dir.name}-{digest.hexdigest()[:12]}"
        self._upload_once(local_dir, f"/models/{key}", "modules.json" if (local_dir / "modules.json").is_file() else "config.json")
        return self.remote_path("models", key)

    def pull(self, remote: str, local: str | Path, *, kind: str = "model") -> Path:
        """Copy a folder from the Volume (a path inside the container or relative to it) to ``local``, atomically.

        ``local`` must be new, empty or an embedft ``kind`` folder (it is then replaced once the new
        copy is complete); a folder embedft did not write is refused before anything is fetched.
        """
        rel = remote[len(self.config.mount):] if remote.startswith(self.config.mount + "/") else remote
        rel = "/" + rel.strip("/")
        local = Path(local).expanduser()
        check_output_dir(local, kind=kind, field="local", overwrite=True)
        tmp = new_scratch(local)
        try:
            try:
                files = [e for e in self.volume.listdir(rel, recursive=True) if _is_file(e)]
            except (FileNotFoundError, modal.exception.NotFoundError):
                files = []
            except modal.exception.AuthError as exc:
                raise RemoteTrialError(
                    f"Modal refused the credentials: {exc}", field="backend", expected="a Modal token (run `modal token new` or set MODAL_TOKEN_ID/MODAL_TOKEN_SECRET)", found=self.config.volume
                ) from None
            if not files:
                raise RemoteTrialError("nothing to pull", field="remote", expected="a folder on the volume with files", found=f"{self.config.volume}:{rel}")
            for entry in files:
                path = "/" + entry.path.strip("/")
                target = tmp / Path(path).relative_to(rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as fh:
                    for chunk in self.volume.read_file(path):
                        fh.write(chunk)
            replace_dir(tmp, local, kind=kind, overwrite=True)  # an existing copy goes only once the new one is complete
        finally:
            remove_owned(tmp)
        return local

    def remove(self, remote: str) -> None:
        """Delete a folder from the Volume (a losing trial's model)."""
        rel = remote[len(self.config.mount):] if remote.startswith(self.config.mount + "/") else remote
        with contextlib.suppress(Exception):
            self.volume.remove_file(rel, recursive=True)

    # ------------------------------------------------------------------ running
    def _connect(self, stack: contextlib.ExitStack):
        """Start the app and the ephemeral channels: the network boundary. Returns (spawn, reports, decisions)."""
        stack.enter_context(self.app.run())
        reports = stack.enter_context(modal.Queue.ephemeral())
        decisions = stack.enter_context(modal.Dict.ephemeral())
        return self.trial_function.spawn, reports, decisions

    def executor(self) -> ModalExecutor:
        """An executor bound to a running app; closing it cancels its trials and stops the app."""
        stack = contextlib.ExitStack()
        try:
            spawn, reports, decisions = self._connect(stack)
        except Exception as exc:
            stack.close()
            raise RemoteTrialError(
                f"cannot start the Modal app: {type(exc).__name__}: {exc}",
                field="backend",
                expected="a Modal token (run `modal setup`) and network access to Modal",
                found=self.config.app_name,
            ) from exc
        return ModalExecutor(spawn, reports, decisions, self.volume, self.config.max_containers, self.config.poll_seconds, on_close=stack.close)

    def train(self, run: RunConfig, local_output: str | Path | None = None) -> TrialResult:
        """One training run (base model, train, test) on a GPU; the model is pulled to ``local_output``."""
        from embedft.training import Trainer

        trainer = Trainer(run)
        built = trainer.build_data()
        with _scratch() as tmp:
            built.save(tmp / "data")
            data_dir = self.upload_data(tmp / "data", built.report.fingerprint)
        name = f"{Path(run.output_dir).name}-{uuid.uuid4().hex[:8]}"
        remote_out = self.remote_path("runs", "train", name)
        remote_run = run.model_copy(update={"output_dir": remote_out, "overwrite": True})
        if Path(run.model.base_model).expanduser().is_dir():  # a local model: the container needs a copy
            remote_run.model = run.model.model_copy(update={"base_model": self.upload_model(Path(run.model.base_model).expanduser())})
        config = TrialConfig(number=0, params={}, run=remote_run, data_dir=data_dir, baseline=True, evaluate_test=True)
        executor = self.executor()
        try:
            executor.submit(config)
            results: list[TrialResult] = []
            while not results:
                results = executor.wait(lambda *_: False, timeout=30.0)
        finally:
            executor.close()
        result = results[0]
        if result.state != "complete":
            raise RemoteTrialError("the remote training run failed", field="backend", expected="a completed run", found=result.error)
        if local_output is not None:
            self.pull(remote_out, local_output, kind="run")
            run.save(Path(local_output) / "config.yaml")  # the config as the user wrote it, not the remote paths
        logger.info("remote training: %.0f GPU-seconds on %s", executor.gpu_seconds, self.config.gpu)
        return result


def _is_file(entry: Any) -> bool:
    kind = getattr(entry, "type", None)
    return getattr(kind, "name", str(kind)).upper().endswith("FILE")


@contextlib.contextmanager
def _scratch():
    import tempfile

    with tempfile.TemporaryDirectory(prefix="embedft-") as tmp:
        yield Path(tmp)
