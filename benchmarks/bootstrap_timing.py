"""Time 1000 paired-bootstrap resamples on VOC-size and COCO-size synthetic caches (2 threads).

Usage: python -m benchmarks.bootstrap_timing [N] [--quick]

Two figures per size: one variant against the baseline (``fixed``), and what ``sweep`` runs by
default (``best``, ``fixed`` and the held-out row of ``--select-on half``, two parts).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from csra_posthoc.evaluation.bootstrap import bootstrap_deltas
from csra_posthoc.evaluation.selection import half_masks
from csra_posthoc.metrics import mean_average_precision


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("n", nargs="?", type=int, default=1000, help="resamples (default 1000)")
    p.add_argument("--quick", action="store_true", help="100 resamples, VOC size only")
    args = p.parse_args(argv)
    n = 100 if args.quick else args.n
    sizes = {"VOC-size": (4952, 20, 0.07), "COCO-size": (40137, 80, 0.036)}
    if args.quick:
        del sizes["COCO-size"]
    torch.set_num_threads(2)
    for name, (images, classes, rate) in sizes.items():
        g = torch.Generator().manual_seed(0)
        labels = (torch.rand(images, classes, generator=g) < rate).long()
        base = torch.randn(images, classes, generator=g) + 2 * labels
        variant = base + 0.3 * torch.randn(images, classes, generator=g)
        other = base + 0.3 * torch.randn(images, classes, generator=g)
        a, b = half_masks(images, 0)
        t = time.perf_counter()
        mean_average_precision(variant, labels)
        one = time.perf_counter() - t
        sets = {
            "one variant": {"fixed": variant},
            "sweep's default set": {"best": other, "fixed": variant, "held_out": [(b, other), (a, variant)]},
        }
        for label, variants in sets.items():
            load = os.getloadavg()[0]
            t, cpu = time.perf_counter(), time.process_time()
            bootstrap_deltas(base, variants, labels, n=n, seed=0)
            took, cpu = time.perf_counter() - t, time.process_time() - cpu
            print(
                f"{name} {images}x{classes}, {label}: {n} resamples {took:.1f} s (one full mAP {one:.3f} s, ratio {took / one:.0f}x; "
                f"CPU time {cpu:.1f} s; load avg {load:.1f} on {os.cpu_count()} cores)",
                flush=True,
            )


if __name__ == "__main__":
    main()
