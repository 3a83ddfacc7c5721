"""embedft: fine-tune open-source text-embedding models for your task.

``import embedft`` is light: torch, sentence-transformers, datasets, optuna and
modal are imported only where they are used.

    >>> import embedft
    >>> embedft.get_task("pair-classification").primary_metric
    'cosine_ap'
"""

from embedft.config import DataConfig, DenseHead, ModalConfig, ModelConfig, RunConfig, SplitRatios, TrainingConfig, load_config
from embedft.curve import CurvePoint, CurveResult, learning_curve
from embedft.data import BuiltDataset, DataReport, DatasetBuilder
from embedft.errors import (
    ConfigError,
    DataError,
    EmbedftError,
    MissingDependencyError,
    ModelError,
    OutputExistsError,
    TrainingError,
)
from embedft.results import EvalReport, TrainResult
from embedft.search import CategoricalParam, FloatParam, IntParam, OptunaSearch, PrunerConfig, SamplerConfig, SearchConfig, SearchProgress, SearchResult
from embedft.tasks import TASKS, LossSpec, TaskSpec, get_task, register_task
from embedft.training import Trainer
from embedft.trial import TrialConfig, TrialResult, run_trial

__version__ = "0.1.0"

__all__ = [
    "BuiltDataset",
    "CategoricalParam",
    "FloatParam",
    "IntParam",
    "ModalConfig",
    "OptunaSearch",
    "PrunerConfig",
    "SamplerConfig",
    "SearchConfig",
    "SearchProgress",
    "SearchResult",
    "TrialConfig",
    "TrialResult",
    "run_trial",
    "CurvePoint",
    "CurveResult",
    "learning_curve",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DataReport",
    "DatasetBuilder",
    "DenseHead",
    "EmbedftError",
    "EvalReport",
    "LossSpec",
    "MissingDependencyError",
    "ModelConfig",
    "ModelError",
    "OutputExistsError",
    "RunConfig",
    "SplitRatios",
    "TASKS",
    "TaskSpec",
    "Trainer",
    "TrainingError",
    "TrainResult",
    "TrainingConfig",
    "get_task",
    "load_config",
    "register_task",
]
