"""Warm start: queue the best configurations of an earlier study before the sampler's own.

A search on new or more data starts from what worked: ``warm_start`` names an earlier search
folder (its ``search.yaml`` says where its study is: the journal beside it, or a storage URL) or
a storage URL, and the ``warm_start_trials`` best complete trials of that study are queued with
Optuna's ``enqueue_trial``. A parameter the space no longer has, or a value outside its current
range or choices, is left out (the sampler draws it); configurations that become identical are
queued once. The study records that it was warm-started, so a resumed search queues nothing again.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedft.errors import ConfigError
from embedft.redact import redact_url, scrub, url_problem
from embedft.search.config import CategoricalParam, FloatParam, IntParam, Param, SearchConfig

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["load_earlier_study", "warm_start_params", "enqueue_warm_start"]

logger = logging.getLogger(__name__)


def load_earlier_study(source: str, study_name: str) -> optuna.Study:
    """The study behind ``source``: an embedft search folder, an Optuna journal file, or a storage URL.

    In a storage URL that holds several studies, the one named ``study_name`` is taken; one
    that holds a single study gives that one.
    """
    import optuna
    import yaml
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(source).expanduser()
    url: str | None = None
    if path.is_dir():
        if not (path / "search.yaml").is_file():
            raise ConfigError("the warm start folder is not an embedft search folder", field="warm_start", expected="a folder with search.yaml (an earlier search's output_dir)", found=str(path))
        earlier = yaml.safe_load((path / "search.yaml").read_text(encoding="utf-8")) or {}
        url, study_name = earlier.get("storage"), earlier.get("study_name") or "embedft"
        if url and "***" in url:  # search.yaml keeps a storage password masked
            raise ConfigError(
                "the earlier search's storage URL is saved with its password masked",
                field="warm_start",
                expected="the storage URL itself (--warm-start URL, with study_name naming the study)",
                found=redact_url(url),
            )
        storage: Any = url or JournalStorage(JournalFileBackend(str(path / "study.journal")))
        if not url and not (path / "study.journal").is_file():
            raise ConfigError("the warm start folder holds no study journal", field="warm_start", expected="an earlier search's output_dir", found=str(path))
    elif path.is_file() and path.suffix == ".journal":
        storage = JournalStorage(JournalFileBackend(str(path)))
    elif "://" in source:
        if problem := url_problem(source):
            raise ConfigError(f"the warm start URL cannot be used: {problem}", field="warm_start", expected="a database URL SQLAlchemy reads as written", found=redact_url(source))
        url = storage = source
    else:
        raise ConfigError("warm start source not found", field="warm_start", expected="an earlier search folder, an Optuna journal file or a storage URL", found=source)
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        if study_name not in names and len(names) == 1:
            study_name = names[0]
        if study_name not in names:
            raise ConfigError("the warm start storage has no such study", field="warm_start", expected=f"one of the studies {names}", found=study_name)
        return optuna.load_study(study_name=study_name, storage=storage)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a storage that cannot be read; its message is scrubbed of the URL's secrets
        first = (scrub(str(exc), url or "").splitlines() or [""])[0]
        where = redact_url(url) if url else str(path)
        raise ConfigError(f"cannot read the warm start study: {type(exc).__name__}: {first}", field="warm_start", expected="a readable Optuna storage", found=where) from None


def _fits(param: Param, value: Any) -> bool:
    """Whether ``value`` is one the parameter can take now (its range, step or choices)."""
    if isinstance(param, CategoricalParam):
        return any(type(c) is type(value) and c == value for c in param.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if not param.low <= value <= param.high:
        return False
    if isinstance(param, IntParam):
        return float(value).is_integer() and (int(value) - param.low) % param.step == 0
    assert isinstance(param, FloatParam)
    return param.step is None or math.isclose((value - param.low) / param.step, round((value - param.low) / param.step), abs_tol=1e-9)


def warm_start_params(earlier: optuna.Study, space: dict[str, Param], k: int) -> list[tuple[int, dict[str, Any]]]:
    """``(trial number, parameters)`` of the ``k`` best complete trials of ``earlier``, cut to ``space``.

    Ranked by the first objective in the earlier study's direction. Parameters not in ``space`` and
    values outside it are dropped; a configuration equal to a better one already taken is skipped.
    """
    from optuna.trial import TrialState

    sign = -1.0 if earlier.directions[0].name == "MAXIMIZE" else 1.0
    complete = [t for t in earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values and math.isfinite(t.values[0])]
    picked: list[tuple[int, dict[str, Any]]] = []
    for t in sorted(complete, key=lambda t: (sign * t.values[0], t.number)):
        params = {key: value for key, value in t.params.items() if key in space and _fits(space[key], value)}
        dropped = sorted(set(t.params) - set(params))
        if dropped:
            logger.info("warm start: trial %d's %s left out (not in this space, or out of its range)", t.number, ", ".join(dropped))
        if params and all(params != p for _, p in picked):
            picked.append((t.number, params))
        if len(picked) == k:
            break
    return picked


def enqueue_warm_start(study: optuna.Study, config: SearchConfig) -> list[dict[str, Any]]:
    """Queue the best configurations of ``config.warm_start``'s study in ``study``; returns what was queued."""
    assert config.warm_start is not None
    source = redact_url(config.warm_start) if "://" in config.warm_start else config.warm_start
    earlier = load_earlier_study(config.warm_start, config.study_name)
    same = Path(config.warm_start).expanduser().resolve() == Path(config.output_dir).expanduser().resolve() or (config.storage == config.warm_start and earlier.study_name == study.study_name)
    if same:
        raise ConfigError("a search cannot warm-start from its own study", field="warm_start", expected="an earlier search's folder or storage", found=source)
    queued = warm_start_params(earlier, config.space, config.warm_start_trials)
    for number, params in queued:
        study.enqueue_trial(params, user_attrs={"warm_start": f"{source} trial {number}"}, skip_if_exists=True)
    study.set_user_attr("embedft_warm_start", {"source": source, "queued": [n for n, _ in queued]})
    logger.info("warm start: queued the %d best configuration(s) of %s (trials %s)", len(queued), source, [n for n, _ in queued])
    return [p for _, p in queued]
