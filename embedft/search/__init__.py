"""Hyperparameter search over any config field with Optuna, driven by ask/tell.

The driver (:class:`OptunaSearch`) owns the Optuna study and its storage (an Optuna journal
file in the run directory by default, or any Optuna storage URL). It asks the study for a
trial, turns its parameters into a resolved :class:`~embedft.config.RunConfig`, hands a
:class:`~embedft.trial.TrialConfig` to an executor (:mod:`embedft.executors`), reports
intermediate dev scores to the pruner and tells the study how each trial ended. The test
split is evaluated only for the best trial::

    from embedft import OptunaSearch, SearchConfig

    search = OptunaSearch(SearchConfig.from_file("search.yaml"))
    result = search.run()
    print(result.best_value, result.best_config_path)

The modules, like Optuna's: :mod:`~embedft.search.config` (the space and config), :mod:`~embedft.search.preset` (``space: auto``),
:mod:`~embedft.search.driver` (ask/tell), :mod:`~embedft.search.study` (study, storage,
heartbeats, lock, fingerprints, crash recovery), :mod:`~embedft.search.report` (tables and
result), :mod:`~embedft.search.plots`.
"""

from embedft.search.config import CategoricalParam, FloatParam, IntParam, Param, PrunerConfig, SamplerConfig, SearchConfig, resolve_params
from embedft.search.driver import OptunaSearch, SearchProgress
from embedft.search.preset import auto_space
from embedft.search.report import SearchResult, format_trials

__all__ = [
    "FloatParam",
    "IntParam",
    "CategoricalParam",
    "Param",
    "SamplerConfig",
    "PrunerConfig",
    "SearchConfig",
    "SearchResult",
    "SearchProgress",
    "OptunaSearch",
    "format_trials",
    "resolve_params",
    "auto_space",
]
