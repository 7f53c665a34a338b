"""The real extraction loop end to end, before (main's loop at the start of issue 15 phase 2) and
after (``csra_posthoc.extraction.run.compute_statistics`` with its options), vs the plain forward.

Data: the demo's mosaics (Fashion-MNIST items, JPEG, ``--canvas`` px, default 224 as the demo
writes them); model: EfficientNet-Lite0 with its packaged ImageNet weights, 224 px input,
``--workers`` DataLoader workers (default 2), batch ``--batch`` (default 16).

- ``before``: the previous loop, rebuilt here: workers run the model's full float32 transform,
  a default-collated float32 batch, ``no_grad``, NCHW weights, the caller's torch threads.
- ``after``: :func:`compute_statistics` with default options (uint8 batches normalised in the
  main process into channels_last, inference_mode, prefetch 4; torch keeps the caller's thread
  count unless a 0.1 s sample shows other processes busy, then cores - workers - their load).
- ``after, caller's threads``: the same with ``threads`` = the caller's count (isolates the
  thread policy); ``after, decode=draft`` and, with flags, ``--compile`` / ``--onnxruntime``.
- ``plain forward``: ``model(x)`` on a ready batch (no data loading, no statistics), with the
  caller's torch threads and with the loop's default: on a loaded machine the thread count
  alone moves the forward a lot, so the second is the fair ceiling for ``after``.

Every loop computes the statistics (``compute_statistics``: per-location scores, avg / max /
softmax averages, identity check). Repeats are interleaved; medians; images/s, ratio to the
plain forward (the issue's target: >= 0.9) and to ``before``; max |logits diff| vs ``before``
over the logits' scale.

Usage: python -m benchmarks.input_pipeline [--quick] [--n 192] [--repeats 2] [--workers 2]
       [--canvas 224] [--compile] [--onnxruntime]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from torch.utils.data import DataLoader

from benchmarks.decode_speed import write_mosaics
from csra_posthoc import ExtractOptions, load_model
from csra_posthoc.data.base import ImageDataset, LabelledImages, load_rgb
from csra_posthoc.extraction.batches import ForwardPass, forward_pass
from csra_posthoc.extraction.run import compute_statistics
from csra_posthoc.extraction.runtime import loop_threads, torch_threads
from csra_posthoc.heads.scoring import location_statistics


@torch.no_grad()
def before_loop(fp: ForwardPass, images: LabelledImages) -> torch.Tensor:
    """The loop as main ran it before phase 2 (float32 batches from the workers, no_grad, NCHW)."""
    adapter, opts = fp.adapter, fp.options
    loader = DataLoader(
        ImageDataset(images, fp.transform, fp.size), batch_size=opts.batch_size, num_workers=opts.workers, shuffle=False
    )
    out = []
    for _, x, _ in loader:
        s, logits = adapter.scores_from_backbone(adapter.forward_backbone(x).float())
        stats = location_statistics(s)
        float((stats["avg"] - logits).abs().max())
        out.append(logits)
    return torch.cat(out)


def after_loop(fp: ForwardPass, images: LabelledImages) -> torch.Tensor:
    return compute_statistics(fp, images)[0].logits


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="96 images, 1 repeat")
    p.add_argument("--n", type=int, default=192)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--canvas", type=int, default=224, help="mosaic size (the demo writes them at its input size, 224)")
    p.add_argument(
        "--compile", action="store_true", help="also time compile=True (its compile time is part of the pass)"
    )
    p.add_argument(
        "--onnxruntime", action="store_true", help="also time backend='onnxruntime' (export included in the pass)"
    )
    args = p.parse_args(argv)
    n, repeats = (96, 1) if args.quick else (args.n, args.repeats)
    adapter = load_model("efficientnet_lite0", pretrained=True).eval()
    quiet = Console(quiet=True)
    base = ExtractOptions(
        img_size=224, batch_size=args.batch, workers=args.workers, device="cpu", use_cache=False, quiet=True
    )
    caller_threads = torch.get_num_threads()
    variants: dict[str, tuple[Callable, ExtractOptions]] = {
        "before (main's loop)": (before_loop, base),
        "after (defaults)": (after_loop, base),
        "after, caller's threads": (after_loop, replace(base, threads=caller_threads)),
        "after, decode=draft": (after_loop, replace(base, decode="draft")),
    }
    if args.compile:
        variants["after, compile"] = (after_loop, replace(base, compile=True))
    if args.onnxruntime:
        variants["after, onnxruntime"] = (after_loop, replace(base, backend="onnxruntime"))
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_mosaics(Path(tmp), n, args.canvas)
        images = LabelledImages(
            "mosaics", "test", Path(tmp), [q.stem for q in paths], paths, torch.zeros(len(paths), 1), ["x"]
        )
        fps = {k: forward_pass(adapter, False, opts, quiet) for k, (_, opts) in variants.items()}
        ready = torch.stack([fps["before (main's loop)"].transform(load_rgb(q)) for q in paths[: args.batch]])
        ref = before_loop(fps["before (main's loop)"], images)  # also warms the page cache and the model
        scale = max(1.0, float(ref.abs().max()))
        diffs = {k: float((fn(fps[k], images) - ref).abs().max()) / scale for k, (fn, _) in variants.items()}
        times: dict[str, list[float]] = {k: [] for k in variants}
        loop_threads_ = loop_threads(base, torch.device("cpu")) or caller_threads
        plain: dict[int, list[float]] = {caller_threads: [], loop_threads_: []}
        steps = max(1, n // args.batch // 3)
        for _ in range(repeats):
            for threads in plain:
                with torch.no_grad(), torch_threads(threads):
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        adapter.model(ready)
                    plain[threads].append((time.perf_counter() - t0) / (steps * args.batch))
            for k, (fn, _) in variants.items():
                t0 = time.perf_counter()
                fn(fps[k], images)
                times[k].append(time.perf_counter() - t0)
        assert torch.get_num_threads() == caller_threads  # the loop gave the caller's threads back
    rates = {t: 1 / statistics.median(v) for t, v in plain.items()}
    plain_rate = rates[loop_threads_]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"{n} demo mosaics ({args.canvas} px JPEG) -> 224 px, EfficientNet-Lite0 (packaged weights), batch {args.batch}, "
          f"{args.workers} workers, caller's torch threads {caller_threads}, {os.cpu_count()} cores, load {load}; machine shared: ratios only")  # fmt: skip
    print(
        "plain forward model(x) on a ready batch: "
        + ", ".join(f"{r:.1f} img/s with {t} thread(s)" for t, r in rates.items())
    )
    print(
        f"{'loop':26s} {'img/s':>7s} {'x plain':>8s} {'x before':>9s} {'max rel diff':>13s}   (x plain: vs the plain forward with {loop_threads_} thread(s))"
    )
    before = n / statistics.median(times["before (main's loop)"])
    for k in variants:
        rate = n / statistics.median(times[k])
        print(f"{k:26s} {rate:7.1f} {rate / plain_rate:8.2f} {rate / before:9.2f} {diffs[k]:13.2e}")


if __name__ == "__main__":
    main()
