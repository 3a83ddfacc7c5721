"""Every task on a real ../shared/data set: base vs fine-tuned packaged MiniLM on a CPU-sized budget.

For each task, embedft builds group-disjoint splits, measures all-MiniLM-L6-v2 on test,
fine-tunes it with the task's default loss and measures again on the same test split:

| task                | data (../shared/data)                              | loss (default)                |
|---------------------|----------------------------------------------------|-------------------------------|
| sts                 | stsbenchmark/stsbenchmark.tsv (scores 0-5)         | CoSENTLoss                    |
| retrieval           | cranfield/ (BEIR folder; splits by query)          | MultipleNegativesRankingLoss  |
| triplets            | sick/ -> (sentence A, an entailed B, a contradicting or neutral B) | MultipleNegativesRankingLoss |
| paraphrase-mining   | Quora pairs, mined from the pooled questions       | MultipleNegativesRankingLoss  |
| pair-classification | mrpc/mrpc.tsv (news paraphrases, another domain)   | OnlineContrastiveLoss         |

    HF_HUB_OFFLINE=1 python benchmarks/tasks.py                 # all tasks (~25 min on 2 CPU cores)
    HF_HUB_OFFLINE=1 python benchmarks/tasks.py --tasks sts --train-rows 500
    HF_HUB_OFFLINE=1 python benchmarks/tasks.py --recipe quality --time-budget 5   # the quality recipe per task

``--recipe quality`` fills what the command line leaves unset with the task's quality recipe
(embedft.recipes): its loss setup, epochs, learning rate, length-grouped batches; ``--train-rows``
(0: every row) and ``--time-budget`` apply to either recipe, so both can be compared on the same data.

Prints one row per task: primary metric on test, base -> fine-tuned, the ratio
fine-tuned/base (the baseline is the base model, measured in the same run), and times.
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _quora import machine, minilm_path, quora_subset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ALL = ["sts", "retrieval", "triplets", "paraphrase-mining", "pair-classification"]


def prepare(task: str, scratch: Path, args) -> tuple[str, str, dict]:
    """(source, description, extra data config) for ``task``."""

    if task == "sts":
        return str(DATA / "stsbenchmark" / "stsbenchmark.tsv"), "STS Benchmark", {"score_range": [0, 5]}
    if task == "retrieval":
        return str(DATA / "cranfield"), "Cranfield (BEIR)", {}
    if task == "pair-classification":
        return str(DATA / "mrpc" / "mrpc.tsv"), "MRPC", {}
    if task == "paraphrase-mining":
        quora = quora_subset(args.quora_pairs, scratch / "quora.tsv", seed=args.seed)
        return str(quora), f"Quora ({args.quora_pairs} pairs)", {}
    triplets = sick_triplets()
    out = scratch / "sick_triplets.tsv"
    triplets.to_csv(out, sep="\t", index=False)
    return str(out), f"SICK triplets ({len(triplets)})", {}


def sick_triplets():
    """(A, B entailed by A, B not entailed by A) from SICK: hard negatives, lexically close to A.

    Each sentence A with an entailed and a non-entailed B gives one triplet per entailed B; the
    negative is a contradiction where A has one, else the least related neutral B.
    """
    import pandas as pd

    frame = pd.concat([pd.read_csv(f, sep="\t") for f in sorted((DATA / "sick").glob("SICK_*.txt"))], ignore_index=True)
    rows = []
    for anchor, group in frame.groupby("sentence_A", sort=True):
        positives = group[group["entailment_judgment"] == "ENTAILMENT"]
        others = group[group["entailment_judgment"] != "ENTAILMENT"].sort_values(
            ["entailment_judgment", "relatedness_score"], key=lambda c: c.map({"CONTRADICTION": 0, "NEUTRAL": 1}) if c.name == "entailment_judgment" else c
        )
        if positives.empty or others.empty:
            continue
        for positive in positives["sentence_B"]:
            rows.append({"anchor": anchor, "positive": positive, "negative": others["sentence_B"].iloc[0]})
    return pd.DataFrame(rows)


def run(task: str, args, scratch: Path) -> dict:
    from embedft import Trainer

    source, description, extra = prepare(task, scratch, args)
    config = {
        "task": task,
        "data": {"source": source, "max_train_pairs": args.train_rows or None, "cache": False, "seed": args.seed, **extra},
        "model": {"base_model": minilm_path()},
        "training": {
            "recipe": args.recipe,
            "seed": args.seed,
            "progress": False,
            "time_budget_minutes": args.time_budget,
            # only what the command line gives: the recipe fills the rest
            **{k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("learning_rate", args.learning_rate)) if v is not None},
        },
        "output_dir": str(scratch / task),
        "overwrite": True,
    }
    t0 = time.perf_counter()
    result = Trainer(config).fit()
    total = time.perf_counter() - t0
    metric = result.after.primary_metric
    splits = result.data.splits
    return {
        "task": task,
        "data": description,
        "train": splits["train"].pairs,
        "test": splits["test"].pairs,
        "metric": metric,
        "base": result.before.test[metric],
        "tuned": result.after.test[metric],
        "train_s": result.train_seconds,
        "total_s": total,
        "loss": result.loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(ALL), help=f"comma-separated, among {ALL}")
    parser.add_argument("--train-rows", type=int, default=1000, help="training rows per task (cap on the train split; 0: every row)")
    parser.add_argument("--quora-pairs", type=int, default=6000, help="Quora pairs (whole components) for paraphrase mining")
    parser.add_argument("--epochs", type=float, help="default: the recipe's (1 with the default recipe)")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's (32 with the default recipe)")
    parser.add_argument("--learning-rate", type=float, help="default: the recipe's (2e-5 with the default recipe)")
    parser.add_argument("--recipe", choices=["default", "quality"], default="default", help="training.recipe for every task (default: %(default)s)")
    parser.add_argument("--time-budget", type=float, metavar="MINUTES", help="training.time_budget_minutes for every task")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"data not found: {DATA}")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(ALL))
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; expected among {ALL}")
    print(
        f"machine: {machine()}; model: packaged all-MiniLM-L6-v2; recipe {args.recipe}; train rows <= {args.train_rows or 'all'}, epochs {args.epochs or 'recipe'}, "
        f"batch {args.batch_size or 'recipe'}, lr {args.learning_rate or 'recipe'}, time budget {args.time_budget or '-'} min, seed {args.seed}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="embedft-tasks-") as tmp:
        for task in tasks:
            row = run(task, args, Path(tmp))
            rows.append(row)
            print(f"{task}: {row['metric']} {row['base']:.4f} -> {row['tuned']:.4f} ({row['train_s']:.0f}s training)", flush=True)
    print()
    print("| task | data | loss | train / test rows | test metric | base | fine-tuned | ratio | train s | total s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['task']} | {r['data']} | {r['loss']} | {r['train']} / {r['test']} | {r['metric']} | {r['base']:.4f} | {r['tuned']:.4f} | "
            f"{r['tuned'] / r['base']:.3f} | {r['train_s']:.0f} | {r['total_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
