"""The lam curve (with its bootstrap band), the held-out figure and an attention figure of the demo.

Run ``csra-posthoc demo`` first (it caches the statistics and the probe), then
``python examples/demo_figures.py [OUT_DIR]``. Library calls only; from the command line,
``csra-posthoc demo --plot curve.png`` (or ``sweep ... --plot``) draws the same curve, with the band
from at most 200 resamples, and prints the held-out row and the intervals.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from csra_posthoc.bootstrap import bootstrap_deltas, bootstrap_json, lam_band
from csra_posthoc.cache import load_statistics, resolve_cache_dir
from csra_posthoc.lam_sweep import paper_fixed_lam, row_scores, sweep
from csra_posthoc.plots import plot_lam_curve
from csra_posthoc.selection import select_half


def main(out_dir: Path) -> None:
    cache = resolve_cache_dir(None)
    found = sorted(cache.glob("efficientnet_lite0-fashion-mnist-mosaics-test-*.safetensors"), key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit(f"no demo statistics in {cache}: run `csra-posthoc demo` first")
    stats = load_statistics(found[-1])
    result = sweep(stats, task=stats.info.task, fixed_lam=paper_fixed_lam(stats.info.model))
    start = time.perf_counter()
    held = select_half(stats, single_label=False, seed=0)
    boot = bootstrap_deltas(
        stats.avg,
        {"best": row_scores(stats, result.best), "fixed": row_scores(stats, result.fixed), "held_out": held.parts},
        stats.labels,
        n=1000,
        seed=0,
    )
    band = lam_band(stats.avg, stats.max, stats.labels, sorted({r.lam for r in result.rows}), n=1000, seed=0)
    seconds = time.perf_counter() - start
    best_variant_delta = result.best_variant.metrics["mAP"] - result.baseline.metrics["mAP"]
    title = f"efficientnet_lite0 + probe, Fashion-MNIST mosaics test ({stats.num_images} images)"
    plot_lam_curve(result, out_dir / "demo_lam_curve.png", band=band, title=title)
    summary = {
        "baseline": result.baseline.metrics["mAP"],
        "best": result.best.to_json(),
        "fixed": result.fixed.to_json(),
        "held_out": held.to_json(),
        "bootstrap": bootstrap_json(boot, 1000, 0),
        "best_variant": result.best_variant.to_json(),
        "held_out_minus_best_variant_delta": held.delta - best_variant_delta,
        "selection_and_bootstrap_seconds": round(seconds, 1),
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/figures"))
