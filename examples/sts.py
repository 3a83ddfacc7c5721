"""Fine-tune an embedding model for semantic textual similarity (STS Benchmark, scores 0-5).

    HF_HUB_OFFLINE=1 python examples/sts.py                              # ../shared/data/stsbenchmark
    HF_HUB_OFFLINE=1 python examples/sts.py --data my_pairs.tsv --score-range 1 10
    HF_HUB_OFFLINE=1 python examples/sts.py --max-train-rows 1000        # a quick run

--data is any CSV/TSV/JSONL/Parquet file (or hub id) with two text columns and a score column
(sentence1, sentence2, score are recognised; other names map with data.columns). Scores are
normalised to [0, 1] from --score-range. embedft makes its own leak-free splits (a sentence never
appears in two splits), so the figures are not those of the benchmark's official test split.
It shows the sts task with CoSENTLoss (the task default: it ranks pairs by cosine similarity in
the order of their gold scores), Spearman and Pearson correlation before and after on the same
held-out pairs, and the saved model ranking new sentence pairs with plain sentence-transformers.

Tiny settings (CI): EMBEDFT_BASE_MODEL, EMBEDFT_MAX_STEPS, EMBEDFT_MAX_TRAIN_ROWS and
EMBEDFT_OUTPUT_DIR set the defaults of --base-model, --max-steps, --max-train-rows and --output-dir.
"""

import argparse
import os
import sys
from pathlib import Path

from embedft import Trainer

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsbenchmark" / "stsbenchmark.tsv"


def _env_int(name: str) -> int | None:
    return int(os.environ[name]) if os.environ.get(name) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(STSB), help="pairs with a similarity score (default: %(default)s)")
    parser.add_argument("--score-range", type=float, nargs=2, default=[0.0, 5.0], metavar=("LOW", "HIGH"))
    parser.add_argument("--base-model", default=os.environ.get("EMBEDFT_BASE_MODEL", "sentence-transformers/all-MiniLM-L6-v2"))
    parser.add_argument("--max-train-rows", type=int, default=_env_int("EMBEDFT_MAX_TRAIN_ROWS"), help="cap the training pairs")
    parser.add_argument("--max-steps", type=int, default=_env_int("EMBEDFT_MAX_STEPS"), help="stop after this many steps (default: one epoch)")
    parser.add_argument("--output-dir", default=os.environ.get("EMBEDFT_OUTPUT_DIR", "runs/sts"))
    args = parser.parse_args()
    if not Path(args.data).exists() and args.data == str(STSB):
        sys.exit(f"{STSB} not found: pass --data with a file of (sentence1, sentence2, score) rows, or a hub id such as sentence-transformers/stsb (its scores are 0-1: add --score-range 0 1)")

    trainer = Trainer(
        task="sts",
        data=args.data,
        score_range=args.score_range,  # data.score_range: scores become (score - low) / (high - low)
        base_model=args.base_model,
        loss="CoSENTLoss",
        max_train_pairs=args.max_train_rows,
        epochs=1,
        max_steps=args.max_steps,
        batch_size=32,
        learning_rate=2e-5,
        output_dir=args.output_dir,
        overwrite=True,
        progress=False,
    )
    result = trainer.fit()
    print(result.data.summary())  # counts, the score range used, the leakage check
    print(result.summary())  # Spearman/Pearson of cosine vs gold score, base vs fine-tuned

    # The saved folder is a plain sentence-transformers model. CoSENT trains the ranking of
    # similarities, not their scale: compare cosines with each other, not with a 0-5 score.
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(result.model_path))
    anchor = "A man is playing a guitar."
    others = ["A person plays an acoustic guitar.", "A man is playing a flute.", "A woman is slicing an onion."]
    similarities = model.similarity(model.encode([anchor]), model.encode(others))[0]
    print(f"\n{anchor}")
    for text, score in sorted(zip(others, similarities.tolist(), strict=True), key=lambda x: -x[1]):
        print(f"  cosine {score:.3f}  {text}")


if __name__ == "__main__":
    main()
