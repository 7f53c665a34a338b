"""The mAP effect of JPEG draft decoding and of a float16 cache on the demo (EfficientNet-Lite0 + probe + CSRA sweep).

Runs the demo's pipeline (its mosaics, its probe, its sweep: ``csra_posthoc.demo``'s choices)
on the same files with ``ExtractOptions(decode="pil")`` (the reference), ``decode="draft"`` and
``cache_dtype="float16"``, each with its own empty cache folder so nothing is reused. The demo
writes its mosaics at the input size (224), where draft never applies (the target is not at most
half the source), so the mosaics are written here at a COCO-like ``--canvas`` (default 640:
drafted at 1/2 for 224 px).

Usage: python -m benchmarks.draft_map [--quick] [--canvas 640] [--num-train 800] [--num-test 800]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console

from csra_posthoc.demo import DEMO_MODEL
from csra_posthoc.demo.mosaics import write_mosaic_voc
from csra_posthoc.demo.sources import find_item_source
from csra_posthoc.evaluation.run import run_sweep
from csra_posthoc.options import DataOptions, ExtractOptions, ModelSource, ProbeOptions, SweepOptions

RUNS = {"pil": {}, "draft": {"decode": "draft"}, "fp16 cache": {"cache_dtype": "float16"}}


def run(voc: Path, classes: list[str], img_size: int, workers: int, cache: Path, **extract: str) -> tuple[dict, float]:
    """The demo's sweep (probe on trainval, sweep on test) with ``extract`` as ExtractOptions fields."""
    t0 = time.perf_counter()
    data = run_sweep(
        ModelSource(DEMO_MODEL, pretrained=True), "voc2007", voc, data=DataOptions(classes=classes),
        options=ExtractOptions(img_size=img_size, workers=workers, cache_dir=cache, **extract),  # type: ignore[arg-type]
        sweep_options=SweepOptions(metrics=("CF1", "OF1")), probe=ProbeOptions(), console=Console(quiet=True),
    )  # fmt: skip
    return data, time.perf_counter() - t0


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
        for name, extract in RUNS.items():
            data, seconds = run(
                voc,
                list(source.classes),
                args.img_size,
                args.workers,
                Path(tmp) / f"cache-{name.replace(' ', '-')}",
                **extract,
            )
            results[name] = data
            print(f"{name:10s} baseline mAP {mean_ap(data, 'baseline'):.3f}  fixed-lam mAP {mean_ap(data, 'fixed'):.3f} "
                  f"(lam {data['fixed'].get('lam')})  best mAP {mean_ap(data, 'best'):.3f}  wall {seconds:.0f} s", flush=True)  # fmt: skip
        print(
            f"{source.name} mosaics at {args.canvas} px, {n_train} trainval / {n_test} test, {args.img_size} px input (mAP in percent):"
        )
        for name in ("draft", "fp16 cache"):
            d = {k: mean_ap(results[name], k) - mean_ap(results["pil"], k) for k in ("baseline", "fixed", "best")}
            print(
                f"  delta mAP ({name} - pil): baseline {d['baseline']:+.4f}, fixed {d['fixed']:+.4f}, best {d['best']:+.4f}"
            )


if __name__ == "__main__":
    main()
