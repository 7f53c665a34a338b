"""Time the per-class bootstrap against the sweep's bootstrap alone, at COCO size (40,137 x 80, 1000 resamples, 2 threads).

Usage: python -m benchmarks.per_class_timing [N] [--quick]

``sweep`` runs :func:`csra_posthoc.evaluation.resampling.bootstrap_with_classes` in place of
:func:`csra_posthoc.evaluation.bootstrap.bootstrap_deltas`: one resampling gives the mAP intervals and every
class's. Both on the sweep's default set (``best``, ``fixed`` and the held-out row of
``--select-on half``, two parts); the ratio is what per-class intervals add (below 1: the shared
resampling also computes each mask's baseline AP once, where ``bootstrap_deltas`` recomputes it
for every variant). The two runs alternate, ``--repeats`` times each; medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from csra_posthoc.evaluation.bootstrap import bootstrap_deltas
from csra_posthoc.evaluation.resampling import bootstrap_with_classes
from csra_posthoc.evaluation.selection import half_masks


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("n", nargs="?", type=int, default=1000, help="resamples (default 1000)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="100 resamples, VOC size")
    args = p.parse_args(argv)
    n = 100 if args.quick else args.n
    images, classes, rate = (4952, 20, 0.07) if args.quick else (40137, 80, 0.036)
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(images, classes, generator=g) < rate).long()
    base = torch.randn(images, classes, generator=g) + 2 * labels
    variant = base + 0.3 * torch.randn(images, classes, generator=g)
    other = base + 0.3 * torch.randn(images, classes, generator=g)
    a, b = half_masks(images, 0)
    variants = {"best": other, "fixed": variant, "held_out": [(b, other), (a, variant)]}
    names = [f"c{k}" for k in range(classes)]
    load = os.getloadavg()[0]
    plain, with_classes = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        ref = bootstrap_deltas(base, variants, labels, n=n, seed=0)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        found, _ = bootstrap_with_classes(base, variants, labels, names, n=n, seed=0)
        with_classes.append(time.perf_counter() - t)
    same = all(abs(found[k].low - ref[k].low) < 1e-9 and abs(found[k].high - ref[k].high) < 1e-9 for k in ref)
    p0, p1 = statistics.median(plain), statistics.median(with_classes)
    print(
        f"{images}x{classes}, sweep's default set, {n} resamples: bootstrap_deltas {p0:.1f} s, bootstrap_with_classes "
        f"(mAP + per-class intervals) {p1:.1f} s, ratio {p1 / p0:.2f}; same mAP intervals: {same}; load avg {load:.1f} on {os.cpu_count()} cores",
        flush=True,
    )


if __name__ == "__main__":
    main()
