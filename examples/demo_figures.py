"""The demo's figures, for the run a results file describes: the lam curve (with its bootstrap band)
and an attention figure (the probe's per-location scores over one test mosaic), plus the held-out
row and the 95 % intervals printed as JSON.

    csra-posthoc demo --out demo.json
    python examples/demo_figures.py --results demo.json --out-dir figures/

The statistics and the probe are the ones ``demo.json`` was measured with: found in the cache by the
results file's model, split, image count and weights / head fingerprints (never "the newest file"),
and checked against its baseline mAP; when they are not there the script stops with one line. It
writes ``demo_lam_curve.png`` and ``demo_attention.png`` into ``--out-dir`` (created; existing
figures of those names are replaced). Library calls only; from the command line, ``csra-posthoc demo
--plot curve.png`` draws the same curve and ``csra-posthoc attention`` the same kind of map.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

CURVE, ATTENTION = "demo_lam_curve.png", "demo_attention.png"


def find_statistics(results: dict[str, Any], cache: Path):
    """The cached statistics the results file was measured with (same model, split, images, weights,
    head and classes, and the same baseline mAP), or None."""
    from csra_posthoc.cache.store import load_statistics
    from csra_posthoc.evaluation.grid import paper_fixed_lam, sweep

    for path in sorted(cache.glob(f"{results['model']}-*.safetensors")):
        try:
            stats = load_statistics(path)
        except Exception:  # another release's or a damaged file: not ours
            continue
        info = stats.info
        same = (
            info.split == results["split"]
            and stats.num_images == results["num_images"]
            and list(stats.classes) == list(results["classes"])
            and info.weights_fingerprint == results["weights_fingerprint"]
            and info.head_fingerprint == results["head_fingerprint"]
        )
        if not same:
            continue
        result = sweep(stats, task=stats.info.task, fixed_lam=paper_fixed_lam(info.model))
        if abs(result.baseline.metrics[result.primary] - results["baseline"][result.primary]) < 1e-6:
            return stats, result, path
    return None


def find_probe(results: dict[str, Any], cache: Path) -> Path | None:
    """The probe head file whose weights hash to the results file's head fingerprint, or None."""
    from csra_posthoc.heads.head_file import load_head
    from csra_posthoc.models.checkpoint import state_dict_fingerprint

    for path in sorted(cache.glob("probe-*.safetensors")):
        try:
            head, _ = load_head(path)
        except Exception:
            continue
        if state_dict_fingerprint(head.state_dict()) == results["head_fingerprint"]:
            return path
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--results",
        type=Path,
        required=True,
        metavar="FILE",
        help="results JSON written by `csra-posthoc demo --out FILE`",
    )
    parser.add_argument("--out-dir", type=Path, required=True, metavar="DIR", help="folder for the figures (created)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the demo's cache (default: $CSRA_POSTHOC_CACHE or the user cache dir)",
    )
    parser.add_argument(
        "--image",
        type=Path,
        default=None,
        metavar="FILE",
        help="image of the attention figure (default: the first test mosaic)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="resamples of the band and the intervals (default: 1000)",
    )
    args = parser.parse_args(argv)

    from rich.console import Console

    from csra_posthoc.cache.store import resolve_cache_dir
    from csra_posthoc.errors import CSRAError
    from csra_posthoc.evaluation.bootstrap import bootstrap_deltas, bootstrap_json, lam_band
    from csra_posthoc.evaluation.grid import row_scores
    from csra_posthoc.evaluation.selection import select_half
    from csra_posthoc.options import CSRASettings, ModelSource
    from csra_posthoc.patched.attention import run_attention
    from csra_posthoc.report.plots import plot_lam_curve
    from csra_posthoc.report.results_file import ResultsFile
    from csra_posthoc.text import plain

    try:
        results = ResultsFile.read(
            args.results, required=("demo", "weights_fingerprint", "head_fingerprint", "classes"), param="results"
        ).to_json()
    except CSRAError as exc:
        print(f"demo_figures: {plain(str(exc))}", file=sys.stderr)
        return 2
    cache = resolve_cache_dir(args.cache_dir)
    found = find_statistics(results, cache)
    if found is None:
        print(
            f"demo_figures: no cached statistics in {plain(str(cache))} match {plain(str(args.results))} "
            f"(model {plain(results['model'])}, head {plain(str(results['head_fingerprint']))}): run the same demo again with that cache",
            file=sys.stderr,
        )
        return 2
    stats, result, stats_path = found
    probe = find_probe(results, cache)
    if probe is None:
        print(
            f"demo_figures: no probe head in {plain(str(cache))} has the head fingerprint of {plain(str(args.results))}",
            file=sys.stderr,
        )
        return 2
    image = args.image
    if image is None:
        image = Path(results["demo"]["data_dir"]) / "JPEGImages" / f"{stats.ids[0]}.jpg"
    if not image.is_file():
        print(f"demo_figures: image {plain(str(image))} not found (pass --image FILE)", file=sys.stderr)
        return 2

    args.out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    held = select_half(stats, single_label=False, seed=0)
    scores = {"best": row_scores(stats, result.best), "fixed": row_scores(stats, result.fixed), "held_out": held.parts}
    boot = bootstrap_deltas(stats.avg, scores, stats.labels, n=args.bootstrap, seed=0)
    band = lam_band(stats.avg, stats.max, stats.labels, sorted({r.lam for r in result.rows}), n=args.bootstrap, seed=0)
    seconds = time.perf_counter() - start
    title = f"{results['model']} + probe, {results['dataset']} {results['split']} ({stats.num_images} images)"
    plot_lam_curve(result, args.out_dir / CURVE, band=band, title=title)
    run_attention(
        image,
        args.out_dir / ATTENTION,
        ModelSource(results["model"], pretrained=True, head_file=probe),
        CSRASettings(lam=result.fixed.lam),
        img_size=results["demo"]["img_size"],
        transform="square",
        classes=list(results["classes"]),
        top_k=3,
        device="cpu",
        console=Console(stderr=True),  # stdout: the JSON summary only
    )
    best_variant_delta = result.best_variant.metrics["mAP"] - result.baseline.metrics["mAP"]
    summary = {
        "results": str(args.results),
        "statistics": str(stats_path),
        "probe": str(probe),
        "figures": [str(args.out_dir / CURVE), str(args.out_dir / ATTENTION)],
        "baseline": result.baseline.metrics["mAP"],
        "best": result.best.to_json(),
        "fixed": result.fixed.to_json(),
        "held_out": held.to_json(),
        "bootstrap": bootstrap_json(boot, args.bootstrap, 0),
        "best_variant": result.best_variant.to_json(),
        "held_out_minus_best_variant_delta": held.delta - best_variant_delta,
        "selection_and_bootstrap_seconds": round(seconds, 1),
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
