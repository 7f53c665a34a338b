"""Decode + resize speed per decode option, on real JPEGs, through 2 DataLoader workers.

Images: scikit-image's sample photos re-saved as JPEG at COCO-like sizes (640x480, 480x640,
640x427, 612x612) and the demo's Fashion-MNIST mosaics (grey items on black, saved as RGB JPEG,
quality 95) at the demo's own canvas (224) and at a COCO-like canvas (640). Options, each a full
pass over the set through persistent 2-worker loaders, repeats interleaved, median reported as
images/s and as a ratio to today's path (``pil``: ``load_rgb`` + the model's transform):

- ``pil-u8``: same pixels, uint8 HWC out of the workers, ToTensor + Normalize batched in the main process
- ``draft`` / ``draft-u8``: PIL JPEG draft mode (DCT downscale, only when the target is <= half the source)
- ``simplejpeg``: simplejpeg decode (libjpeg-turbo, pixel-equal to PIL's) + PIL resize, uint8 out
- ``tvio``: torchvision.io.decode_jpeg + tensor resize (antialias): NOT pixel-equal (max diff printed)

Usage: python -m benchmarks.decode_speed [--quick] [--n 160] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from csra_posthoc.data.base import load_rgb
from csra_posthoc.data.decode import image_loader, normalize_batch, pil_stage
from csra_posthoc.data.transforms import build_transform, transform_description
from csra_posthoc.models.base import DataConfig

COCO_SIZES = [(640, 480), (480, 640), (640, 427), (612, 612)]


def write_photos(folder: Path, n: int) -> list[Path]:
    """``n`` JPEGs (quality 90) cut from scikit-image's photos at COCO-like sizes."""
    from skimage import data

    pool = [
        Image.fromarray(f()).convert("RGB")
        for f in (
            data.astronaut,
            data.chelsea,
            data.coffee,
            data.rocket,
            data.immunohistochemistry,
            data.hubble_deep_field,
            data.retina,
        )
    ]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        im = pool[k % len(pool)]
        w, h = COCO_SIZES[k % len(COCO_SIZES)]
        scale = max(w / im.width, h / im.height) * rng.uniform(1.0, 1.3)
        big = im.resize((max(w, round(im.width * scale)), max(h, round(im.height * scale))), Image.BICUBIC)
        x, y = int(rng.integers(0, big.width - w + 1)), int(rng.integers(0, big.height - h + 1))
        path = folder / f"photo_{k:04d}.jpg"
        big.crop((x, y, x + w, y + h)).save(path, quality=90)
        paths.append(path)
    return paths


def write_mosaics(folder: Path, n: int, canvas: int) -> list[Path]:
    """``n`` demo mosaics (Fashion-MNIST, else scikit-learn digits) at ``canvas`` px, as the demo writes them."""
    from csra_posthoc.demo.mosaics import write_mosaic_voc
    from csra_posthoc.demo.sources import find_item_source

    voc = write_mosaic_voc(find_item_source(), folder, 0, n, canvas, seed=0)
    return sorted((voc / "JPEGImages").glob("*.jpg"))


class Files(Dataset):
    """``fn(path)`` per file; the batch is collated by the DataLoader as usual."""

    def __init__(self, paths: list[Path], fn: Callable[[Path], torch.Tensor]) -> None:
        self.paths, self.fn = paths, fn

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.fn(self.paths[i])


class Compose2:
    """``transform(loader(path))`` (picklable for the workers)."""

    def __init__(self, loader: Callable, transform: Callable) -> None:
        self.loader, self.transform = loader, transform

    def __call__(self, path: Path) -> torch.Tensor:
        return self.transform(self.loader(path))


class SimpleJpeg:
    """simplejpeg decode (full scale, or DCT-downscaled like draft when ``min_side``) + PIL resize."""

    def __init__(self, stage: Callable, min_side: int | None = None) -> None:
        self.stage, self.min_side = stage, min_side

    def __call__(self, path: Path) -> torch.Tensor:
        import simplejpeg

        raw = path.read_bytes()
        if self.min_side:
            pixels = simplejpeg.decode_jpeg(raw, colorspace="RGB", min_height=self.min_side, min_width=self.min_side)
        else:
            pixels = simplejpeg.decode_jpeg(raw, colorspace="RGB")
        return self.stage(Image.fromarray(pixels))


class TvIo:
    """torchvision.io.decode_jpeg + tensor resize (bicubic, antialias) + normalise: float CHW."""

    def __init__(self, desc: dict[str, Any]) -> None:
        self.desc = desc

    def __call__(self, path: Path) -> torch.Tensor:
        import torchvision.transforms.v2.functional as F
        from torchvision import io

        x = io.decode_jpeg(io.read_file(str(path)), mode=io.ImageReadMode.RGB)
        d = self.desc
        if d["kind"] == "square-resize":
            x = F.resize(
                x, [d["size"], d["size"]], interpolation=F.InterpolationMode(d["interpolation"]), antialias=True
            )
        else:
            x = F.center_crop(
                F.resize(x, d["resize"], interpolation=F.InterpolationMode(d["interpolation"]), antialias=True),
                d["size"],
            )
        return x.permute(1, 2, 0).contiguous()  # uint8 HWC like the other u8 options


def options(desc: dict[str, Any], have_simplejpeg: bool) -> dict[str, tuple[Callable, bool]]:
    """name -> (per-file function, whether it returns uint8 HWC to normalise in the main process)."""
    full, stage = build_transform(desc), pil_stage(desc)
    draft = image_loader("draft", desc)
    opts: dict[str, tuple[Callable, bool]] = {
        "pil": (Compose2(load_rgb, full), False),
        "pil-u8": (Compose2(load_rgb, stage), True),
        "draft": (Compose2(draft, full), False),
        "draft-u8": (Compose2(draft, stage), True),
        "tvio": (TvIo(desc), True),
    }
    if have_simplejpeg:
        opts["simplejpeg"] = (SimpleJpeg(stage), True)
        side = desc["resize"] if desc["kind"] == "center-crop" else desc["size"]
        opts["simplejpeg-draft"] = (SimpleJpeg(stage, side), True)
    return opts


def run_set(
    name: str, paths: list[Path], desc: dict[str, Any], workers: int, repeats: int, batch: int, have_sj: bool
) -> list[dict]:
    opts = options(desc, have_sj)
    mean, std = desc["mean"], desc["std"]
    # exactness vs today's path on the first images (workers=0)
    ref = torch.stack([opts["pil"][0](p) for p in paths[:8]])
    diffs = {}
    for key, (fn, u8) in opts.items():
        got = torch.stack([fn(p) for p in paths[:8]])
        got = normalize_batch(got, mean, std) if u8 else got
        diffs[key] = float((got - ref).abs().max())
    loaders = {
        key: DataLoader(
            Files(paths, fn),
            batch_size=batch,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None,
        )
        for key, (fn, _) in opts.items()
    }
    times: dict[str, list[float]] = {k: [] for k in opts}
    for rep in range(repeats + 1):  # the first pass warms the workers and the page cache
        for key, loader in loaders.items():
            u8 = opts[key][1]
            t0 = time.perf_counter()
            for x in loader:
                if u8:
                    normalize_batch(x, mean, std)
            if rep:
                times[key].append(time.perf_counter() - t0)
    rows = []
    base = statistics.median(times["pil"])
    for key in opts:
        t = statistics.median(times[key])
        rows.append({"set": name, "option": key, "img_s": len(paths) / t, "ratio": base / t, "max_diff": diffs[key]})
    del loaders
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="48 images, 2 repeats, 3 sets (~1 minute)")
    p.add_argument("--n", type=int, default=160)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args(argv)
    n, repeats = (48, 2) if args.quick else (args.n, args.repeats)
    try:
        import simplejpeg  # noqa: F401

        have_sj = True
    except ImportError:
        have_sj = False
    cfg = DataConfig()  # EfficientNet-Lite0's / ImageNet's: bicubic, crop_pct 0.875
    with tempfile.TemporaryDirectory() as tmp:
        photos = write_photos(Path(tmp) / "photos", n)
        sets = [("photos 224 square", photos, transform_description(cfg, 224, False)),
                ("photos 448 square", photos, transform_description(cfg, 448, False)),
                ("photos 224 crop", photos, transform_description(cfg, 224, True))][: 2 if args.quick else 3]  # fmt: skip
        mos640 = write_mosaics(Path(tmp) / "m640", n, 640)
        sets.append(("mosaics640 224 square", mos640, transform_description(cfg, 224, False)))
        if not args.quick:
            mos224 = write_mosaics(Path(tmp) / "m224", n, 224)
            sets.append(("mosaics224 224 square (demo)", mos224, transform_description(cfg, 224, False)))
            sets.append(("mosaics640 448 square", mos640, transform_description(cfg, 448, False)))
        print(f"{n} images a set, {args.workers} workers, batch {args.batch}, median of {repeats} interleaved passes; "
              f"torch threads {torch.get_num_threads()}; machine shared, ratios only")  # fmt: skip
        print(f"{'set':30s} {'option':17s} {'img/s':>8s} {'x pil':>7s} {'max|diff| vs pil':>17s}")
        for name, paths, desc in sets:
            for r in run_set(name, paths, desc, args.workers, repeats, args.batch, have_sj):
                print(f"{r['set']:30s} {r['option']:17s} {r['img_s']:8.1f} {r['ratio']:7.2f} {r['max_diff']:17.3g}")


if __name__ == "__main__":
    main()
