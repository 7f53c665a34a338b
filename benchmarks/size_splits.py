"""What the size / clutter splits add to a sweep, at COCO size (40,137 x 80, 1000 resamples).

Usage: python -m benchmarks.size_splits [--quick] [--threads T]

The sweep's time is what ``run_sweep`` does after the statistics are loaded: the grid
(:func:`csra_posthoc.evaluation.grid.sweep`, default lams / temps / heads), the held-out row and
the bootstrap (:func:`csra_posthoc.evaluation.uncertainty.assess`) and the thresholds. The same
sweep is then run with the splits (``assess(..., splits=...)``: they come from the bootstrap's own
resamples and counts), with COCO-like boxes (1-3 instances per positive, relative areas log-uniform
over 0.1 % .. 60 %; the cost does not depend on the areas). Prints both, the added time (the second
minus the first, plus assigning the bins) and its ratio to the sweep's (issue #23: at most 0.5).
Each is the shorter of ``--repeat`` runs, alternating. Statistics are synthetic (the cost depends on
N, C and the positive rate).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import torch

from benchmarks.sweep_from_cache import synthetic
from csra_posthoc.evaluation.calibration import sweep_thresholds
from csra_posthoc.evaluation.grid import paper_fixed_lam, sweep
from csra_posthoc.evaluation.object_size import assign_splits
from csra_posthoc.evaluation.results import Splits, SweepResult
from csra_posthoc.evaluation.uncertainty import assess
from csra_posthoc.options import SweepOptions


def coco_like_boxes(
    labels: np.ndarray, seed: int = 0
) -> tuple[list[dict[int, list[tuple[float, float, float, float]]]], list[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    boxes: list[dict[int, list[tuple[float, float, float, float]]]] = []
    for row in labels:
        image: dict[int, list[tuple[float, float, float, float]]] = {}
        for k in np.flatnonzero(row == 1):
            sides = np.sqrt(np.exp(rng.uniform(np.log(0.001), np.log(0.6), int(rng.integers(1, 4)))))[
                :, None
            ] * np.array([[640.0, 480.0]])
            image[int(k)] = [(0.0, 0.0, float(w), float(h)) for w, h in sides]
        boxes.append(image)
    return boxes, [(640, 480)] * len(labels)


def timed_sweep(stats: Any, grid: SweepOptions, splits: Splits | None) -> tuple[float, SweepResult]:
    t = time.perf_counter()
    result = sweep(
        stats,
        task="multi_label",
        fixed_lam=paper_fixed_lam("bench"),
        lams=grid.lams,
        temps=grid.temps,
        heads=grid.heads,
    )
    assess(result, stats, grid, splits=splits)
    result.thresholds = sweep_thresholds(result, stats, grid.seed)
    return time.perf_counter() - t, result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="VOC size (4,952 x 20), 100 resamples")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="runs of each, alternating; the shortest counts")
    args = p.parse_args(argv)
    n, c, resamples = (4952, 20, 100) if args.quick else (40137, 80, 1000)
    torch.set_num_threads(args.threads)
    stats = synthetic(n, c)
    grid = SweepOptions(bootstrap=resamples)
    boxes, sizes = coco_like_boxes(stats.labels.numpy())
    plain_s, with_s, assign_s = [], [], []
    for _ in range(max(1, args.repeat)):
        plain_s.append(timed_sweep(stats, grid, None)[0])
        t = time.perf_counter()
        splits = assign_splits(stats.labels, boxes, sizes)
        assign_s.append(time.perf_counter() - t)
        seconds, result = timed_sweep(stats, grid, splits)
        with_s.append(seconds)
    assert result.size_splits is not None
    sweep_s, added = min(plain_s), min(with_s) + min(assign_s) - min(plain_s)
    rows = sorted(result.size_splits.mean)
    print(
        f"{n}x{c}, {resamples} resamples, rows {rows}: sweep (grid + held-out + bootstrap + thresholds) {sweep_s:.1f} s, "
        f"with the size / clutter splits {min(with_s):.1f} s (+ {min(assign_s):.1f} s assigning the bins): "
        f"added {added:.1f} s, ratio {added / sweep_s:.2f}; {args.threads} threads, load avg {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores",
        flush=True,
    )


if __name__ == "__main__":
    main()
