"""The executor interface: what the search driver (and a one-trial job) asks of every executor.

An executor owns where its trials live. :meth:`Executor.start` makes the built splits and any
local base model reachable by its trials (local executors read them in place, the Modal one
uploads them), :meth:`Executor.trial` turns a resolved run config into the
:class:`~embedft.trial.TrialConfig` its trials run, :meth:`~Executor.submit` and
:meth:`~Executor.wait` run them, relaying intermediate dev scores to the driver's
``on_report(number, step, value) -> prune?``, :meth:`~Executor.remove_trials` deletes the folders
of the trials the driver names (its study's losers: never a folder another search wrote), and
:meth:`~Executor.fetch` copies one trial's folder (its model) next to the study. Any object with
these methods and ``max_parallel``/``gpu_seconds`` is an executor (:func:`is_executor`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from embedft.config import RunConfig
from embedft.errors import ConfigError, EmbedftError
from embedft.files import new_scratch, remove_owned, replace_dir
from embedft.trial import TrialConfig, TrialResult

__all__ = ["Executor", "OnReport", "RemoteTrialError", "is_executor"]

OnReport = Callable[[int, int, float], bool]
"""``on_report(trial number, step, dev value) -> prune?``: the driver's side of the pruning channel."""


class RemoteTrialError(EmbedftError):
    """A remote call failed in a way that is not a trial result (an upload, the app's start, a fetch)."""


def is_executor(obj: object) -> bool:
    """Whether ``obj`` has the executor interface: an :class:`Executor`, or any object with its methods and attributes."""
    return all(hasattr(obj, name) for name in ("max_parallel", "gpu_seconds")) and all(
        callable(getattr(obj, name, None)) for name in ("start", "trial", "submit", "wait", "remove_trials", "fetch", "close")
    )


class Executor:
    """Runs trials and owns their folders; this base class keeps them under a local ``trials_dir``.

    Subclasses implement :meth:`submit` and :meth:`wait` (and :meth:`start`/:meth:`close` when
    they hold workers or a connection). ``max_parallel`` is how many trials run at once;
    ``gpu_seconds`` is the seconds trials ran (in-trial time: no container start, image pull or
    idle time, so not a bill), where the executor knows it. ``trials_dir``
    None: the search sets it to ``OUTPUT_DIR/trials`` (a one-trial job, to a temporary folder).
    """

    max_parallel: int = 1
    gpu_seconds: float | None = None
    remote: bool = False
    """True when trial folders live on another machine: the study remembers where, so a resumed search finds them."""

    def __init__(self, trials_dir: str | Path | None = None) -> None:
        self.trials_dir = Path(trials_dir).expanduser() if trials_dir is not None else None
        self.data_dir: str | None = None
        self.models: dict[str, str] = {}  # a base or guide model as the config names it -> where trials load it

    def start(self, data_dir: str | Path, models: Iterable[str] = ()) -> None:
        """Make the saved splits in ``data_dir`` (and the local base ``models``) reachable by trials."""
        self.data_dir = str(data_dir)

    def trial_dir(self, name: str) -> str:
        """Where the trial folder ``name`` lives, as its trial sees it."""
        if self.trials_dir is None:
            raise ConfigError("the executor has no trials_dir", field="executor", expected="a trials_dir (a search sets OUTPUT_DIR/trials)", found="trials_dir=None")
        return str(self.trials_dir / name)

    def trial(self, number: int, params: dict[str, Any], run: RunConfig, *, name: str | None = None, **flags: Any) -> TrialConfig:
        """The trial config for ``run``: its own folder (``name``, default ``NNNN``), no progress bar, the splits started.

        ``flags`` are :class:`TrialConfig` switches (``baseline``, ``evaluate_test``).
        """
        if self.data_dir is None or self.trials_dir is None:
            found = "not started" if self.data_dir is None else "trials_dir=None"
            raise ConfigError("the executor has not been started", field="executor", expected="a trials_dir and executor.start(data_dir) before executor.trial(...)", found=found)
        model = run.model.model_copy(update={"base_model": self.models.get(run.model.base_model, run.model.base_model)})
        guide = run.training.guide_model  # a local guide model (GISTEmbed) is loaded where the trial runs, like the base model
        training = run.training.model_copy(update={"progress": False, "guide_model": self.models.get(guide, guide) if guide else guide})
        run = run.model_copy(update={"output_dir": self.trial_dir(name or f"{number:04d}"), "overwrite": True, "model": model, "training": training})
        return TrialConfig(number=number, params=params, run=run, data_dir=self.data_dir, **flags)

    def submit(self, config: TrialConfig) -> None:
        """Queue a trial; it starts as soon as a slot is free."""
        raise NotImplementedError

    def wait(self, on_report: OnReport, timeout: float = 1.0) -> list[TrialResult]:
        """Relay intermediate reports to ``on_report`` for up to ``timeout`` seconds; return the trials that ended."""
        raise NotImplementedError

    def remove_trials(self, numbers: Iterable[int]) -> None:
        """Delete the folders of trials ``numbers`` (finished trials of this search that lost).

        Only a folder embedft marked as a run goes; a missing one is skipped.
        """
        for number in numbers:
            remove_owned(Path(self.trial_dir(f"{number:04d}")), kinds=("run",))

    def fetch(self, name: str, local: Path) -> Path:
        """Copy trial folder ``name`` (its model, config.yaml, metrics.json) to ``local``, replacing it atomically.

        Returns ``local``; raises :class:`RemoteTrialError` when the trial folder holds no model.
        """
        kept = Path(self.trial_dir(name))
        if not (kept / "model").is_dir():
            raise RemoteTrialError("the trial folder holds no model", field="executor", expected="a trial folder with a model", found=str(kept))
        tmp = new_scratch(local)
        try:
            shutil.copytree(kept / "model", tmp / "model")
            for extra in ("config.yaml", "metrics.json"):
                if (kept / extra).is_file():
                    shutil.copy2(kept / extra, tmp / extra)
            replace_dir(tmp, local, kind="run", overwrite=True)
        finally:
            remove_owned(tmp)
        return local

    def close(self) -> None:
        """Stop running trials and release workers or connections; queued trials are dropped."""
