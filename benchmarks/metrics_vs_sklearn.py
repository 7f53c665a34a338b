"""Per-class AP: ours vs scikit-learn's ``average_precision_score`` per class and vs the previous
torch implementation, on a COCO val-sized matrix (40,137 x 80) of continuous scores, of heavily
tied scores, and with 10 % unknown labels. Prints times, ratios and the max |difference|.

Usage: python -m benchmarks.metrics_vs_sklearn [--n 40137] [--c 80] [--repeats 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from benchmarks.harness import Figure, median_time
from csra_posthoc.metrics import average_precision
from csra_posthoc.metrics.average_precision import average_precision_torch


def matrices(n: int, c: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(n, c, generator=g) < 0.05).long()
    continuous = torch.randn(n, c, generator=g) + 1.5 * labels
    tied = torch.randint(0, 1000, (n, c), generator=g).float() / 100 + labels  # ~1,100 distinct values
    unknown = labels.clone()
    unknown[torch.rand(n, c, generator=g) < 0.1] = -1
    return {"continuous": (continuous, labels), "heavy ties": (tied, labels), "10% unknown": (continuous, unknown)}


def sklearn_ap(scores: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    s, y = scores.numpy(), labels.numpy()
    out = []
    for k in range(s.shape[1]):
        keep = y[:, k] != -1
        out.append(average_precision_score(y[keep, k], s[keep, k]))
    return np.array(out)


def run(quick: bool = False, n: int = 40_137, c: int = 80, repeats: int = 3) -> list[Figure]:
    figures = []
    for case, (scores, labels) in matrices(n, c).items():
        t_ours, ours = median_time(lambda s=scores, y=labels: average_precision(s, y).numpy(), repeats)
        t_ref, ref = median_time(
            lambda s=scores, y=labels: sklearn_ap(s, y), 1 if quick else 2, warmup=0
        )  # no warm-up to pay
        t_old, old = median_time(lambda s=scores, y=labels: average_precision_torch(s, y).numpy(), 1 if quick else 2)
        diff = max(np.abs(ours - ref).max(), np.abs(ours - old).max())
        line = (
            f"{case}: ours {t_ours * 1e3:.0f} ms, previous (torch) {t_old * 1e3:.0f} ms, sklearn {t_ref * 1e3:.0f} ms; "
            f"sklearn/ours {t_ref / t_ours:.1f}x, previous/ours {t_old / t_ours:.1f}x; max |diff| {diff:.1e}"
        )
        print(f"  {n} x {c} {line}", flush=True)
        figures.append(Figure("metrics_vs_sklearn", f"AP {n} x {c}, {case}", line.split(": ", 1)[1]))
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40_137)
    p.add_argument("--c", type=int, default=80)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    run(n=a.n, c=a.c, repeats=a.repeats)


if __name__ == "__main__":
    main()
