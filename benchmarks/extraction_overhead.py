"""Hooked extraction vs the plain forward pass, as a ratio measured in one run.

Extraction = backbone + per-location head + avg/max/softmax statistics for 7 temperatures +
the identity check; the plain forward is ``model(x)``. Usage:
python -m benchmarks.extraction_overhead [model] [img_size] [batch]
"""

from __future__ import annotations

import sys
import time

import torch

from csra_posthoc import load_model
from csra_posthoc.heads.scoring import location_statistics


def timed(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def main(model: str = "efficientnet_lite0", img_size: int = 224, batch: int = 16) -> None:
    adapter = load_model(model, random_init=True, num_classes=80)
    x = torch.randn(batch, 3, img_size, img_size)

    def hooked() -> None:
        s, logits = adapter(x)
        stats = location_statistics(s)
        float((stats["avg"] - logits).abs().max())

    plain = timed(lambda: adapter.model(x))
    ours = timed(hooked)
    print(
        f"{model} @ {img_size}px, batch {batch}, 80 classes: plain {batch / plain:.1f} img/s, extraction {batch / ours:.1f} img/s"
    )
    print(f"  extraction / plain forward time = {ours / plain:.3f}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "efficientnet_lite0", *(int(a) for a in args[1:]))
