"""Images/s for 1 vs N gloo ranks on CPU, and the gather's share of the wall time.

    python benchmarks/distributed_scaling.py --ranks 1,2 --images 96 --img-size 64

Each setting runs under ``torchrun --standalone --nproc-per-node W``: every rank takes its
:func:`~csra_posthoc.extraction.distributed.shard` of the same fixture (scikit-image photos resized to
``--img-size``, cycled to ``--images``), runs a tiny timm model's backbone, turns the feature
map into per-location class scores and their avg / max statistics (as the extraction does),
with a status collective after every batch (``--status batch``, the loop phase 2 wires into the
extraction; the share it takes is printed), and
:func:`~csra_posthoc.extraction.distributed.gather_tensors` them to rank 0. Rank 0 times the loop from
a barrier to the end of the gather, so the launcher's start-up is not counted, and checks that
the gathered statistics equal the 1-rank run's. Ranks share the machine's cores
(``--threads``, default cores // W each): on a loaded or small machine the ratio says more
about contention than about the code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fixture(n: int, size: int):
    """``n`` real photos (scikit-image's samples, cycled), ``(n, 3, size, size)`` float, normalised."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from skimage import data

    photos = [
        data.astronaut(),
        data.coffee(),
        data.chelsea(),
        data.rocket(),
        data.immunohistochemistry(),
        data.hubble_deep_field(),
    ]
    base = torch.stack(
        [
            F.interpolate(
                torch.from_numpy(np.ascontiguousarray(p)).permute(2, 0, 1)[None].float() / 255,
                size=(size, size),
                mode="bilinear",
                antialias=True,
            )[0]
            for p in photos
        ]
    )
    base = (base - base.mean()) / base.std()
    return base[torch.arange(n) % len(photos)].contiguous()


def worker(args: argparse.Namespace) -> None:
    import timm
    import torch

    from csra_posthoc.extraction.distributed import (
        check_status,
        distributed,
        gather_tensors,
        lockstep_steps,
        shard_for,
    )
    from csra_posthoc.heads.scoring import location_statistics

    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    with distributed("cpu") as ctx:
        torch.manual_seed(0)  # same random weights on every rank
        model = timm.create_model(args.model, pretrained=False, num_classes=args.classes).eval()
        fc = model.get_classifier()
        images = fixture(args.images, args.img_size)
        part = shard_for(ctx, args.images)
        mine = images[part.start : part.stop]
        with torch.no_grad():
            model.forward_features(mine[: args.batch_size])  # warm-up, not timed
            if ctx.active:
                torch.distributed.barrier()
            start = time.perf_counter()
            parts: dict[str, list] = {"avg": [], "max": [], "attn": [], "logits": []}
            status_s = 0.0
            for step in range(lockstep_steps(part, args.batch_size)):  # phase 2's loop: a status check per batch
                error = None
                try:
                    batch = mine[step * args.batch_size : (step + 1) * args.batch_size]
                    if len(batch):
                        fmap = model.forward_features(batch)  # (B, D, h, w)
                        scores = torch.einsum("bdk,cd->bck", fmap.flatten(2), fc.weight) + fc.bias[None, :, None]
                        stats = location_statistics(scores)
                        for name in ("avg", "max", "attn"):
                            parts[name].append(stats[name])
                        parts["logits"].append(fc(fmap.mean((2, 3))))
                except Exception as exc:
                    error = exc
                if args.status == "batch" or step == lockstep_steps(part, args.batch_size) - 1:
                    tick = time.perf_counter()
                    check_status("extract", ctx, error)
                    status_s += time.perf_counter() - tick
                elif error is not None:
                    raise error
            computed = time.perf_counter()
            gathered = gather_tensors({k: torch.cat(v) for k, v in parts.items()}, part, ctx)
            done = time.perf_counter()
        if ctx.is_main:
            assert gathered is not None
            torch.save(gathered, Path(args.out).with_suffix(".pt"))
            Path(args.out).write_text(
                json.dumps(
                    {
                        "wall_s": done - start,
                        "gather_s": done - computed,
                        "status_s": status_s,
                        "threads": torch.get_num_threads(),
                    }
                )
            )


def real_worker(args: argparse.Namespace) -> None:
    """The shipped loop: ``compute_statistics`` (DataLoader decoding JPEGs of a VOC fixture, the
    shards of whole batches, the per-batch status check, the gather) under this launch."""
    import torch
    from rich.console import Console

    from csra_posthoc import load_dataset, load_model
    from csra_posthoc.extraction.batches import forward_pass
    from csra_posthoc.extraction.distributed import distributed
    from csra_posthoc.extraction.run import compute_statistics
    from csra_posthoc.options import ExtractOptions

    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    with distributed("cpu") as ctx:
        images = load_dataset("voc2007", args.data_dir)
        adapter = load_model(args.model, random_init=True, num_classes=len(images.classes))
        opts = ExtractOptions(
            img_size=args.img_size, batch_size=args.batch_size, device="cpu", quiet=True, use_cache=False
        )
        fp = forward_pass(adapter, images.single_label, opts, Console(quiet=True))
        with torch.no_grad():
            adapter.forward_backbone(torch.zeros(2, 3, args.img_size, args.img_size))  # warm-up, not timed
        if ctx.active:
            torch.distributed.barrier()
        start = time.perf_counter()
        stats, _, _ = compute_statistics(fp, images, ctx)
        done = time.perf_counter()
        if ctx.is_main:
            assert stats is not None
            torch.save(
                {k: getattr(stats, k) for k in ("avg", "max", "attn", "logits")}, Path(args.out).with_suffix(".pt")
            )
            Path(args.out).write_text(
                json.dumps(
                    {
                        "wall_s": done - start,
                        "gather_s": float("nan"),
                        "status_s": float("nan"),
                        "threads": torch.get_num_threads(),
                    }
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="1,2", help="comma-separated world sizes to compare")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per rank (0: cores // ranks)")
    parser.add_argument(
        "--status", choices=("batch", "end"), default="batch", help="status collective after every batch or once"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting; the fastest counts")
    parser.add_argument(
        "--loop",
        choices=("synthetic", "real"),
        default="synthetic",
        help="synthetic: in-memory photos, gather / status shares timed; real: the shipped compute_statistics on a VOC fixture of JPEGs",
    )
    parser.add_argument("--quick", action="store_true", help="48 images, one run per setting")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 48, 1
    if args.worker:
        (real_worker if args.loop == "real" else worker)(args)
        return

    import torch

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        if args.loop == "real":
            from csra_posthoc.data.fixtures import random_voc_annotations, write_voc

            write_voc(
                Path(tmp) / "voc", random_voc_annotations(args.images), size=(2 * args.img_size, 2 * args.img_size)
            )
        for world in [int(w) for w in args.ranks.split(",")]:
            best = None
            for rep in range(args.repeats):
                out = Path(tmp) / f"w{world}_{rep}.json"
                cmd = [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc-per-node={world}",
                    __file__,
                    "--worker",
                    f"--out={out}",
                ]
                cmd += [
                    f"--images={args.images}",
                    f"--img-size={args.img_size}",
                    f"--batch-size={args.batch_size}",
                    f"--model={args.model}",
                    f"--classes={args.classes}",
                    f"--threads={args.threads}",
                    f"--status={args.status}",
                    f"--loop={args.loop}",
                    f"--data-dir={Path(tmp) / 'voc'}",
                ]
                subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                result = json.loads(out.read_text())
                if best is None or result["wall_s"] < best["wall_s"]:
                    best = result
                gathered = torch.load(out.with_suffix(".pt"))
                if reference is None:
                    reference = gathered
                diff = max(float((gathered[k] - reference[k]).abs().max()) for k in reference)
                best["max_abs_diff_vs_first"] = max(diff, best.get("max_abs_diff_vs_first", 0.0))
            assert best is not None
            rows.append({"ranks": world, **best, "images_per_s": args.images / best["wall_s"]})
    base = rows[0]["images_per_s"]
    print(
        f"{args.model} at {args.img_size} px, {args.images} images, batch {args.batch_size}, CPU gloo, {os.cpu_count()} cores (shared machine: noisy)"
    )
    print(
        f"loop: {args.loop}; status check: {'every batch' if args.status == 'batch' or args.loop == 'real' else 'once, after the loop'}"
    )
    print(
        f"{'ranks':>5} {'threads/rank':>12} {'img/s':>8} {'speed-up':>8} {'gather %':>8} {'status %':>8} {'max |diff|':>10}"
    )
    for r in rows:
        gather, status = (100 * r[k] / r["wall_s"] for k in ("gather_s", "status_s"))
        print(
            f"{r['ranks']:>5} {r['threads']:>12} {r['images_per_s']:>8.1f} {r['images_per_s'] / base:>8.2f} "
            f"{gather:>8.2f} {status:>8.2f} {r['max_abs_diff_vs_first']:>10.2e}"
        )


if __name__ == "__main__":
    main()
