"""The full default sweep (every lam x every variant) from cached statistics, VOC- and COCO-sized.

Statistics are synthetic (the sweep's cost depends on N and C only), saved to and loaded from a
real cache file, so the load is timed too. Usage: python benchmarks/sweep_from_cache.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from csra_posthoc.cache import load_statistics, save_statistics
from csra_posthoc.lam_sweep import DEFAULT_HEADS, DEFAULT_LAMS, DEFAULT_TEMPS, sweep, variants
from csra_posthoc.scoring import CACHED_TEMPERATURES, location_statistics
from csra_posthoc.statistics import ClassStatistics


def synthetic(n: int, c: int, k: int = 49) -> ClassStatistics:
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(n, c, generator=g) < 0.1).to(torch.int8)
    parts = []
    for start in range(0, n, 2048):
        lab = labels[start : start + 2048].float()
        s = torch.randn(lab.shape[0], c, k, generator=g) + 2 * lab[..., None] * (torch.rand(lab.shape[0], c, k, generator=g) < 0.2)
        parts.append(location_statistics(s))
    cat = {key: torch.cat([p[key] for p in parts]) for key in ("avg", "max", "attn")}
    return ClassStatistics(
        ids=[str(i) for i in range(n)], classes=[f"c{i}" for i in range(c)], labels=labels,
        temperatures=CACHED_TEMPERATURES, logits=cat["avg"].clone(), meta={"model": "bench", "key": "k"}, **cat,
    )


def main() -> None:
    n_rows = len(variants(DEFAULT_TEMPS, DEFAULT_HEADS)) * len(DEFAULT_LAMS)
    for n, c, name in ((4952, 20, "VOC2007 test"), (40137, 80, "COCO val2014")):
        stats = synthetic(n, c)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "s.safetensors"
            save_statistics(stats, path)
            t0 = time.perf_counter()
            loaded = load_statistics(path, key="k")
            t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        sweep(loaded)
        t_sweep = time.perf_counter() - t0
        print(f"{name} ({n} x {c}): load {t_load:.2f} s, full default sweep ({n_rows} rows) {t_sweep:.1f} s = {1000 * t_sweep / n_rows:.0f} ms/row")


if __name__ == "__main__":
    main()
