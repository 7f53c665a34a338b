"""What a float16 cache (``--cache-dtype float16``) changes in an ImageNet-size single-label sweep.

The statistics of 50,000 x 1000 (``sweep_from_cache.synthetic_single_label``: logit-scale scores)
are rounded to float16 as a float16 cache stores them (``extraction.round_to_half``), and both
versions are swept over the default grid: the largest change of top-1 / top-5 over every row
(195 rows), in percent points. The multi-label mAP change on real weights and images is
``benchmarks.draft_map``'s.

Usage: python -m benchmarks.fp16_top1 [--quick]
"""

from __future__ import annotations

import argparse
import copy

from benchmarks.sweep_from_cache import synthetic_single_label
from csra_posthoc.evaluation.grid import sweep
from csra_posthoc.extraction.run import round_to_half


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="5,000 images instead of 50,000")
    n = 5000 if p.parse_args(argv).quick else 50_000
    full = synthetic_single_label(n, 1000)
    half = copy.deepcopy(full)
    round_to_half(half, "bench")
    half.info.cache_dtype = "float16"
    a, b = (sweep(s, task="single_label", fixed_lam=0.2) for s in (full, half))
    worst = {
        k: max(abs(ra.metrics[k] - rb.metrics[k]) for ra, rb in zip(a.rows, b.rows, strict=True))
        for k in ("top1", "top5")
    }
    print(f"{n} x 1000 single-label statistics, default grid ({len(a.rows)} rows): float16 cache vs float32")
    print(
        f"  max |delta| over the rows: top-1 {worst['top1']:.4f}, top-5 {worst['top5']:.4f} (percent points; one image = {100 / n:.4f})"
    )
    top1 = f"baseline top-1 {a.baseline.metrics['top1']:.3f} vs {b.baseline.metrics['top1']:.3f}"
    print(f"  {top1} (a hard synthetic set: close calls flip more often than on a trained model's logits)")


if __name__ == "__main__":
    main()
