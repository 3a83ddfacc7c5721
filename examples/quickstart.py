"""Fine-tune the packaged MiniLM on the shipped duplicate-question sample with the Python API.

HF_HUB_OFFLINE=1 python examples/quickstart.py [--epochs 2] [--output-dir runs/quickstart]
"""

import argparse
from importlib import resources

from embedft import Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--output-dir", default="runs/quickstart")
    args = parser.parse_args()

    data = str(resources.files("embedft") / "resources" / "demo_duplicate_questions.tsv")  # shipped in the package; any CSV/TSV/JSONL/Parquet works
    trainer = Trainer(
        data=data,
        base_model="sentence-transformers/all-MiniLM-L6-v2",
        loss="OnlineContrastiveLoss",
        epochs=args.epochs,
        batch_size=16,
        learning_rate=1e-4,
        splits={"train": 0.6, "dev": 0.2, "test": 0.2},
        output_dir=args.output_dir,
        overwrite=True,
    )
    result = trainer.fit()
    print(result.data.summary())
    print(result.summary())

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(result.model_path))
    a, b = model.encode(["How do I boil an egg?", "Soft boiled egg: how many minutes?"], normalize_embeddings=True)
    print(f"cosine similarity: {float(a @ b):.3f}  (duplicate if >= {result.after.test['f1_threshold']:.3f}, chosen on dev)")


if __name__ == "__main__":
    main()
