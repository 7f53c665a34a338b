"""Multi-label mosaics of real single-object images, written as a VOC-layout dataset.

The offline demo's data: 1-4 items of random size at random places on a black canvas; the
classes present are the labels. Items for ``trainval`` come from the source's training images
and items for ``test`` from its test images (:mod:`.sources`), so no item is seen by both a probe
and the evaluation.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .sources import ItemSource

ITEM_SCALE = (0.2, 0.45)  # item side as a fraction of the canvas side


def _mosaic(
    items: list[np.ndarray], canvas: int, rng: np.random.Generator, scale: tuple[float, float] = ITEM_SCALE
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Paste items (brightest wins where they overlap); returns the image and each item's box."""
    out = np.zeros((canvas, canvas), dtype=np.uint8)
    boxes = []
    for item in items:
        side = int(rng.uniform(*scale) * canvas)
        patch = np.asarray(Image.fromarray(item).resize((side, side), Image.Resampling.BILINEAR))
        x, y = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
        out[y : y + side, x : x + side] = np.maximum(out[y : y + side, x : x + side], patch)
        boxes.append((x, y, x + side, y + side))
    return out, boxes


def mosaic_voc_written(root: Path) -> Path | None:
    """``root/VOC2007`` when :func:`write_mosaic_voc` has completed there (it renames into place last)."""
    final = root / "VOC2007"
    return final if (final / "ImageSets" / "Main" / "test.txt").is_file() else None


def write_mosaic_voc(
    source: ItemSource, root: Path, num_trainval: int, num_test: int, canvas: int, seed: int = 0
) -> Path:
    """Write ``root/VOC2007`` (JPEGImages, Annotations, ImageSets/Main/{trainval,test}.txt) atomically."""
    final = root / "VOC2007"
    if mosaic_voc_written(root):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".VOC2007.", dir=root))
    try:
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (tmp / sub).mkdir(parents=True)
        rng = np.random.default_rng(seed)
        for split, count, item_split in (("trainval", num_trainval, "train"), ("test", num_test, "test")):
            pool, pool_labels = source.images[item_split], source.labels[item_split]
            ids = []
            for i in range(count):
                image_id = f"{split}_{i:05d}"
                picks = rng.choice(len(pool), size=int(rng.integers(1, 5)), replace=False)
                pixels, boxes = _mosaic([pool[p] for p in picks], canvas, rng)
                Image.fromarray(pixels).convert("RGB").save(tmp / "JPEGImages" / f"{image_id}.jpg", quality=95)
                objects = "".join(
                    f"<object><name>{source.classes[pool_labels[p]]}</name><difficult>0</difficult>"
                    f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                    for p, b in zip(picks, boxes, strict=True)
                )
                (tmp / "Annotations" / f"{image_id}.xml").write_text(
                    f"<annotation><filename>{image_id}.jpg</filename><source>{source.name}</source>"
                    f"<size><width>{canvas}</width><height>{canvas}</height><depth>3</depth></size>{objects}</annotation>"
                )
                ids.append(image_id)
            (tmp / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
