"""Our vectorised mAP vs scikit-learn's per-class average_precision_score on a COCO-sized matrix.

Prints the time ratio and the max abs difference per class (scores with many ties, 10% unknown).
Usage: python benchmarks/metrics_vs_sklearn.py [N] [C]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from csra_posthoc.metrics import average_precision


def best_of(fn, repeats: int = 3):
    """Best wall time of ``repeats`` runs after one warm-up, and the last result."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(n: int = 40_000, c: int = 80) -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 1000, (n, c), generator=g).float() / 100  # 1,000 distinct values: heavy ties
    labels = (torch.rand(n, c, generator=g) < 0.05).long()
    labels[torch.rand(n, c, generator=g) < 0.1] = -1

    def sklearn_ap() -> np.ndarray:
        return np.array(
            [average_precision_score(labels[labels[:, k] != -1, k].numpy(), scores[labels[:, k] != -1, k].numpy()) for k in range(c)]
        )

    t_ours, ours = best_of(lambda: average_precision(scores, labels).numpy())
    t_ref, ref = best_of(sklearn_ap)
    print(f"{n} x {c} scores with ties and unknowns")
    print(f"  ours    {t_ours:.3f} s")
    print(f"  sklearn {t_ref:.3f} s   -> sklearn / ours = {t_ref / t_ours:.1f}x")
    print(f"  max |AP_ours - AP_sklearn| = {np.abs(ours - ref).max():.2e}")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
