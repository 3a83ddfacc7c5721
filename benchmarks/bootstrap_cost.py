"""What the paired bootstrap intervals add to a run: seconds for 1,000 resamples of dev and test, both models.

The scores are synthetic (the cost depends on the number of pairs and groups, not on the model),
in groups of linked pairs as many as in the Quora benchmark (3,372 pairs in 2,837 groups per split);
the budget is 2 s for 3,372 test pairs on 2 cores.

    python benchmarks/bootstrap_cost.py [--test-pairs 3372] [--dev-pairs 3372] [--resamples 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time


def synthetic(n_pairs: int, seed: int):
    """Base and fine-tuned pair scores on ``n_pairs`` pairs in ``n_pairs / 1.19`` groups, fixed thresholds."""
    import numpy as np

    from embedft.metrics import PairScores

    rng = np.random.default_rng(seed)
    n_groups = int(n_pairs / 1.19)
    groups = np.sort(np.r_[np.arange(n_groups), rng.integers(0, n_groups, n_pairs - n_groups)])
    labels = rng.random(n_pairs) < 0.37
    base = rng.normal(0.6 + 0.2 * labels, 0.15)
    tuned = base + rng.normal(0.03 * labels, 0.05)
    return [PairScores(groups, s, labels, 0.7, 0.65) for s in (base, tuned)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test-pairs", type=int, default=3372)
    parser.add_argument("--dev-pairs", type=int, default=3372)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads (set before numpy loads)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    from embedft.compare import paired_bootstrap

    splits = {"dev": synthetic(args.dev_pairs, 0), "test": synthetic(args.test_pairs, 1)}
    base, tuned = {k: v[0] for k, v in splits.items()}, {k: v[1] for k, v in splits.items()}
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        found = paired_bootstrap(base, tuned, resamples=args.resamples)
        times.append(time.perf_counter() - t0)
    test_only = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        paired_bootstrap({"test": base["test"]}, {"test": tuned["test"]}, resamples=args.resamples)
        test_only.append(time.perf_counter() - t0)
    print(f"{os.cpu_count()} cores, {args.threads} BLAS thread(s); {args.resamples} resamples; groups: {found.groups}")
    print(f"test ({args.test_pairs} pairs), both models:     median {sorted(test_only)[len(test_only) // 2]:.3f}s, best {min(test_only):.3f}s  (budget 2 s)")
    print(f"dev ({args.dev_pairs}) + test, both models:   median {sorted(times)[len(times) // 2]:.3f}s, best {min(times):.3f}s")
    low, high = found.difference["test"]["cosine_ap"]
    print(f"test cosine_ap difference interval: [{low:+.4f}, {high:+.4f}]")


if __name__ == "__main__":
    main()
