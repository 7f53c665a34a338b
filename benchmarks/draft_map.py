"""The mAP effect of JPEG draft decoding on the demo (EfficientNet-Lite0 + probe + CSRA sweep).

Runs the demo's pipeline (its mosaics, its probe, its sweep: ``csra_posthoc.demo``'s choices)
twice on the same files, once decoding with ``decode="pil"`` and once with ``decode="draft"``,
each with its own empty cache folder so nothing is reused. The demo writes its mosaics at the
input size (224), where draft never applies (the target is not at most half the source), so
the mosaics are written here at a COCO-like ``--canvas`` (default 640: drafted at 1/2 for 224 px).

Usage: python -m benchmarks.draft_map [--quick] [--canvas 640] [--num-train 800] [--num-test 800]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console

from csra_posthoc import extraction
from csra_posthoc.api import run_sweep
from csra_posthoc.data.base import ImageDataset
from csra_posthoc.data.decode import image_loader
from csra_posthoc.data.mosaics import find_item_source, write_mosaic_voc
from csra_posthoc.data.transforms import transform_description
from csra_posthoc.demo import DEMO_MODEL
from csra_posthoc.options import DataOptions, ExtractOptions


def with_decode(decode: str, img_size: int) -> type[ImageDataset]:
    """ImageDataset whose whole images are decoded by ``decode`` (phase 2 passes it as an option)."""
    from csra_posthoc.adapters.base import DataConfig

    loader = image_loader(decode, transform_description(DataConfig(), img_size, single_label=False))

    class Decoded(ImageDataset):
        def __init__(self, images, transform, size) -> None:
            super().__init__(images, transform, size, loader=loader)

    return Decoded


def run(voc: Path, classes: list[str], decode: str, img_size: int, workers: int, cache: Path) -> tuple[dict, float]:
    original = extraction.ImageDataset
    extraction.ImageDataset = with_decode(decode, img_size)  # the probe's and the test split's passes
    try:
        t0 = time.perf_counter()
        data = run_sweep(
            DEMO_MODEL, "voc2007", voc, pretrained=True, head="probe", data=DataOptions(classes=classes),
            options=ExtractOptions(img_size=img_size, workers=workers, cache_dir=cache), metrics=("CF1", "OF1"),
            console=Console(quiet=True),
        )  # fmt: skip
        return data, time.perf_counter() - t0
    finally:
        extraction.ImageDataset = original


def mean_ap(data: dict, which: str) -> float:
    """mAP (percent) of the baseline (a metrics dict) or of a sweep row (metrics under "metrics")."""
    entry = data[which]
    return float(entry["metrics"]["mAP"] if "metrics" in entry else entry["mAP"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="200 + 200 images")
    p.add_argument("--canvas", type=int, default=640)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--num-train", type=int, default=800)
    p.add_argument("--num-test", type=int, default=800)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    n_train, n_test = (200, 200) if args.quick else (args.num_train, args.num_test)
    source = find_item_source()
    with tempfile.TemporaryDirectory() as tmp:
        voc = write_mosaic_voc(source, Path(tmp) / "data", n_train, n_test, args.canvas, seed=0)
        results = {}
        for decode in ("pil", "draft"):
            data, seconds = run(voc, list(source.classes), decode, args.img_size, args.workers, Path(tmp) / f"cache-{decode}")
            results[decode] = data
            print(f"{decode:6s} baseline mAP {mean_ap(data, 'baseline'):.3f}  fixed-lam mAP {mean_ap(data, 'fixed'):.3f} "
                  f"(lam {data['fixed'].get('lam')})  best mAP {mean_ap(data, 'best'):.3f}  wall {seconds:.0f} s", flush=True)  # fmt: skip
        d = {k: mean_ap(results["draft"], k) - mean_ap(results["pil"], k) for k in ("baseline", "fixed", "best")}
        print(f"{source.name} mosaics at {args.canvas} px, {n_train} trainval / {n_test} test, {args.img_size} px input: "
              f"delta mAP (draft - pil): baseline {d['baseline']:+.3f}, fixed {d['fixed']:+.3f}, best {d['best']:+.3f} (mAP in percent)")  # fmt: skip


if __name__ == "__main__":
    main()
