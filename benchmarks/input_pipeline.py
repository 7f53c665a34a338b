"""Where extraction's time goes end to end, and prototypes of a faster extraction loop.

Part 1, the profile: one pass in the main process over the demo's mosaics (Fashion-MNIST items
on a 224 px canvas, JPEG, the demo's own files) timing each stage per image: open + decode,
resize, ToTensor + Normalize, collate, forward (EfficientNet-Lite0, real weights, 224 px,
batch 16) and the statistics. H2D is nil on CPU (no pin_memory / copy).

Part 2, the loops (each a full pass, repeats interleaved, medians, images/s and the ratio to
the plain forward on ready tensors): ``today`` (extraction's loop: ImageDataset + the model's
transform, float32 batches, a fresh 2-worker DataLoader per pass, no_grad) and prototypes that
change one thing at a time: persistent workers + prefetch 4, uint8 batches normalised in the
main process, channels_last + inference_mode, 1 worker instead of 2, and all of them together.
Numbers are the same as today's up to float32 rounding (checked: max rel diff printed).

Usage: python -m benchmarks.input_pipeline [--quick] [--n 192] [--repeats 2] [--canvas 224]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.decode_speed import Compose2, Files, write_mosaics
from csra_posthoc import load_model
from csra_posthoc.backends import prepare_backbone
from csra_posthoc.data.base import load_rgb
from csra_posthoc.data.decode import image_loader, normalize_batch, pil_stage
from csra_posthoc.data.transforms import build_transform, transform_description
from csra_posthoc.scoring import location_statistics


def profile(paths: list[Path], desc: dict, forward: Callable, batch: int) -> dict[str, float]:
    """Milliseconds per image of each stage, run one after the other in this process."""
    import torchvision.transforms as T

    resize = [t for t in build_transform(desc).transforms if not isinstance(t, (T.ToTensor, T.Normalize))]
    to_tensor, normalize = T.ToTensor(), T.Normalize(desc["mean"], desc["std"])
    acc = dict.fromkeys(("decode", "resize", "to_tensor+normalize", "collate", "forward", "statistics"), 0.0)
    for start in range(0, len(paths), batch):
        tensors = []
        for p in paths[start : start + batch]:
            t0 = time.perf_counter()
            im = load_rgb(p)
            t1 = time.perf_counter()
            for step in resize:
                im = step(im)
            t2 = time.perf_counter()
            tensors.append(normalize(to_tensor(im)))
            t3 = time.perf_counter()
            acc["decode"] += t1 - t0
            acc["resize"] += t2 - t1
            acc["to_tensor+normalize"] += t3 - t2
        t0 = time.perf_counter()
        x = torch.stack(tensors)
        t1 = time.perf_counter()
        with torch.no_grad():
            s, logits = forward(x)
            t2 = time.perf_counter()
            location_statistics(s)
            float((s.mean(-1) - logits).abs().max())
        t3 = time.perf_counter()
        acc["collate"] += t1 - t0
        acc["forward"] += t2 - t1
        acc["statistics"] += t3 - t2
    return {k: 1000 * v / len(paths) for k, v in acc.items()}


class Loop:
    """One extraction loop variant: a loader factory, a forward and how to finish a batch."""

    def __init__(
        self, make_loader: Callable[[], DataLoader], forward: Callable, u8: bool, channels_last: bool, inference: bool, desc: dict, threads: int | None = None
    ) -> None:
        self.make_loader, self.forward, self.u8, self.cl, self.inference, self.desc = make_loader, forward, u8, channels_last, inference, desc
        self.threads = threads  # the main process's torch threads while the loop runs (None: unchanged)
        self.loader: DataLoader | None = None

    def run(self) -> torch.Tensor:
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads or before)
        try:
            return self._run()
        finally:
            torch.set_num_threads(before)

    def _run(self) -> torch.Tensor:
        loader = self.make_loader() if self.loader is None else self.loader
        if loader.persistent_workers:
            self.loader = loader
        out = []
        with torch.inference_mode() if self.inference else torch.no_grad():
            for x in loader:
                if self.u8:
                    x = normalize_batch(x, self.desc["mean"], self.desc["std"], channels_last=self.cl)
                elif self.cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                s, logits = self.forward(x)
                stats = location_statistics(s)
                float((stats["avg"] - logits).abs().max())
                out.append(logits)
        return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="64 images, 1 repeat (~1-2 minutes)")
    p.add_argument("--n", type=int, default=192)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--canvas", type=int, default=224, help="mosaic size (the demo writes them at --img-size, 224)")
    args = p.parse_args(argv)
    n, repeats = (64, 1) if args.quick else (args.n, args.repeats)
    adapter = load_model("efficientnet_lite0", pretrained=True).eval()
    desc = transform_description(adapter.data_config, 224, single_label=False)
    eager = prepare_backbone(adapter)
    cl_forward = prepare_backbone(copy.deepcopy(adapter), channels_last=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_mosaics(Path(tmp), n, args.canvas)
        prof = profile(paths, desc, eager, args.batch)
        total = sum(prof.values())
        print(f"{n} demo mosaics ({args.canvas} px JPEG) -> 224 px, EfficientNet-Lite0 (packaged weights), batch {args.batch}, "
              f"{torch.get_num_threads()} torch threads; machine shared: ratios only")  # fmt: skip
        print("profile, one process, stages in sequence (ms per image, share):")
        for k, v in prof.items():
            print(f"  {k:22s} {v:7.2f}  {v / total:6.1%}")

        full, stage = build_transform(desc), pil_stage(desc)
        today_ds, u8_ds = Files(paths, Compose2(load_rgb, full)), Files(paths, Compose2(load_rgb, stage))
        draft_ds = Files(paths, Compose2(image_loader("draft", desc), stage))

        def loader(ds, workers=2, persistent=False, prefetch=2):
            return lambda: DataLoader(ds, batch_size=args.batch, num_workers=workers, persistent_workers=persistent, prefetch_factor=prefetch if workers else None)

        loops = {
            "today (2 workers, float32)": Loop(loader(today_ds), eager, False, False, False, desc),
            "workers 0 (no overlap)": Loop(loader(today_ds, workers=0), eager, False, False, False, desc),
            "1 worker": Loop(loader(today_ds, workers=1), eager, False, False, False, desc),
            "persistent + prefetch 4": Loop(loader(today_ds, persistent=True, prefetch=4), eager, False, False, False, desc),
            "uint8 batches": Loop(loader(u8_ds), eager, True, False, False, desc),
            "channels_last+inference_mode": Loop(loader(today_ds), cl_forward, False, True, True, desc),
            "all: u8+cl+inf+persistent": Loop(loader(u8_ds, persistent=True, prefetch=4), cl_forward, True, True, True, desc),
            "all, 1 worker": Loop(loader(u8_ds, workers=1, persistent=True, prefetch=4), cl_forward, True, True, True, desc),
            "all, 1 worker, 1 torch thread": Loop(loader(u8_ds, workers=1, persistent=True, prefetch=4), cl_forward, True, True, True, desc, threads=1),
            "all, 2 workers, 1 torch thread": Loop(loader(u8_ds, persistent=True, prefetch=4), cl_forward, True, True, True, desc, threads=1),
            "all + draft (if it applies)": Loop(loader(draft_ds, persistent=True, prefetch=4), cl_forward, True, True, True, desc),
        }
        ready = torch.stack([full(load_rgb(q)) for q in paths[: args.batch]])
        ref = loops["today (2 workers, float32)"].run()
        scale = max(1.0, float(ref.abs().max()))
        diffs = {k: float((loop.run() - ref).abs().max()) / scale for k, loop in loops.items()}  # also warms persistent workers
        times: dict[str, list[float]] = {k: [] for k in loops}
        plain: list[float] = []
        for _ in range(repeats):
            with torch.no_grad():
                t0 = time.perf_counter()
                for _ in range(max(1, n // args.batch // 3)):
                    adapter.model(ready)
                plain.append((time.perf_counter() - t0) / (max(1, n // args.batch // 3) * args.batch))
            for k, loop in loops.items():
                t0 = time.perf_counter()
                loop.run()
                times[k].append(time.perf_counter() - t0)
        plain_rate = 1 / statistics.median(plain)
        print(f"\nplain forward model(x) on a ready batch: {plain_rate:.1f} img/s")
        print(f"{'loop':32s} {'img/s':>7s} {'x plain':>8s} {'x today':>8s} {'max rel diff':>13s}")
        today = n / statistics.median(times["today (2 workers, float32)"])
        for k in loops:
            rate = n / statistics.median(times[k])
            print(f"{k:32s} {rate:7.1f} {rate / plain_rate:8.2f} {rate / today:8.2f} {diffs[k]:13.2e}")


if __name__ == "__main__":
    main()
