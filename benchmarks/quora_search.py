"""The article's numbers: base MiniLM vs a default fine-tune vs the searched best, on held-out Quora pairs.

On a whole-component Quora subset with a group-disjoint split and the packaged
all-MiniLM-L6-v2: (1) the base model's test AP, (2) the test AP after embedft's default
config (OnlineContrastiveLoss, lr 2e-5, 1 epoch), (3) the test AP of the search's best
trial, chosen on dev only. All three use the same splits and the same training-set cap.

    HF_HUB_OFFLINE=1 python benchmarks/quora_search.py          # ~30 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _quora import machine, minilm_path, quora_subset


def base_config(source: Path, out: Path, args) -> dict:
    return {
        "data": {"source": str(source), "cache": False, "max_train_pairs": args.train_pairs, "splits": {"train": 0.75, "dev": 0.07, "test": 0.18}},
        "model": {"base_model": minilm_path()},
        "training": {"epochs": 1, "batch_size": 32, "device": "cpu", "seed": 42, "progress": False},
        "output_dir": str(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=9000, help="Quora pairs in the subset (whole components)")
    parser.add_argument("--train-pairs", type=int, default=1600)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--eval-steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from embedft import OptunaSearch, Trainer

    print(f"machine: {machine()}")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = quora_subset(args.pairs, tmp / "quora_subset.tsv", seed=args.seed)

        default = Trainer(base_config(source, tmp / "default", args)).fit()
        print(default.data.summary())
        print(f"default fine-tune: {default.train_seconds:.0f}s training")

        base = base_config(source, tmp / "unused", args)
        base["training"]["eval_steps"] = args.eval_steps
        search = OptunaSearch(
            {
                "base": base,
                "space": {
                    "training.learning_rate": {"type": "float", "low": 1e-5, "high": 2e-4, "log": True},
                    "training.loss": {"type": "categorical", "choices": ["OnlineContrastiveLoss", "CoSENTLoss", "MultipleNegativesRankingLoss"]},
                    "training.batch_size": {"type": "categorical", "choices": [16, 32]},
                    "training.scheduler": {"type": "categorical", "choices": ["linear", "cosine"]},
                    "training.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
                },
                "n_trials": args.trials,
                "sampler": {"type": "tpe", "seed": args.seed, "n_startup_trials": 3},
                "pruner": {"type": "median", "n_startup_trials": 2},
                "output_dir": str(tmp / "search"),
            }
        )
        result = search.run()

    test_pairs = default.data.splits["test"].pairs
    print(
        f"\nQuora subset: {default.data.kept} pairs, group-disjoint splits "
        f"{default.data.splits['train'].pairs}/{default.data.splits['dev'].pairs}/{test_pairs}; training capped at {args.train_pairs} pairs"
    )
    print(f"search: {result.n_complete} complete, {result.n_pruned} pruned, {result.n_failed} failed; best trial {result.best_number} (dev AP {result.best_value:.4f}): {result.best_params}")
    print(f"{'model':<28} {'test AP':>8} {'test F1':>8} {'ROC-AUC':>8}")
    rows = [("base all-MiniLM-L6-v2", default.before.test), ("default fine-tune", default.after.test), ("searched best (dev-chosen)", result.best_test)]
    for name, m in rows:
        print(f"{name:<28} {m['cosine_ap']:>8.4f} {m['cosine_f1']:>8.4f} {m['cosine_roc_auc']:>8.4f}")
    print(f"total {time.perf_counter() - t_start:.0f}s")


if __name__ == "__main__":
    main()
