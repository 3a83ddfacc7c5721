"""Frozen backbone + Dense head on Quora: training on cached embeddings vs re-encoding every step.

Both arms train the same head (the packaged all-MiniLM-L6-v2, frozen, with a Dense
384->256 tanh head before its Normalize, same initial weights) with the same loss
(OnlineContrastiveLoss from the task registry), the same group-disjoint split, epochs,
batch size, learning rate, warmup, scheduler, weight decay and seed:

  (a) embedft's Trainer, which trains the head with sentence-transformers' trainer on cached
      backbone embeddings (embedft.frozen.cached_model): once on an empty cache (the timed
      training includes encoding every distinct training text once) and once more on the
      filled cache, as every later trial of a search would run;
  (b) sentence-transformers' SentenceTransformerTrainer, which runs every text through the
      frozen backbone at every step (in train mode, so with dropout, as it does by default).

Test average precision comes from embedft.metrics.evaluate_pair_classification for both
(the cached arm evaluates through the cached model, the baseline through the model itself).
The cached arm's training time is its cache look-up (or encoding) of the training texts plus
trainer.train(), which also scores dev once per epoch; the baseline scores nothing during training.

    HF_HUB_OFFLINE=1 python benchmarks/frozen_head.py          # about a minute on 2 idle CPU cores (most of it the baseline)
    HF_HUB_OFFLINE=1 python benchmarks/frozen_head.py --train-pairs 200 --epochs 1   # a smoke run

Prints both training times, the speed-ups (goal: >= 50x warm) and both test APs (goal: within 0.005).
The cold-cache speed-up is about the number of epochs (each epoch of the baseline encodes every
text again); the warm one is what the cache is for.
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

from _quora import QUORA, machine, minilm_path, quora_subset, require_quora

LOSS = "OnlineContrastiveLoss"


def run_config(args, cache_root: Path, output_dir: Path):
    from embedft.config import RunConfig

    return RunConfig.from_dict(
        {
            "model": {"base_model": minilm_path(), "dense": {"out_features": args.out_features, "activation": "tanh"}, "freeze_backbone": True},
            "data": {"cache_dir": str(cache_root)},
            "training": {
                "loss": LOSS,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "learning_rate": args.lr,
                "warmup_ratio": 0.1,
                "scheduler": "linear",
                "weight_decay": 0.01,
                "seed": args.seed,
                "device": args.device,
                "progress": False,
                "eval_batch_size": 64,
            },
            "output_dir": str(output_dir),
            "overwrite": True,
        }
    )


def cached_arm(built, args, cache_root: Path, output_dir: Path) -> dict:
    """embedft's Trainer with the cache under ``cache_root`` (a fresh cache object, so a warm run reads the disk)."""
    from embedft import Trainer

    t0 = time.perf_counter()
    result = Trainer(run_config(args, cache_root, output_dir), data=built).fit()  # dev and test texts fill the cache too (not timed as training)
    cache = result.frozen_cache
    return {
        "train_s": cache["embed_seconds"] + result.train_seconds,
        "total_s": time.perf_counter() - t0,
        "ap": result.after.test["cosine_ap"],
        "steps": result.train_steps,
        "loss": result.train_loss,
        "computed": int(cache["computed"]),
        "hits": int(cache["hits"]),
        "embed_s": cache["embed_seconds"],
    }


def sentence_transformers_arm(model, built, train_ds, args, scratch: Path) -> dict:
    """What a user writes by hand: SentenceTransformerTrainer on the model with the frozen backbone."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from embedft.frozen import split_backbone
    from embedft.metrics import evaluate_pair_classification
    from embedft.tasks import get_task

    if args.baseline_dropout == "off":  # the cached arm's embeddings come from eval mode
        for module in split_backbone(model)[0]:
            for sub in module.modules():
                if type(sub).__name__ == "Dropout":
                    sub.p = 0.0
    t0 = time.perf_counter()
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(scratch / "ckpt"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=0.1,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        data_seed=args.seed,
        disable_tqdm=True,
        use_cpu=args.device == "cpu",
        dataloader_pin_memory=False,
        logging_steps=50,
    )
    loss = get_task("pair-classification").loss(LOSS).build(model)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=train_ds, loss=loss)
    trainer.remove_callback(PrinterCallback)  # no log dicts on stdout
    trainer.train()
    train_s = time.perf_counter() - t0
    report = evaluate_pair_classification(model, built.dev, built.test, batch_size=64)
    return {"train_s": train_s, "total_s": time.perf_counter() - t0, "ap": report["test"]["cosine_ap"], "steps": int(trainer.state.global_step)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(QUORA))
    parser.add_argument("--pairs", type=int, default=4000, help="Quora pairs in the subset, taken as whole components (dev and test are 10%% each)")
    parser.add_argument("--train-pairs", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out-features", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--baseline-dropout", choices=["on", "off"], default="on", help="backbone dropout in the baseline's train-mode forward (sentence-transformers' default: on)")
    parser.add_argument("--cache-dir", default=None, help="embedding cache root (default: a temporary folder, so the first run is cold)")
    parser.add_argument("--skip-baseline", action="store_true", help="only the cached arms (the baseline takes minutes)")
    args = parser.parse_args()
    require_quora(args.data)

    from embedft import DatasetBuilder
    from embedft.config import ModelConfig
    from embedft.modeling import load_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subset = quora_subset(args.pairs, tmp / "quora_subset.tsv", seed=args.seed, path=args.data)
        built = DatasetBuilder(seed=args.seed, max_train_pairs=args.train_pairs, cache=False).build(str(subset))
        print(built.report.summary())
        print(f"machine: {machine()}")
        train_ds = built.dataset("train", loss=LOSS)
        model_cfg = ModelConfig(base_model=minilm_path(), dense={"out_features": args.out_features, "activation": "tanh"}, freeze_backbone=True)
        model = load_model(model_cfg, args.device, seed=args.seed)
        cache_root = Path(args.cache_dir) if args.cache_dir else tmp / "embedding-cache"
        cold = cached_arm(built, args, cache_root, tmp / "cold")
        warm = cached_arm(built, args, cache_root, tmp / "warm")
        plain = sentence_transformers_arm(model, built, train_ds, args, tmp) if not args.skip_baseline else None

    modules = " -> ".join(type(m).__name__ for m in model._modules.values())
    print(f"\nmodel: {modules} (backbone frozen); loss {LOSS}; {len(train_ds)} training pairs, {args.epochs:g} epoch(s), batch {args.batch_size}, lr {args.lr:g}; test split {len(built.test)} pairs")
    print(f"{'arm':<28} {'train s':>9} {'end-to-end s':>13} {'steps':>6} {'test AP':>8}")
    print(f"{'cached, cold cache':<28} {cold['train_s']:>9.2f} {cold['total_s']:>13.2f} {cold['steps']:>6} {cold['ap']:>8.4f}   ({cold['computed']} texts encoded in {cold['embed_s']:.2f}s)")
    print(f"{'cached, warm cache':<28} {warm['train_s']:>9.2f} {warm['total_s']:>13.2f} {warm['steps']:>6} {warm['ap']:>8.4f}   ({warm['hits']} texts from the cache, {warm['computed']} encoded)")
    if plain is None:
        return
    print(f"{'sentence-transformers':<28} {plain['train_s']:>9.2f} {plain['total_s']:>13.2f} {plain['steps']:>6} {plain['ap']:>8.4f}   (dropout {args.baseline_dropout})")
    print(f"speed-up over sentence-transformers (train): cold {plain['train_s'] / cold['train_s']:.1f}x, warm {plain['train_s'] / warm['train_s']:.1f}x (goal >= 50x)")
    diff = abs(cold["ap"] - plain["ap"])
    print(f"test AP: cached {cold['ap']:.4f} vs sentence-transformers {plain['ap']:.4f}, |diff| {diff:.4f} (goal <= 0.005: {'met' if diff <= 0.005 else 'NOT met'})")


if __name__ == "__main__":
    main()
