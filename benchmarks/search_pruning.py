"""What pruning saves: the same seeded search on a Quora subset, with and without a pruner (median by default).

Both arms use a seeded random sampler, so they try the same parameter sets in the same
order; the only difference is that the pruned arm stops a trial whose intermediate dev AP
falls below the median of earlier trials at the same step. Compute is the sum of the
trials' wall seconds (training + dev evaluations).

    HF_HUB_OFFLINE=1 python benchmarks/search_pruning.py            # ~25 min on 2 CPU cores

Prints each arm's compute and best dev AP, and the ratio pruned/unpruned
(goal: <= 0.4 with the best dev AP within 0.005).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _quora import machine, minilm_path, quora_subset


def search_config(source: Path, out: Path, args, pruner: str) -> dict:
    return {
        "base": {
            "data": {"source": str(source), "cache": False, "max_train_pairs": args.train_pairs, "splits": {"train": 0.7, "dev": 0.15, "test": 0.15}},
            "model": {"base_model": minilm_path()},
            "training": {"epochs": 1, "batch_size": args.batch_size, "eval_steps": args.eval_steps, "device": "cpu", "seed": 42},
        },
        "space": {
            "training.learning_rate": {"type": "float", "low": 1e-6, "high": 3e-4, "log": True},
            "training.loss": {"type": "categorical", "choices": ["OnlineContrastiveLoss", "CoSENTLoss", "ContrastiveLoss"]},
            "training.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3},
            "training.scheduler": {"type": "categorical", "choices": ["linear", "cosine", "constant"]},
        },
        "n_trials": args.trials,
        "sampler": {"type": "random", "seed": args.seed},
        "pruner": {"type": pruner, "n_startup_trials": args.startup, "n_warmup_steps": 0, **({"min_resource": args.eval_steps} if pruner in ("successive_halving", "hyperband") else {})},
        "output_dir": str(out / pruner),
    }


def run_arm(source: Path, out: Path, args, pruner: str) -> dict:
    from embedft import OptunaSearch

    t0 = time.perf_counter()
    result = OptunaSearch(search_config(source, out, args, pruner)).run()
    rows = json.loads(result.trials_json.read_text())
    return {
        "wall": time.perf_counter() - t0,
        "compute": sum(float(r.get("seconds") or 0.0) for r in rows),
        "steps": sum(int(r.get("train_steps") or 0) for r in rows),
        "best": result.best_value,
        "pruned": result.n_pruned,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2000, help="Quora pairs in the subset (whole components)")
    parser.add_argument("--train-pairs", type=int, default=480)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-steps", type=int, default=5)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--startup", type=int, default=2, help="trials the median pruner never prunes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pruner", default="median", choices=["median", "percentile", "successive_halving", "hyperband"], help="the pruned arm's pruner")
    args = parser.parse_args()

    print(f"machine: {machine()}; pruned arm: {args.pruner}")
    with tempfile.TemporaryDirectory() as tmp:
        source = quora_subset(args.pairs, Path(tmp) / "quora_subset.tsv", seed=args.seed)
        arms = {name: run_arm(source, Path(tmp), args, name) for name in ("none", args.pruner)}
    arms["pruned"] = arms.pop(args.pruner)

    print(f"\n{args.trials} trials per arm, random sampler seed {args.seed}, {args.train_pairs} training pairs, batch {args.batch_size}, dev AP every {args.eval_steps} steps")
    print(f"{'trial':>5} {'params':<60} {'unpruned':>10} {'pruned':>16}")
    for a, b in zip(arms["none"]["rows"], arms["pruned"]["rows"], strict=True):
        params = ", ".join(f"{k.split('.')[-1]}={v:.2g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}" for k, v in a.items() if k.startswith("param:"))
        state = b["state"] if b["state"] != "COMPLETE" else f"{b['value']:.4f}"
        print(f"{a['number']:>5} {params.replace('param:', ''):<60} {a['value']:>10.4f} {state:>9} ({b['train_steps']:>2} st)")
    for name, label in (("none", "unpruned"), ("pruned", args.pruner)):
        r = arms[name]
        print(f"{label:<9} compute {r['compute']:7.1f}s  train steps {r['steps']:4d}  best dev AP {r['best']:.4f}  pruned trials {r['pruned']}")
    ratio = arms["pruned"]["compute"] / arms["none"]["compute"]
    gap = arms["none"]["best"] - arms["pruned"]["best"]
    print(f"compute ratio pruned/unpruned: {ratio:.3f} (goal <= 0.4); best dev AP gap {gap:+.4f} (goal <= 0.005)")


if __name__ == "__main__":
    main()
