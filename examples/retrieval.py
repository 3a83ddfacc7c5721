"""Fine-tune an embedding model for retrieval (the "R" of RAG), then retrieve with it.

    HF_HUB_OFFLINE=1 python examples/retrieval.py                            # Cranfield, when ../shared/data has it
    HF_HUB_OFFLINE=1 python examples/retrieval.py --data path/to/beir-folder # corpus.jsonl, queries.jsonl, qrels/*.tsv
    HF_HUB_OFFLINE=1 python examples/retrieval.py --max-train-rows 200       # a quick run

Without --data it reads the Cranfield collection in ../shared/data/cranfield (1,400 aeronautics
abstracts, 225 queries); where that folder is absent it writes a small BEIR folder from the
duplicate-question sample shipped with embedft (retrieve a question's duplicates, as BEIR's Quora
set does) and uses that. It shows:

- splits disjoint by query, every split retrieving from the whole corpus (the data report);
- MultipleNegativesRankingLoss (in-batch negatives) plus one hard negative per training pair,
  mined with the base model from training-split candidates only;
- Matryoshka training: the summary gives nDCG@10 at each truncated size, base vs fine-tuned;
- nDCG@10, MRR@10, MAP@100 and recall before and after, on the same held-out queries;
- the saved model in a RAG codebase: plain ``SentenceTransformer(path)``, no embedft.

Tiny settings (CI): EMBEDFT_BASE_MODEL, EMBEDFT_MAX_STEPS, EMBEDFT_MAX_TRAIN_ROWS and
EMBEDFT_OUTPUT_DIR set the defaults of --base-model, --max-steps, --max-train-rows and --output-dir.
"""

import argparse
import json
import os
from pathlib import Path

from embedft import DatasetBuilder, Trainer

CRANFIELD = Path(__file__).resolve().parents[2] / "shared" / "data" / "cranfield"


def write_sample_beir(folder: Path) -> Path:
    """A small BEIR folder from the shipped duplicate-question sample: a query's relevant documents are its duplicates."""
    from importlib import resources

    import pandas as pd

    pairs = pd.read_csv(resources.files("embedft") / "resources" / "demo_duplicate_questions.tsv", sep="\t")
    duplicates = pairs[pairs["is_duplicate"] == 1]
    queries = list(dict.fromkeys(duplicates["question1"]))
    query_id = {t: f"q{i}" for i, t in enumerate(queries)}
    docs = [t for t in dict.fromkeys([*pairs["question1"], *pairs["question2"]]) if t not in query_id]
    doc_id = {t: f"d{i}" for i, t in enumerate(docs)}
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"_id": query_id[t], "text": t}) + "\n" for t in queries)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"_id": doc_id[t], "title": "", "text": t}) + "\n" for t in docs)
    with open(folder / "qrels" / "test.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{query_id[q]}\t{doc_id[d]}\t1\n" for q, d in zip(duplicates["question1"], duplicates["question2"], strict=True) if d in doc_id)
    return folder


def _env_int(name: str) -> int | None:
    return int(os.environ[name]) if os.environ.get(name) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help=f"a BEIR folder (default: {CRANFIELD} when present, else the shipped sample)")
    parser.add_argument("--base-model", default=os.environ.get("EMBEDFT_BASE_MODEL", "sentence-transformers/all-MiniLM-L6-v2"))
    parser.add_argument("--max-train-rows", type=int, default=_env_int("EMBEDFT_MAX_TRAIN_ROWS"), help="cap the training (query, document) pairs")
    parser.add_argument("--max-steps", type=int, default=_env_int("EMBEDFT_MAX_STEPS"), help="stop after this many steps (default: one epoch)")
    parser.add_argument("--matryoshka-dims", default="384,128,64", help="comma-separated sizes, at most the model's dimension")
    parser.add_argument("--output-dir", default=os.environ.get("EMBEDFT_OUTPUT_DIR", "runs/retrieval"))
    args = parser.parse_args()

    if args.data:
        data = Path(args.data)
    elif CRANFIELD.is_dir():
        data = CRANFIELD
    else:
        data = write_sample_beir(Path(args.output_dir).with_name(Path(args.output_dir).name + "-data"))
        print(f"{CRANFIELD} not found: using a BEIR folder written from the shipped duplicate-question sample ({data})")

    # 1. Splits by query: a query and its judgements stay in one split; all splits search the whole corpus.
    built = DatasetBuilder(task="retrieval", source=str(data), max_train_pairs=args.max_train_rows).build()
    print(built.report.summary())

    # 2. Fine-tune: MNRL with one mined hard negative per (query, relevant document), Matryoshka sizes.
    trainer = Trainer(
        task="retrieval",
        data=built,
        base_model=args.base_model,
        loss="MultipleNegativesRankingLoss",
        # data.mine_hard_negatives in a YAML config. Judgements are incomplete (an unjudged document
        # near the top is often relevant), so skip the 10 nearest candidates: a false negative teaches
        # the model the wrong thing. relative_margin/max_score are further guards (see MiningConfig).
        mine_hard_negatives={"num_negatives": 1, "range_min": 10},
        matryoshka_dims=[int(d) for d in args.matryoshka_dims.split(",")],  # training.matryoshka_dims
        epochs=1,
        max_steps=args.max_steps,
        batch_size=32,
        learning_rate=5e-5,
        output_dir=args.output_dir,
        overwrite=True,
        progress=False,
    )
    result = trainer.fit()
    print(result.summary())  # nDCG@10 & co. before/after, the Matryoshka table, the mining report

    # 3. In a RAG codebase: load the folder with plain sentence-transformers and search the corpus.
    #    SentenceTransformer(path, truncate_dim=128) gives the smaller vectors of the Matryoshka table.
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(result.model_path))
    doc_ids, docs = built.corpus["doc_id"].tolist(), built.corpus["text"].tolist()
    doc_emb = model.encode(docs, batch_size=64, normalize_embeddings=True)
    test_query = built.test.iloc[0]  # a held-out query, never trained on
    relevant = set(built.test.loc[built.test["query_id"] == test_query["query_id"], "doc_id"])
    query_emb = model.encode(test_query["query"], normalize_embeddings=True)
    top = (doc_emb @ query_emb).argsort()[::-1][:3]
    print(f"\nquery: {test_query['query']}")
    for rank, i in enumerate(top, start=1):
        mark = "relevant" if doc_ids[i] in relevant else "-"
        print(f"  top {rank}: [{doc_ids[i]}] score {float(doc_emb[i] @ query_emb):.3f} ({mark}) {docs[i][:90]}")


if __name__ == "__main__":
    main()
