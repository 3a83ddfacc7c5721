"""The Modal executor: trials (and one-trial training jobs) on Modal serverless GPUs.

This is the only embedft module that imports ``modal`` (``pip install "embedft[modal]"``),
and nothing Modal is created at import: :class:`ModalExecutor` builds the App, Image, Volume
and functions from a :class:`~embedft.config.ModalConfig` when a search or a training run
asks for it::

    from embedft import OptunaSearch, SearchConfig

    cfg = SearchConfig.from_file("search.yaml")          # executor: modal, modal: {gpu: L4, max_containers: 8}
    OptunaSearch(cfg).run()                               # the study stays in the local journal

A remote trial gets only its config and Volume paths: the splits (uploaded once per data
fingerprint under ``data/``), local base or guide models (once, under ``models/``); hub models are
downloaded once into the Volume's hub cache by a CPU function before trials fan out. The GPU
function runs :func:`embedft.trial.run_trial` unchanged and writes its model to
``runs/<study>-<key>/trials/<number>``; intermediate dev scores go to a ``modal.Queue`` and the
driver's prune decisions come back in a ``modal.Dict``. A timeout or an exception that escapes
the function (even a ``SystemExit`` in the container) becomes a failed trial with its message;
``modal.Retries`` re-runs only those (docs/modal.md tells the whole story, ``embedft modal check``
tries it all on one container).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from embedft.config import ModalConfig
from embedft.errors import ConfigError, require
from embedft.executors.base import Executor, OnReport, RemoteTrialError
from embedft.files import check_output_dir, new_scratch, remove_owned, replace_dir
from embedft.trial import TrialConfig, TrialResult, run_trial

modal = require("modal", "modal")

__all__ = [
    "ModalExecutor",
    "RemoteTrialError",
    "Output",
    "Remote",
    "CHECK_MODEL",
    "pinned_requirements",
    "torch_requirement",
    "cuda_tags_for",
    "CUDA_TORCH",
    "gpu_words",
    "hub_ignore_patterns",
    "remote_trial",
    "remote_prefetch",
    "decision_key",
    "hub_ids",
    "has_token",
    "run_check",
]

logger = logging.getLogger(__name__)

Output = Literal["quiet", "build", "all"]
"""What of Modal's own output shows: nothing, the image build (and app start), or also every container's log."""

# The distributions a remote container needs besides torch, pinned to the versions installed here
# (the hub and tokenizer libraries too: a newer hub client on the image must not change the cache).
_RUNTIME_PACKAGES = (
    "sentence-transformers",
    "transformers",
    "accelerate",
    "datasets",
    "huggingface-hub",
    "hf-xet",
    "tokenizers",
    "safetensors",
    "numpy",
    "pydantic",
    "pyyaml",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "optuna",
    "tqdm",
    "matplotlib",
)
_TORCH_INDEX = "https://download.pytorch.org/whl/cu{tag}"
_TOKEN = "a Modal token (run `modal setup`, or set MODAL_TOKEN_ID/MODAL_TOKEN_SECRET)"
_REACH = "network access to Modal and a working Modal account (`modal token info` and `embedft modal check` show what fails)"
CHECK_MODEL = "sentence-transformers-testing/stsb-bert-tiny-safetensors"
"""The tiny hub model ``embedft modal check`` trains for two steps."""


def pinned_requirements(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """``name==version`` for each runtime package installed here except torch (see :func:`torch_requirement`), then ``extra``.

    A runtime package not installed here is listed unpinned (the image gets its newest release).
    """
    pins = []
    for name in _RUNTIME_PACKAGES:
        try:
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            logger.info("%s is not installed here: the image installs its newest release", name)
            pins.append(name)
    return pins + list(extra)


def gpu_words(gpu: str | list[str]) -> str:
    """A GPU setting in words: ``L4``, or ``L4 or A10G (Modal picks)`` for a fallback list."""
    if isinstance(gpu, str):
        return gpu
    return gpu[0] if len(gpu) == 1 else f"{', '.join(gpu[:-1])} or {gpu[-1]} (Modal picks)"


# The torch releases the PyTorch wheel index holds per CUDA tag (download.pytorch.org/whl/cuXXX):
# (first, end) minor releases, ``end`` excluded, ``None`` while the tag is still published for the
# newest release known here (2.9). Source: PyTorch's "previous versions" install page and release
# notes as read in 2025 (not verified against the index itself, which this machine cannot reach):
# cu118 2.0-2.7, cu121 2.1-2.5, cu124 2.4-2.6, cu126 2.6+, cu128 2.7+, cu129 2.8 only, cu130 2.9+.
# A release newer than this table is assumed to keep the open-ended tags; if it does not, the image
# build fails with uv's message naming the index.
CUDA_TORCH: dict[str, tuple[str, str | None]] = {
    "11.8": ("2.0", "2.8"),
    "12.1": ("2.1", "2.6"),
    "12.4": ("2.4", "2.7"),
    "12.6": ("2.6", None),
    "12.8": ("2.7", None),
    "12.9": ("2.8", "2.9"),
    "13.0": ("2.9", None),
}
"""For each CUDA tag (``modal.cuda``), the torch minor releases its PyTorch wheel index holds: ``(first, end)``, end excluded."""

# The newest CUDA a default image uses: Modal's GPU hosts run a CUDA 12 driver (570 series, CUDA
# 12.8, per Modal's GPU docs as read in 2025); a CUDA 13 wheel needs a 580 driver.
_DEFAULT_CUDA_MAX = (12, 8)


def cuda_tags_for(torch: str) -> list[str]:
    """The CUDA tags of :data:`CUDA_TORCH` whose wheel index holds torch release ``torch``, oldest first.

    >>> cuda_tags_for("2.5.1")
    ['11.8', '12.1', '12.4']
    """
    from packaging.version import Version

    minor = Version(torch).release[:2]

    def fits(first: str, end: str | None) -> bool:
        return Version(first).release[:2] <= minor and (end is None or minor < Version(end).release[:2])

    return [tag for tag, (first, end) in CUDA_TORCH.items() if fits(first, end)]


def torch_requirement(config: ModalConfig) -> tuple[str, str]:
    """``("torch==X.Y.Z", index URL)``: the torch release for the image from the PyTorch wheel index for its CUDA tag.

    ``config.torch`` wins; else the release installed here (its ``+cpu``/``+cuXXX`` tag dropped). A
    development or pre-release build has no wheel on that index: a :class:`ConfigError` naming
    ``modal.torch``. ``config.cuda`` must be a tag whose index holds that release (:data:`CUDA_TORCH`;
    else a :class:`ConfigError` naming ``modal.cuda`` and the tags that fit); unset, it is the newest
    fitting tag up to CUDA 12.8. Both are checked here, before anything is built or uploaded.

    >>> torch_requirement(ModalConfig(torch="2.5.1"))
    ('torch==2.5.1', 'https://download.pytorch.org/whl/cu124')
    >>> torch_requirement(ModalConfig(torch="2.7.1", cuda="12.8"))
    ('torch==2.7.1', 'https://download.pytorch.org/whl/cu128')
    """
    torch = config.torch or _installed_torch()
    tags = cuda_tags_for(torch)
    if config.cuda is None:
        defaults = [t for t in tags if tuple(int(x) for x in t.split(".")) <= _DEFAULT_CUDA_MAX]
        if not defaults:
            raise ConfigError(f"no CUDA tag known here has torch {torch} on its wheel index", field="modal.torch", expected=_known_pairs(), found=torch)
        cuda = defaults[-1]
    elif config.cuda in tags:
        cuda = config.cuda
    else:
        fit = f"one of {', '.join(tags)} for torch {torch}" if tags else _known_pairs()
        raise ConfigError(f"the PyTorch wheel index for CUDA {config.cuda} has no torch {torch}", field="modal.cuda", expected=fit, found=config.cuda)
    return f"torch=={torch}", _TORCH_INDEX.format(tag=cuda.replace(".", ""))


def _known_pairs() -> str:
    ranges = (f"cu{t.replace('.', '')}: {a}{f'-{b} (excluded)' if b else '+'}" for t, (a, b) in CUDA_TORCH.items())
    return "a torch release on a PyTorch CUDA index (" + "; ".join(ranges) + ")"


def _installed_torch() -> str:
    """The release of the torch installed here, without its local tag; a development build is a ConfigError."""
    from packaging.version import InvalidVersion, Version

    expected = "a released torch version for the image (modal.torch: 2.7.1), or a released torch installed here"
    try:
        installed = metadata.version("torch")
    except metadata.PackageNotFoundError:
        raise ConfigError("torch is not installed here, so the image's torch is unknown", field="modal.torch", expected=expected, found=None) from None
    try:
        version = Version(installed)
    except InvalidVersion:
        version = None
    local_ok = version is not None and (version.local is None or re.fullmatch(r"cpu|cu\d+|rocm[\d.]+", version.local))
    if version is None or version.is_prerelease or version.is_devrelease or not local_ok:
        raise ConfigError("the torch installed here is a development build with no wheel on the PyTorch index", field="modal.torch", expected=expected, found=installed)
    return version.base_version


def hub_ids(names: Iterable[str]) -> list[str]:
    """The names among ``names`` that are hub model ids (``org/name`` or ``name``), not local paths."""
    pattern = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
    return [n for n in dict.fromkeys(names) if pattern.match(n) and not Path(n).expanduser().exists()]


# Files of a hub model repo that loading it with sentence-transformers (PyTorch) never reads.
_NOT_LOADED = ("onnx/*", "openvino/*", "coreml/*", "*.onnx", "*.h5", "*.ot", "*.msgpack", "*.tflite", "*.mlmodel", "tf_model*", "flax_model*", "rust_model*")


def hub_ignore_patterns(files: Iterable[str]) -> list[str]:
    """``ignore_patterns`` for ``snapshot_download`` of a model repo with ``files``: what sentence-transformers never loads.

    Other frameworks' weights (ONNX, OpenVINO, TensorFlow, Flax, Rust) always; PyTorch ``*.bin``
    weights in a folder (the root or a module's, such as ``2_Dense``) that has ``*.safetensors``,
    which transformers loads instead.

    >>> patterns = hub_ignore_patterns(["model.safetensors", "pytorch_model.bin", "2_Dense/pytorch_model.bin"])
    >>> "pytorch_model*.bin" in patterns, "2_Dense/pytorch_model*.bin" in patterns
    (True, False)
    """
    folders = sorted({str(PurePosixPath(f).parent) for f in files if f.endswith(".safetensors")})
    return [*_NOT_LOADED, *("pytorch_model*.bin" if d == "." else f"{d}/pytorch_model*.bin" for d in folders)]


def decision_key(number: int, step: int, attempt: str) -> str:
    """The ``modal.Dict`` key under which the driver answers a report of trial ``number`` at ``step``.

    ``attempt`` is drawn per call, so a retried trial never reads an answer meant for its lost attempt.
    """
    return f"{number}:{step}:{attempt}"


def _sync(volume: Any, action: Literal["reload", "commit"], what: str) -> bool:
    """``volume.reload()`` or ``volume.commit()``; a failure is logged, never the end of the input.

    Modal's ``reload`` raises while a file on the Volume is open in this container, and both talk
    to Modal's servers; Modal also commits a container's writes in the background and at its exit.
    """
    try:
        getattr(volume, action)()
        return True
    except Exception as exc:  # noqa: BLE001 - the trial itself decides its outcome, not the Volume sync
        logger.warning("volume %s failed (%s): %s: %s", action, what, type(exc).__name__, exc)
        return False


def remote_trial(payload: str, reports: Any, decisions: Any, volume: Any, decision_timeout: float = 600.0, poll: float = 0.5) -> str:
    """The body of the GPU function: one trial, its reports over ``reports`` and answers from ``decisions``.

    ``reports`` needs ``put``, ``decisions`` needs ``get`` (a ``modal.Queue`` and ``modal.Dict``
    remotely), ``volume`` needs ``reload`` and ``commit`` (both may fail: logged, the trial goes
    on). Returns the :class:`TrialResult` as JSON, with the GPU and CUDA version it ran on.
    """
    config = TrialConfig.model_validate_json(payload)
    attempt = uuid.uuid4().hex[:12]
    _sync(volume, "reload", f"trial {config.number}")  # see splits and models uploaded after this container started

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
        _sync(volume, "commit", f"trial {config.number}")  # the trial's model and metrics become visible to the driver
    return result.model_dump_json()


def remote_prefetch(names: list[str], volume: Any) -> list[str]:
    """The body of the CPU function that downloads hub models into the Volume's hub cache once, before trials fan out.

    Returns the names downloaded; a model that cannot be downloaded raises (the search stops with its reason).
    """
    from huggingface_hub import list_repo_files, snapshot_download

    _sync(volume, "reload", "prefetch")
    for name in names:
        snapshot_download(name, ignore_patterns=hub_ignore_patterns(list_repo_files(name)))  # into HF_HUB_CACHE, on the Volume
    _sync(volume, "commit", "prefetch")
    return list(names)


@dataclass
class Remote:
    """The live side of a started app (the network boundary): spawn a trial, download models, the channels."""

    spawn: Callable[..., Any]
    prefetch: Callable[..., Any]
    reports: Any
    decisions: Any


class ModalExecutor(Executor):
    """Runs trials on a Modal GPU function; its App, Image, Volume and functions are built offline.

    Nothing touches the network until :meth:`start` (or :meth:`pull`) is used.
    ``function_options`` holds exactly what the GPU function was declared with, ``container_env``
    the environment of its image. Trial folders live on the Volume under ``trials_dir``
    (``runs/<study_name>-<key>/trials`` for a search); ``volume`` replaces only the handle used
    for I/O from here (tests pass a local stand-in). ``output`` is what of Modal's own output shows
    (the library default shows nothing; the CLI shows the image build, and with ``-v`` the
    containers' logs). ``gpu_seconds`` is the in-trial seconds of this executor's trials: no
    container start, image pull or idle time, so not the bill (Modal's usage page has that).
    """

    trials_dir: Path  # always set: a folder on the Volume
    remote = True
    gpu_seconds: float = 0.0

    def __init__(self, config: ModalConfig | dict[str, Any] | None = None, *, trials_dir: str = "runs/embedft/trials", volume: Any = None, output: Output = "quiet") -> None:
        super().__init__(trials_dir)
        self.config = cfg = config if isinstance(config, ModalConfig) else ModalConfig(**(config or {}))
        self.output = output
        # Only the hub cache lives on the Volume: the rest of HF_HOME (the xet client's log files,
        # kept open for the life of the process) would make every later Volume.reload() fail.
        self.container_env = {"HF_HUB_CACHE": f"{cfg.mount}/hf/hub", "TOKENIZERS_PARALLELISM": "false"}
        # Trials read hub models only from the cache the prefetch filled: no hub request, no write
        # into the shared cache from eight containers at once (the prefetch function stays online).
        self.trial_env = {"HF_HUB_OFFLINE": "1"}
        self.app = modal.App(cfg.app_name)
        self.modal_volume = modal.Volume.from_name(cfg.volume, create_if_missing=True)  # the Volume the functions mount
        self.volume = volume if volume is not None else self.modal_volume
        self.max_parallel = cfg.max_containers
        self.build_seconds: float | None = None  # how long the image took to build (or be found in Modal's cache) and the app to start
        self.devices: dict[int, tuple[str | None, str | None]] = {}  # trial number -> (GPU name, CUDA version) it ran on
        self._calls: dict[int, tuple[Any, float]] = {}
        self._stack: contextlib.ExitStack | None = None
        self._getter: ThreadPoolExecutor | None = None
        self._remote: Remote | None = None
        self._prefetched: set[str] = set()

    # The image and the functions are declared on first use (a plan, a start), not here: `embedft
    # pull` needs neither, and must work whatever torch is installed here.
    @functools.cached_property
    def _torch_pin(self) -> tuple[str, str]:
        return torch_requirement(self.config)

    @property
    def torch(self) -> str:
        """The image's torch requirement (``torch==X.Y.Z``); see :func:`torch_requirement`."""
        return self._torch_pin[0]

    @property
    def torch_index(self) -> str:
        """The PyTorch wheel index the image's torch comes from."""
        return self._torch_pin[1]

    @property
    def requirements(self) -> list[str]:
        """Everything the image installs, torch first (from its own index)."""
        return [self.torch, *pinned_requirements(self.config.pip)]

    @functools.cached_property
    def image(self) -> Any:
        """The container image: debian_slim, torch from its CUDA index, the rest pinned to here, embedft from this checkout."""
        python = self.config.python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
        image = modal.Image.debian_slim(python_version=python).uv_pip_install(self.torch, index_url=self.torch_index)
        return image.uv_pip_install(*self.requirements[1:]).env(self.container_env).add_local_python_source("embedft")

    @functools.cached_property
    def _shared_options(self) -> dict[str, Any]:
        cfg = self.config
        return {"image": self.image, "volumes": {cfg.mount: self.modal_volume}, "secrets": [modal.Secret.from_name(n) for n in cfg.secrets], "serialized": True}

    @functools.cached_property
    def function_options(self) -> dict[str, Any]:
        """Exactly what the GPU function is declared with."""
        cfg = self.config
        return {
            **self._shared_options,
            "env": self.trial_env,
            "gpu": cfg.gpu,
            "timeout": cfg.timeout,
            "retries": modal.Retries(max_retries=cfg.retries, initial_delay=5.0, backoff_coefficient=2.0) if cfg.retries else None,
            "max_containers": cfg.max_containers,
            "scaledown_window": cfg.scaledown_window,
            "name": "embedft_trial",
        }

    @functools.cached_property
    def trial_function(self) -> Any:
        """The GPU function: :func:`remote_trial`."""
        return self.app.function(**self.function_options)(remote_trial)

    @functools.cached_property
    def prefetch_function(self) -> Any:
        """The CPU function that fills the hub cache: :func:`remote_prefetch` (online)."""
        return self.app.function(**self._shared_options, timeout=self.config.timeout, name="embedft_prefetch")(remote_prefetch)

    def plan(self) -> list[str]:
        """What starting this executor does, in words (``embedft modal check`` prints it; needs no token)."""
        cfg = self.config
        return [
            f"image: debian_slim, Python {cfg.python_version or f'{sys.version_info.major}.{sys.version_info.minor}'}; {self.torch} from {self.torch_index}",
            f"       {len(self.requirements) - 1} more packages at the versions installed here ({', '.join(self.requirements[1:4])}, ...); embedft from this checkout",
            f"volume: {cfg.volume} mounted at {cfg.mount} (hub cache {self.container_env['HF_HUB_CACHE']}, splits data/, local models models/, trials runs/)",
            f"function: embedft_trial on GPU {gpu_words(cfg.gpu)}, timeout {cfg.timeout}s, up to {cfg.max_containers} containers, retries {cfg.retries}, idle containers kept {cfg.scaledown_window}s",
            "          hub models downloaded once by embedft_prefetch (CPU); trials read them offline (HF_HUB_OFFLINE=1)",
        ]

    # ------------------------------------------------------------------ volume paths
    def remote_path(self, *parts: str) -> str:
        """A path inside the container (under the mount)."""
        return "/".join([self.config.mount.rstrip("/"), *parts])

    def trial_dir(self, name: str) -> str:
        """The trial folder ``name`` inside the container."""
        return self.remote_path(self.trials_dir.as_posix(), name)

    def volume_dir(self) -> str:
        """The Volume folder of this executor's trials (``/runs/<study>-<key>/trials``): ``embedft pull`` takes its subfolders."""
        return self._rel(self.trials_dir.as_posix())

    def _rel(self, remote: str) -> str:
        """A Volume path: a container path (under the mount) or one already relative to the Volume."""
        rel = remote[len(self.config.mount) :] if remote.startswith(self.config.mount + "/") else remote
        return "/" + rel.strip("/")

    def _error(self, what: str, exc: BaseException, *, field: str, found: str) -> RemoteTrialError:
        """A failed remote step: the token is blamed only when Modal says authentication failed."""
        if isinstance(exc, modal.exception.AuthError):
            return RemoteTrialError(f"{what}: Modal refused the credentials: {exc}", field=field, expected=_TOKEN, found=found)
        return RemoteTrialError(f"{what}: {type(exc).__name__}: {exc}", field=field, expected=_REACH, found=found)

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
            raise self._error("cannot upload to the Modal volume", exc, field="modal.volume", found=f"{self.config.volume}:{rel}") from exc

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
                raise self._error("cannot read the Modal volume", exc, field="executor", found=self.config.volume) from None
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
        """Pull trial folder ``name`` from the Volume to ``local`` (see :meth:`pull`).

        What happens to the model next (the search's test evaluation) runs on this machine: the
        study, the test split and the report live here.
        """
        logger.info("pulling %s from volume %s; its test evaluation runs on this machine", name, self.config.volume)
        return self.pull(self.trial_dir(name), local, kind="run")

    # ------------------------------------------------------------------ running
    def start(self, data_dir: str | Path, models: Iterable[str] = ()) -> None:
        """Upload the splits (named by their folder, the data fingerprint) and local models once, start the app,
        then download hub models into the Volume's hub cache once, before any trial runs."""
        self.requirements  # noqa: B018 - the torch/CUDA pair is checked before anything is uploaded
        self.data_dir, self.gpu_seconds = self.upload_data(data_dir, Path(data_dir).name), 0.0
        models = sorted(set(models))
        self._upload_local(models)
        logger.info("trial folders on volume %s: %s", self.config.volume, self.volume_dir())
        self.connect()
        self.prefetch(models)

    def _upload_local(self, models: Iterable[str]) -> None:
        # Containers cannot see local folders: local models go to the volume once.
        for m in models:
            if m not in self.models and Path(m).expanduser().is_dir():
                self.models[m] = self.upload_model(m)

    def prefetch(self, models: Iterable[str]) -> None:
        """Download the hub models among ``models`` into the Volume's hub cache (once each, one CPU container)."""
        names = [n for n in hub_ids(models) if n not in self._prefetched]
        if not names or self._remote is None:
            return
        logger.info("downloading %s into the volume's hub cache", ", ".join(names))
        try:
            self._remote.prefetch(names, self.volume)
        except Exception as exc:
            raise self._error(f"cannot download {', '.join(names)} on Modal", exc, field="model.base_model", found=", ".join(names)) from exc
        self._prefetched.update(names)

    def trial(self, number: int, params: dict[str, Any], run: Any, *, name: str | None = None, **flags: bool) -> TrialConfig:
        """As :meth:`Executor.trial`; a local or hub model the trial names (a sampled base model, a guide model) reaches the Volume first."""
        names = [run.model.base_model, *([run.training.guide_model] if run.training.guide_model else [])]
        self._upload_local(names)
        self.prefetch(names)
        return super().trial(number, params, run, name=name, **flags)

    def _run_app(self, *, stream: bool) -> contextlib.AbstractContextManager[Any]:
        """The app run, the network boundary: entering it builds the image (or finds it in Modal's cache) and creates the functions.

        ``stream`` False keeps the app's own status and container logs off while objects (the
        image build) still print their progress to an enabled output.
        """
        from modal.runner import run_app

        return run_app(self.app, stream_output=stream)

    def _start_app(self, stack: contextlib.ExitStack) -> None:
        """Start the app on ``stack``, Modal's output shown as ``output`` says (the image build within this one app run)."""
        if self.output == "all":
            stack.enter_context(modal.enable_output())  # for as long as the app runs: the containers' logs too
        with modal.enable_output() if self.output == "build" else contextlib.nullcontext():
            stack.enter_context(self._run_app(stream=self.output != "build"))

    def _connect(self, stack: contextlib.ExitStack) -> Remote:
        """Start the app and the ephemeral channels: the network boundary."""
        trial, prefetch = self.trial_function, self.prefetch_function  # declared before the app starts
        self._start_app(stack)
        reports = stack.enter_context(modal.Queue.ephemeral())
        decisions = stack.enter_context(modal.Dict.ephemeral())
        return Remote(trial.spawn, prefetch.remote, reports, decisions)

    def connect(self) -> None:
        """Build the image and start the app (one app run) and the report/decision channels; :meth:`close` stops them.

        With ``output`` ``build`` Modal's output shows while the image builds, with ``all`` for as
        long as the app runs (the containers' logs too). ``build_seconds`` is how long the image
        build (or cache lookup) and the app start took. The image's torch/CUDA pair is checked first.
        """
        self.requirements  # noqa: B018 - a torch release with no wheel for the CUDA tag is a ConfigError before anything starts
        stack = contextlib.ExitStack()
        try:
            t0 = time.monotonic()
            self._remote = self._connect(stack)
            self.build_seconds = time.monotonic() - t0
        except Exception as exc:
            stack.close()
            raise self._error("cannot start the Modal app", exc, field="executor", found=self.config.app_name) from exc
        self._stack = stack
        self._getter = ThreadPoolExecutor(1, thread_name_prefix="embedft-modal-get")

    def submit(self, config: TrialConfig) -> None:
        """Spawn the GPU function for a trial (Modal queues it when ``max_containers`` are busy)."""
        if self._remote is None:
            raise RemoteTrialError("the Modal app is not running", field="executor", expected="executor.start(data_dir) before submit()", found=self.config.app_name)
        call = self._remote.spawn(config.model_dump_json(), self._remote.reports, self._remote.decisions, self.volume)
        self._calls[config.number] = (call, time.monotonic())

    def wait(self, on_report: OnReport, timeout: float = 1.0) -> list[TrialResult]:
        """Relay reports from the Queue to ``on_report`` and its answers to the Dict for up to ``timeout``
        seconds; return the trials that ended (a timeout or a failed call is a failed result).

        A call's result is read on a helper thread: whatever it raises, a ``BaseException`` such
        as a remote ``SystemExit`` included, is the trial's outcome, while a Ctrl-C here (it
        reaches only the main thread) still stops the search."""
        if self._getter is None or self._remote is None:
            raise RemoteTrialError("the Modal app is not running", field="executor", expected="executor.start(data_dir) before wait()", found=self.config.app_name)
        results: list[TrialResult] = []
        deadline = time.monotonic() + timeout
        while True:
            for number, step, value, attempt in self._remote.reports.get_many(1000, block=False):
                if number in self._calls:
                    self._remote.decisions.put(decision_key(number, step, attempt), bool(on_report(number, step, value)))
            for number, (call, started) in list(self._calls.items()):
                future = self._getter.submit(call.get, timeout=0)
                exc = future.exception()  # a Ctrl-C while this waits is the user's: it propagates
                if isinstance(exc, TimeoutError):  # the builtin one: still running (Modal's FunctionTimeoutError is not a builtin TimeoutError)
                    continue
                if exc is None:
                    output = future.result()
                else:  # timeout, exception after retries, lost container, a SystemExit in the container, a cancelled input
                    what = "cancelled" if isinstance(exc, modal.exception.InputCancellation) else "failed"
                    since = f"{time.monotonic() - started:.0f}s after it was spawned: queue, container start and run, not in-trial time"
                    error = f"remote trial {what}: {type(exc).__name__}: {exc} ({since})"
                    output = TrialResult(number=number, state="fail", error=error).model_dump_json()  # no in-trial seconds: none were reported
                del self._calls[number]
                result = TrialResult.model_validate_json(output)
                self.gpu_seconds += result.seconds  # only what trials report: a failed call's queue and start time is not in-trial time
                if result.gpu is not None or exc is None:
                    self.devices[number] = (result.gpu, result.cuda)
                    logger.info("trial %d ran %.0fs on %s (CUDA %s)", number, result.seconds, result.gpu or "no GPU", result.cuda or "-")
                results.append(result)
            if results or time.monotonic() >= deadline:
                return results
            time.sleep(max(0.0, min(self.config.poll_seconds, deadline - time.monotonic())))

    def close(self) -> None:
        """Cancel trials still running (Ctrl-C, budget) so no GPU keeps billing, then stop the app and channels.

        Modal raises ``InputCancellation`` inside a cancelled input; its scratch folders go with it.
        """
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
        self._remote = None


def has_token() -> bool:
    """Whether a Modal token is configured here (``modal setup`` or ``MODAL_TOKEN_ID``); reads the local config only."""
    from modal.config import config

    return bool(config.get("token_id"))


def run_check(executor: ModalExecutor, work_dir: str | Path, model: str = CHECK_MODEL) -> dict[str, Any]:
    """``embedft modal check``: build the image, start one GPU container, train ``model`` for 2 steps on the packaged demo pairs.

    A hub ``model`` is first downloaded into the Volume's hub cache by one CPU container, as in a search.

    Returns what happened: ``build_seconds``, ``ran`` (whether the trial ran at all: a call that
    failed before or outside it reports no ``gpu``), ``gpu``, ``cuda``, ``torch``, ``bf16``, ``state``
    and ``error`` of the trial, ``seconds_per_step``, ``trial_seconds`` and the Volume's top-level
    ``volume`` entries. The check's trial folder is removed from the Volume afterwards.
    """
    from importlib import resources

    from embedft.config import RunConfig
    from embedft.training import Trainer

    demo = resources.files("embedft") / "resources" / "demo_duplicate_questions.tsv"
    run = RunConfig.from_dict(
        {
            "data": {"source": str(demo), "cache": False, "max_train_pairs": 32},
            "model": {"base_model": model},
            "training": {"max_steps": 2, "batch_size": 8, "eval_steps": 2, "progress": False},
            "output_dir": str(Path(work_dir) / "check"),
        }
    )
    built = Trainer(run).build_data()
    name = f"check-{uuid.uuid4().hex[:8]}"
    try:
        executor.start(built.save(Path(work_dir) / built.report.fingerprint), [model])
        executor.submit(executor.trial(0, {}, run, name=name))
        result = _first_result(executor)
    finally:
        executor.close()
    with contextlib.suppress(Exception):
        executor.volume.remove_file(executor._rel(executor.trial_dir(name)), recursive=True)
    try:
        contents = sorted(PurePosixPath(e.path).name for e in executor.volume.listdir("/"))
    except Exception as exc:  # noqa: BLE001 - the listing is information, not the check
        contents = [f"(cannot list: {type(exc).__name__}: {exc})"]
    return {
        "build_seconds": executor.build_seconds,
        "ran": result.number in executor.devices,
        "gpu": result.gpu,
        "cuda": result.cuda,
        "torch": result.torch,
        "bf16": result.bf16,
        "state": result.state,
        "error": result.error,
        "seconds_per_step": result.train_seconds / result.train_steps if result.train_steps else None,
        "trial_seconds": result.seconds,
        "volume": contents,
    }


def _first_result(executor: ModalExecutor) -> TrialResult:
    """Wait for the one trial submitted (its reports need no answer)."""
    while True:
        done = executor.wait(lambda *_: False, timeout=30.0)
        if done:
            return done[0]


def _is_file(entry: Any) -> bool:
    kind = getattr(entry, "type", None)
    return getattr(kind, "name", str(kind)).upper().endswith("FILE")
