"""Multi-label mosaics of real single-object images, written as a VOC-layout dataset.

The offline demo's data: 1-4 items of random size at random places on a black canvas; the
classes present are the labels. Items for ``trainval`` come from the source's training images
and items for ``test`` from its test images, so no item is seen by both a probe and the
evaluation. Sources, in order of preference: Fashion-MNIST (``--data-dir``, ``$FASHION_MNIST``,
Debian's ``dataset-fashion-mnist``, or torchvision's downloader when a network exists), else
scikit-learn's bundled handwritten digits (real, always offline, smaller and blurrier).
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import CSRAError

FASHION_CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass
class ItemSource:
    """Single-object grey images (N, h, w) uint8 with class indices, per split."""

    name: str
    where: str
    classes: list[str]
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]


def _read_idx(folder: Path, stem: str, header: int) -> np.ndarray:
    for path in (folder / f"{stem}.gz", folder / stem):
        if path.is_file():
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as fh:
                return np.frombuffer(fh.read(), dtype=np.uint8, offset=header)
    raise FileNotFoundError(folder / stem)


def read_fashion_mnist(folder: Path) -> ItemSource:
    images, labels = {}, {}
    for split, (img_stem, lbl_stem) in _IDX.items():
        images[split] = _read_idx(folder, img_stem, 16).reshape(-1, 28, 28)
        labels[split] = _read_idx(folder, lbl_stem, 8).astype(np.int64)
    return ItemSource("fashion-mnist", str(folder), FASHION_CLASSES, images, labels)


def _has_idx(folder: Path) -> bool:
    return any((folder / f"{_IDX['test'][0]}{ext}").is_file() for ext in (".gz", ""))


def _download_fashion_mnist(root: Path) -> Path | None:
    """torchvision's downloader, only when a network answers quickly; None otherwise."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=False, download=True)
        FashionMNIST(str(root), train=True, download=True)
        return root / "FashionMNIST" / "raw"
    except Exception:
        return None
    finally:
        socket.setdefaulttimeout(previous)


def read_digits() -> ItemSource:
    """scikit-learn's 1,797 8x8 digits, upscaled to 28x28; split 2:1 into train / test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    grey = (d.images / 16.0 * 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(g).resize((28, 28), Image.BILINEAR)) for g in grey])
    rng = np.random.default_rng(0)
    order = rng.permutation(len(big))
    cut = len(big) * 2 // 3
    return ItemSource(
        "sklearn-digits",
        "sklearn.datasets.load_digits",
        DIGIT_CLASSES,
        {"train": big[order[:cut]], "test": big[order[cut:]]},
        {"train": d.target[order[:cut]], "test": d.target[order[cut:]]},
    )


def find_item_source(data_dir: str | Path | None = None, download_root: Path | None = None, allow_download: bool = True) -> ItemSource:
    """Fashion-MNIST from the first place that has it, else scikit-learn's digits."""
    if data_dir is not None:
        folder = Path(data_dir)
        if not _has_idx(folder):
            raise CSRAError(f"--data-dir {folder}: no Fashion-MNIST idx files (t10k-images-idx3-ubyte[.gz], ...) there")
        return read_fashion_mnist(folder)
    for folder in filter(None, [os.environ.get("FASHION_MNIST"), str(DEBIAN_FASHION_MNIST)]):
        if _has_idx(Path(folder)):
            return read_fashion_mnist(Path(folder))
    if allow_download and download_root is not None:
        raw = _download_fashion_mnist(download_root)
        if raw is not None and _has_idx(raw):
            return read_fashion_mnist(raw)
    return read_digits()


ITEM_SCALE = (0.2, 0.45)  # item side as a fraction of the canvas side


def _mosaic(
    items: list[np.ndarray], canvas: int, rng: np.random.Generator, scale: tuple[float, float] = ITEM_SCALE
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Paste items (brightest wins where they overlap); returns the image and each item's box."""
    out = np.zeros((canvas, canvas), dtype=np.uint8)
    boxes = []
    for item in items:
        side = int(rng.uniform(*scale) * canvas)
        patch = np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR))
        x, y = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
        out[y : y + side, x : x + side] = np.maximum(out[y : y + side, x : x + side], patch)
        boxes.append((x, y, x + side, y + side))
    return out, boxes


def write_mosaic_voc(
    source: ItemSource, root: Path, num_trainval: int, num_test: int, canvas: int, seed: int = 0
) -> Path:
    """Write ``root/VOC2007`` (JPEGImages, Annotations, ImageSets/Main/{trainval,test}.txt) atomically."""
    final = root / "VOC2007"
    if (final / "ImageSets" / "Main" / "test.txt").is_file():
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
                    for p, b in zip(picks, boxes)
                )
                (tmp / "Annotations" / f"{image_id}.xml").write_text(
                    f"<annotation><filename>{image_id}.jpg</filename><source>{source.name}</source>{objects}</annotation>"
                )
                ids.append(image_id)
            (tmp / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
