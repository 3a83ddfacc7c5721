"""What a search spends: pruning, and the fixed cost of a trial, measured in one run.

Three arms run the same seeded search on a Quora subset (a seeded random sampler, so every arm
tries the same parameter sets in the same order), in this process, one after the other:

- ``before``: unpruned, with the base model read from disk per trial and every dev evaluation on
  all of dev (``reuse_base_model: false``, ``dev_subsample: null``): the per-trial cost embedft
  had before;
- ``unpruned``: unpruned, with the base model copied from memory and the intermediate dev scores
  on a fixed dev subsample (the defaults);
- ``pruned``: as ``unpruned``, with a pruner (successive halving by default; training steps are
  the resource, rungs at ``min_resource`` x ``reduction_factor``^k steps);
- ``grown``: as ``pruned``, with the training data growing with the rungs
  (``pruner.grow_train_data``; left out with ``--no-grown`` or a median/percentile pruner).

One warm-up trial runs first and is not counted, so no arm pays for this process's imports.

Compute is the sum of the trials' wall seconds. The fixed cost of a trial is its seconds minus
its training steps' seconds (base model, evaluations, set-up); it is compared on the same
parameter sets in ``before`` and ``unpruned``. The RSS of this process is recorded after every
trial of the ``unpruned`` arm (all arms run in-process). ::

    HF_HUB_OFFLINE=1 python benchmarks/search_pruning.py                       # 20 trials per arm
    HF_HUB_OFFLINE=1 python benchmarks/search_pruning.py --trials 8 --before-trials 4 --train-pairs 160

Prints per arm the compute, training steps, best dev AP and pruned trials, the mean cost
breakdown (load, tokenise, train, evaluate), and the goals: compute ratio pruned/unpruned
<= 0.40 with the best dev AP within 0.005; per-trial fixed cost at least halved; RSS flat
within 150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _quora import machine, minilm_path, quora_subset


def search_config(source: Path, out: Path, args, arm: str) -> dict:
    pruned = arm in ("pruned", "grown")
    pruner = {"type": args.pruner, "reduction_factor": args.reduction_factor, "min_resource": args.min_resource or args.eval_steps} if pruned else {"type": "none"}
    if pruned and args.pruner in ("median", "percentile"):
        pruner = {"type": args.pruner, "n_startup_trials": args.startup}
    if arm == "grown":
        pruner["grow_train_data"] = True
    return {
        "base": {
            "data": {"source": str(source), "cache": False, "max_train_pairs": args.train_pairs, "splits": {"train": 0.7, "dev": 0.15, "test": 0.15}},
            "model": {"base_model": minilm_path(), "max_seq_length": args.max_seq_length},
            "training": {"epochs": 1, "batch_size": args.batch_size, "eval_steps": args.eval_steps, "device": "cpu", "seed": 42, "bootstrap": {"resamples": 0}},
        },
        "space": {
            "training.learning_rate": {"type": "float", "low": 1e-6, "high": 3e-4, "log": True},
            "training.loss": {"type": "categorical", "choices": ["OnlineContrastiveLoss", "CoSENTLoss", "ContrastiveLoss"]},
            "training.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3},
            "training.scheduler": {"type": "categorical", "choices": ["linear", "cosine", "constant"]},
        },
        "n_trials": {"before": args.before_trials, "warm-up": 1}.get(arm, args.trials),
        "sampler": {"type": "random", "seed": args.seed},
        "pruner": pruner,
        "reuse_base_model": arm not in ("before", "warm-up"),
        "dev_subsample": None if arm in ("before", "warm-up") else args.dev_subsample,
        "keep_best_model": False,
        "output_dir": str(out / arm),
    }


def run_arm(source: Path, out: Path, args, arm: str) -> dict:
    import psutil

    from embedft import OptunaSearch

    rss: list[int] = []
    search = OptunaSearch(search_config(source, out, args, arm))
    search.on_trial_end.append(lambda result, study: rss.append(psutil.Process().memory_info().rss))
    t0 = time.perf_counter()
    result = search.run()
    rows = json.loads(result.trials_json.read_text())
    return {
        "wall": time.perf_counter() - t0,
        "compute": sum(float(r.get("seconds") or 0.0) for r in rows),
        "steps": sum(int(r.get("train_steps") or 0) for r in rows),
        "best": result.best_value,
        "pruned": result.n_pruned,
        "rows": rows,
        "rss": rss,
    }


def fixed(row: dict) -> float:
    """A trial's seconds besides its training steps: base model, evaluations, set-up."""
    return float(row["seconds"] or 0.0) - float(row["train_seconds"] or 0.0)


def mean(rows: list[dict], key) -> float:
    values = [key(r) if callable(key) else float(r.get(key) or 0.0) for r in rows]
    return statistics.fmean(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2000, help="Quora pairs in the subset (whole components)")
    parser.add_argument("--train-pairs", type=int, default=480)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-steps", type=int, default=3)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--trials", type=int, default=20, help="trials of the unpruned and pruned arms")
    parser.add_argument("--before-trials", type=int, default=None, help="trials of the before arm (default: --trials)")
    parser.add_argument("--dev-subsample", type=int, default=100, help="dev rows for the intermediate scores (after)")
    parser.add_argument("--pruner", default="successive_halving", choices=["median", "percentile", "successive_halving", "hyperband"], help="the pruned arm's pruner")
    parser.add_argument("--reduction-factor", type=int, default=3)
    parser.add_argument("--min-resource", type=int, default=None, help="steps of the first rung (default: --eval-steps)")
    parser.add_argument("--startup", type=int, default=2, help="trials a median/percentile pruner never prunes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-grown", action="store_true", help="leave out the arm whose training data grows with the rungs")
    parser.add_argument("--arms", default="before,unpruned,pruned,grown", help="the arms to run, comma-separated (unpruned is always run: the others are compared with it)")
    args = parser.parse_args()
    args.before_trials = args.trials if args.before_trials is None else args.before_trials

    print(f"machine: {machine()}; pruned arm: {args.pruner}")
    with tempfile.TemporaryDirectory() as tmp:
        source = quora_subset(args.pairs, Path(tmp) / "quora_subset.tsv", seed=args.seed)
        run_arm(source, Path(tmp), args, "warm-up")  # imports and the page cache, for no arm's account
        wanted = {a.strip() for a in args.arms.split(",")} | {"unpruned"}
        names = ["before"] * bool(args.before_trials) + ["unpruned", "pruned"] + ["grown"] * (not args.no_grown and args.pruner in ("successive_halving", "hyperband"))
        names = [n for n in names if n in wanted]
        arms = {name: run_arm(source, Path(tmp), args, name) for name in names}

    print(
        f"\n{args.trials} trials per arm ({args.before_trials} before), random sampler seed {args.seed}, {args.train_pairs} training pairs, "
        f"batch {args.batch_size}, max_seq_length {args.max_seq_length}, dev AP every {args.eval_steps} steps, dev subsample {args.dev_subsample} rows"
    )
    pruned_arms = [n for n in ("pruned", "grown") if n in arms]
    print(f"{'trial':>5} {'params':<60} {'unpruned':>10}" + "".join(f" {n:>16}" for n in pruned_arms))
    for i, a in enumerate(arms["unpruned"]["rows"]):
        params = ", ".join(f"{k.split('.')[-1]}={v:.2g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}" for k, v in a.items() if k.startswith("param:"))
        unpruned = f"{a['value']:.4f}" if a["value"] is not None else a["state"]
        cells = []
        for n in pruned_arms:
            b = arms[n]["rows"][i] if i < len(arms[n]["rows"]) else {"state": "-", "value": None, "train_steps": 0}
            state = b["state"] if b["state"] != "COMPLETE" else f"{b['value']:.4f}"
            cells.append(f" {state:>9} ({b['train_steps'] or 0:>2} st)")
        print(f"{a['number']:>5} {params.replace('param:', ''):<60} {unpruned:>10}" + "".join(cells))
    print(
        f"\n{'arm':<9} {'compute s':>9} {'wall s':>7} {'steps':>5} {'best dev AP':>11} {'pruned':>6} | mean per trial s: {'total':>6} {'load':>5} {'tokenise':>8} {'train':>6} {'eval':>5} {'fixed':>6}"
    )
    for name, r in arms.items():
        rows = r["rows"]
        breakdown = " ".join(f"{mean(rows, k):{w}.2f}" for k, w in (("seconds", 6), ("load_seconds", 5), ("tokenise_seconds", 8), ("train_seconds", 6), ("eval_seconds", 5)))
        print(f"{name:<9} {r['compute']:9.1f} {r['wall']:7.1f} {r['steps']:5d} {r['best']:11.4f} {r['pruned']:6d} |                   {breakdown} {mean(rows, fixed):6.2f}")
    print()
    for n in pruned_arms:
        ratio = arms[n]["compute"] / arms["unpruned"]["compute"]
        steps = arms[n]["steps"] / arms["unpruned"]["steps"]
        gap = arms["unpruned"]["best"] - arms[n]["best"]
        print(f"compute ratio {n}/unpruned: {ratio:.3f} (goal <= 0.40; training steps {steps:.3f}); best dev AP gap {gap:+.4f} (goal <= 0.005)")
    if "before" in arms:
        n = len(arms["before"]["rows"])
        before, after = arms["before"]["rows"], arms["unpruned"]["rows"][:n]  # the same parameter sets
        fb, fa = mean(before, fixed), mean(after, fixed)
        print(f"per-trial fixed cost (seconds besides training steps), same {n} parameter sets: before {fb:.2f}s, after {fa:.2f}s, after/before {fa / fb:.3f} (goal <= 0.5)")
        print(f"  load {mean(before, 'load_seconds'):.2f}s -> {mean(after, 'load_seconds'):.2f}s; evaluate {mean(before, 'eval_seconds'):.2f}s -> {mean(after, 'eval_seconds'):.2f}s")
    if "before" in arms and "pruned" in arms:
        old = arms["pruned"]["compute"] / arms["before"]["compute"] * n / args.trials if args.before_trials != args.trials else arms["pruned"]["compute"] / arms["before"]["compute"]
        print(f"compute ratio pruned (after) / unpruned (before){' (before scaled to ' + str(args.trials) + ' trials)' if n != args.trials else ''}: {old:.3f}")
    tok = mean(arms["unpruned"]["rows"], "tokenise_seconds") / mean(arms["unpruned"]["rows"], "seconds")
    print(f"tokenising: {mean(arms['unpruned']['rows'], 'tokenise_seconds'):.2f}s per unpruned trial, {100 * tok:.1f}% of its seconds")
    rss = [x / 2**20 for x in arms["unpruned"]["rss"]]
    if len(rss) > 5:
        growth = rss[-1] - rss[4]
        print(f"RSS across the {len(rss)} unpruned trials (in-process): {rss[4]:.0f} MB after trial 5 -> {rss[-1]:.0f} MB after the last, {growth:+.0f} MB (goal: within 150 MB)")


if __name__ == "__main__":
    main()
