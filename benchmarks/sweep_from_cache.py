"""The full sweep (every lam x every variant, every metric of the table) from cached statistics.

Multi-label COCO val-sized (40,137 x 80): the default grid (15 lams x 13 variants = 195 rows) and
the fine grid (101 lams x 8 variants: max and softmax T = 1..7); single-label ImageNet val-sized
(50,000 x 1000, top-1/top-5 every row): the default grid. Statistics are synthetic (the cost
depends on N and C only); the multi-label ones go through a real cache file, so the load is timed
too. "Previous" is the torch evaluation the sweep used before (``metrics.torch_reference``,
still the GPU path), timed on a few rows of the same run and given per row.

Usage: python -m benchmarks.sweep_from_cache [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import Figure
from csra_posthoc.cache.store import load_statistics, save_statistics
from csra_posthoc.defaults import DEFAULT_HEADS, DEFAULT_LAMS, DEFAULT_TEMPS
from csra_posthoc.evaluation.grid import attended_scores, grid_rows, sweep, variants
from csra_posthoc.evaluation.selection import select_half
from csra_posthoc.extraction.statistics import ClassStatistics, StatisticsInfo
from csra_posthoc.heads.scoring import CACHED_TEMPERATURES, csra_score, location_statistics
from csra_posthoc.metrics import torch_reference

FINE_LAMS = tuple(round(i / 100, 2) for i in range(101))
FINE_TEMPS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)


def synthetic(n: int, c: int, k: int = 49) -> ClassStatistics:
    """Multi-label statistics of random per-location scores (positives lifted at some locations)."""
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(n, c, generator=g) < 0.1).to(torch.int8)
    parts = []
    for start in range(0, n, 2048):
        lab = labels[start : start + 2048].float()
        s = torch.randn(lab.shape[0], c, k, generator=g) + 2 * lab[..., None] * (
            torch.rand(lab.shape[0], c, k, generator=g) < 0.2
        )
        parts.append(location_statistics(s))
    cat = {key: torch.cat([p[key] for p in parts]) for key in ("avg", "max", "attn")}
    return ClassStatistics(
        ids=[str(i) for i in range(n)],
        classes=[f"c{i}" for i in range(c)],
        labels=labels,
        temperatures=CACHED_TEMPERATURES,
        logits=cat["avg"].clone(),
        info=StatisticsInfo(model="bench", key="k"),
        **cat,
    )


def synthetic_single_label(n: int, c: int) -> ClassStatistics:
    """Single-label statistics drawn directly (per-location maps of 50,000 x 1000 x 49 would not fit)."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, c, n)
    avg = rng.standard_normal((n, c), dtype=np.float32)
    avg[np.arange(n), targets] += 2.0
    spread = rng.random((n, c), dtype=np.float32)
    attn = avg[..., None] + spread[..., None] * np.linspace(0.2, 1.0, len(CACHED_TEMPERATURES), dtype=np.float32)
    labels = np.zeros((n, c), dtype=np.int8)
    labels[np.arange(n), targets] = 1
    t = torch.from_numpy
    return ClassStatistics(
        ids=[str(i) for i in range(n)],
        classes=[f"c{i}" for i in range(c)],
        labels=t(labels),
        avg=t(avg),
        max=t(avg + spread),
        attn=t(attn),
        temperatures=CACHED_TEMPERATURES,
        logits=t(avg).clone(),
        info=StatisticsInfo(model="bench", key="k", task="single_label"),
    )


def previous_row_seconds(stats: ClassStatistics, rows: int) -> float:
    """Median seconds per row of the previous evaluation (torch ops), on ``rows`` (variant, lam) rows."""
    single = stats.info.single_label
    times = []
    for i, variant in enumerate(variants()[: rows + 1]):
        attended = attended_scores(stats, variant)
        scores = csra_score(stats.avg, attended, 0.1 * (i + 1))
        t0 = time.perf_counter()
        if single:
            torch_reference.singlelabel_metrics(scores, stats.labels)
        else:
            torch_reference.multilabel_metrics(scores, stats.labels)
        if i:  # the first is the warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed_sweep(stats: ClassStatistics, **grid: tuple) -> tuple[float, int]:
    t0 = time.perf_counter()
    result = sweep(stats, task=stats.info.task, fixed_lam=0.2, **grid)
    return time.perf_counter() - t0, len(result.rows)


def run(quick: bool = False) -> list[Figure]:
    figures: list[Figure] = []
    n, c = (4952, 20) if quick else (40_137, 80)
    name = "VOC07-size" if quick else "COCO-size"
    stats = synthetic(n, c)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.safetensors"
        save_statistics(stats, path)
        t0 = time.perf_counter()
        stats = load_statistics(path, key="k")
        t_load = time.perf_counter() - t0
    timed_sweep(stats, lams=(0.1,), temps=(), heads=())  # warm-up (imports, thread pool)
    t_default, rows = timed_sweep(stats)
    old = previous_row_seconds(stats, 2 if quick else 3)
    evaluated = rows - len(variants()) + 1  # lam = 0 rows reuse the baseline
    line = (
        f"{t_default:.1f} s ({1e3 * t_default / evaluated:.0f} ms/row; cache load {t_load:.2f} s); previous {1e3 * old:.0f} ms/row "
        f"= {old * evaluated:.0f} s est.; previous/ours {old * evaluated / t_default:.1f}x"
    )
    print(f"  {name} ({n} x {c}) default grid, {rows} rows: {line}", flush=True)
    figures.append(Figure("sweep_from_cache", f"{name} {n} x {c}, default grid ({rows} rows)", line))
    t0 = time.perf_counter()
    select_half(stats, single_label=False)
    t_half = time.perf_counter() - t0
    line = f"{t_half:.1f} s for 2 x {grid_rows(DEFAULT_LAMS, DEFAULT_TEMPS, DEFAULT_HEADS)} rows on half the images each (mAP only)"
    print(f"  {name} held-out choice on halves, default grid: {line}", flush=True)
    figures.append(Figure("sweep_from_cache", f"{name} {n} x {c}, held-out choice on halves (--select-on half)", line))
    if not quick:
        t_fine, rows = timed_sweep(stats, lams=FINE_LAMS, temps=FINE_TEMPS, heads=())
        evaluated = rows - 8 + 1
        line = f"{t_fine:.1f} s ({1e3 * t_fine / evaluated:.0f} ms/row); previous {old * evaluated:.0f} s est.; previous/ours {old * evaluated / t_fine:.1f}x"
        print(f"  {name} fine grid, {rows} rows: {line}", flush=True)
        figures.append(
            Figure("sweep_from_cache", f"{name} {n} x {c}, fine grid 101 lams x 8 variants ({rows} rows)", line)
        )
    del stats
    n = 5000 if quick else 50_000
    stats = synthetic_single_label(n, 1000)
    timed_sweep(stats, lams=(0.1,), temps=(), heads=())
    t_single, rows = timed_sweep(stats)
    old = previous_row_seconds(stats, 2)
    evaluated = rows - len(variants()) + 1
    line = f"{t_single:.1f} s ({1e3 * t_single / evaluated:.0f} ms/row); previous {1e3 * old:.0f} ms/row = {old * evaluated:.0f} s est.; previous/ours {old * evaluated / t_single:.1f}x"
    print(f"  ImageNet-size single-label ({n} x 1000) default grid, {rows} rows: {line}", flush=True)
    figures.append(
        Figure("sweep_from_cache", f"single-label {n} x 1000, default grid ({rows} rows, top-1/top-5)", line)
    )
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="VOC-size and 5,000 x 1000 only, no fine grid")
    run(quick=p.parse_args().quick)


if __name__ == "__main__":
    main()
