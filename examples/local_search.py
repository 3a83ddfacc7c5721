"""A hyperparameter search with the Python API, trials running in a local process pool.

    HF_HUB_OFFLINE=1 python examples/local_search.py                       # Quora sample, 8 trials, 2 workers
    HF_HUB_OFFLINE=1 python examples/local_search.py --data pairs.tsv --n-trials 20 --workers 4

The space is the loss, the learning rate and the batch size of a duplicate-question model.
Trials are chosen on dev only (with median pruning on intermediate dev scores); the test split
is measured once, for the best trial and for the base model. The study lives in a journal file
in the output folder: rerun the same command to resume after Ctrl-C or a crash. The same search
from a YAML file with the CLI is examples/quora_search.yaml (``embedft search``).

Without --data it uses ../shared/data/quora_duplicates when present (training set capped at
2,000 pairs per trial), else the 428-pair sample shipped with embedft.

Tiny settings (CI): EMBEDFT_BASE_MODEL, EMBEDFT_MAX_STEPS, EMBEDFT_MAX_TRAIN_ROWS and
EMBEDFT_OUTPUT_DIR set the defaults of --base-model, --max-steps, --max-train-rows and --output-dir.
"""

import argparse
import json
import os
from importlib import resources
from pathlib import Path

from embedft import OptunaSearch, SearchConfig
from embedft.search import format_trials

QUORA = Path(__file__).resolve().parents[2] / "shared" / "data" / "quora_duplicates" / "quora_duplicate_pairs.tsv.gz"
SAMPLE = resources.files("embedft") / "resources" / "demo_duplicate_questions.tsv"


def _env_int(name: str) -> int | None:
    return int(os.environ[name]) if os.environ.get(name) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="labelled question pairs (default: Quora when present, else the shipped sample)")
    parser.add_argument("--n-trials", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="trials run at once, each in its own process")
    parser.add_argument("--base-model", default=os.environ.get("EMBEDFT_BASE_MODEL", "sentence-transformers/all-MiniLM-L6-v2"))
    parser.add_argument("--max-train-rows", type=int, default=_env_int("EMBEDFT_MAX_TRAIN_ROWS"), help="cap the training pairs")
    parser.add_argument("--max-steps", type=int, default=_env_int("EMBEDFT_MAX_STEPS"), help="stop each trial after this many steps")
    parser.add_argument("--output-dir", default=os.environ.get("EMBEDFT_OUTPUT_DIR", "runs/local-search"))
    args = parser.parse_args()

    data, cap = args.data, args.max_train_rows
    if data is None:
        data = str(QUORA) if QUORA.is_file() else str(SAMPLE)
        cap = cap or (2000 if QUORA.is_file() else None)
    print(f"data: {data}")

    config = SearchConfig(
        base={
            "task": "pair-classification",
            "data": {"source": data, "max_train_pairs": cap},
            "model": {"base_model": args.base_model},
            "training": {"epochs": 1, "max_steps": args.max_steps, "eval_steps": 20, "progress": False},  # dev score every 20 steps for the pruner
        },
        space={
            "training.loss": {"type": "categorical", "choices": ["OnlineContrastiveLoss", "CoSENTLoss", "MultipleNegativesRankingLoss"]},
            "training.learning_rate": {"type": "float", "low": 1e-5, "high": 2e-4, "log": True},
            "training.batch_size": {"type": "categorical", "choices": [16, 32, 64]},
        },
        n_trials=args.n_trials,
        workers=args.workers,
        executor="process",  # one process per running trial, even with --workers 1
        sampler={"type": "tpe", "seed": 0, "n_startup_trials": 4},
        pruner={"type": "median", "n_startup_trials": 2},
        output_dir=args.output_dir,
    )
    search = OptunaSearch(config)
    result = search.run()

    metric = search.task.primary_metric
    print(format_trials(json.loads(result.trials_json.read_text(encoding="utf-8")), best=result.best_number))
    print(f"trials: {result.n_complete} complete, {result.n_pruned} pruned, {result.n_failed} failed")
    if result.best_number is None:
        raise SystemExit("no trial completed")
    print(f"best trial #{result.best_number}: dev {metric} {result.best_value:.4f}")
    for key, value in result.best_params.items():
        print(f"  {key} = {value}")
    print(f"test {metric}: base {result.base_test[metric]:.4f} -> best {result.best_test[metric]:.4f}")
    print(f"best config: {result.best_config_path}  (retrain it: embedft train {result.best_config_path})")
    print(f"best model: {result.best_model_path}; trials table: {result.trials_csv}")


if __name__ == "__main__":
    main()
