"""Where the demo's single-object images come from: Fashion-MNIST, else scikit-learn's digits.

Sources, in order of preference: Fashion-MNIST (``data_dir``, ``$FASHION_MNIST``, Debian's
``dataset-fashion-mnist``), else scikit-learn's bundled handwritten digits (real, always offline,
smaller and blurrier). Nothing is downloaded: README's command 1 installs the Debian package where
it can. Finding a source (:func:`locate_item_source`) reads nothing, so a demo whose mosaics are
already written never loads Fashion-MNIST or scikit-learn.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import CSRAError

FASHION_CLASSES = [
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]
DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
GET_FASHION_MNIST = "sudo apt-get install dataset-fashion-mnist"
_IDX = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class ItemSource:
    """Single-object grey images (N, h, w) uint8 with class indices, per split."""

    name: str
    where: str
    classes: list[str]
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]


_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned bytes, 3 dims (images) / 1 dim (labels)


def _damaged(path: Path, why: str) -> CSRAError:
    return CSRAError(
        f"data_dir {path}: not a readable Fashion-MNIST idx file ({why}); it is truncated or damaged: "
        f"reinstall it ({GET_FASHION_MNIST.replace('install', 'install --reinstall')}) or pass `data_dir` with intact files",
        param="data_dir",
    )


def _read_idx(folder: Path, stem: str, dims: int) -> np.ndarray:
    """An idx file (``stem`` or ``stem.gz``) of unsigned bytes with ``dims`` dimensions, its header
    checked against its length; a truncated or garbled file is one line naming it."""
    for path in (folder / f"{stem}.gz", folder / stem):
        if path.is_file():
            try:
                opener = gzip.open if path.suffix == ".gz" else open
                with opener(path, "rb") as fh:
                    raw = fh.read()
            except (OSError, EOFError, zlib.error) as exc:  # gzip: bad magic / CRC / cut stream
                raise _damaged(path, f"{type(exc).__name__}: {exc}") from None
            header = 4 + 4 * dims
            if len(raw) < header:
                raise _damaged(path, f"{len(raw)} bytes, shorter than its header")
            magic, *shape = struct.unpack(f">{1 + dims}I", raw[:header])
            if magic != _IDX_MAGIC[dims]:
                raise _damaged(path, f"magic number {magic:#010x}, expected {_IDX_MAGIC[dims]:#010x}")
            if dims == 3 and tuple(shape[1:]) != (28, 28):
                raise _damaged(path, f"images of {shape[1]}x{shape[2]}, expected 28x28")
            expected = header + int(np.prod(shape))
            if len(raw) != expected:
                raise _damaged(path, f"{len(raw)} bytes where its header promises {expected}")
            return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
    raise CSRAError(
        f"data_dir {folder}: {stem}[.gz] is missing; reinstall Fashion-MNIST ({GET_FASHION_MNIST}) or pass `data_dir` with all four idx files",
        param="data_dir",
    )


def read_fashion_mnist(folder: Path) -> ItemSource:
    images, labels = {}, {}
    for split, (img_stem, lbl_stem) in _IDX.items():
        images[split] = _read_idx(folder, img_stem, 3)
        labels[split] = _read_idx(folder, lbl_stem, 1).astype(np.int64)
        if len(labels[split]) != len(images[split]):
            raise _damaged(
                folder / lbl_stem, f"{len(labels[split])} labels for {len(images[split])} images in {img_stem}"
            )
        if len(labels[split]) and labels[split].max() >= len(FASHION_CLASSES):
            raise _damaged(folder / lbl_stem, f"label {labels[split].max()} outside 0..{len(FASHION_CLASSES) - 1}")
    return ItemSource("fashion-mnist", str(folder), FASHION_CLASSES, images, labels)


def _has_idx(folder: Path) -> bool:
    return any((folder / f"{_IDX['test'][0]}{ext}").is_file() for ext in (".gz", ""))


def read_digits() -> ItemSource:
    """scikit-learn's 1,797 8x8 digits, upscaled to 28x28; split 2:1 into train / test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    grey = (d.images / 16.0 * 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(g).resize((28, 28), Image.Resampling.BILINEAR)) for g in grey])
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


@dataclass(frozen=True)
class SourceLocation:
    """Where the demo's items come from, decided without reading them."""

    name: str  # "fashion-mnist" | "sklearn-digits"
    where: str
    classes: list[str]
    folder: Path | None = None  # Fashion-MNIST's idx folder
    fallback_reason: str | None = None  # why Fashion-MNIST was not used (digits only)


def locate_item_source(data_dir: str | Path | None = None) -> SourceLocation:
    """Fashion-MNIST from ``data_dir``, ``$FASHION_MNIST`` or Debian's folder, else scikit-learn's digits."""
    if data_dir is not None:
        folder = Path(data_dir)
        if not _has_idx(folder):
            raise CSRAError(f"data_dir {folder}: no Fashion-MNIST idx files (t10k-images-idx3-ubyte[.gz], ...) there")
        return SourceLocation("fashion-mnist", str(folder), FASHION_CLASSES, folder)
    env = os.environ.get("FASHION_MNIST")
    for candidate in filter(None, [env, str(DEBIAN_FASHION_MNIST)]):
        if _has_idx(Path(candidate)):
            return SourceLocation("fashion-mnist", candidate, FASHION_CLASSES, Path(candidate))
    looked = ", ".join([*(f"$FASHION_MNIST={env}" for _ in [env] if env), str(DEBIAN_FASHION_MNIST)])
    reason = f"Fashion-MNIST not found (no --data-dir; looked in {looked})"
    return SourceLocation("sklearn-digits", "sklearn.datasets.load_digits", DIGIT_CLASSES, fallback_reason=reason)


def read_item_source(location: SourceLocation) -> ItemSource:
    """The items themselves (Fashion-MNIST's idx files, or scikit-learn's digits)."""
    return read_digits() if location.folder is None else read_fashion_mnist(location.folder)


def find_item_source(data_dir: str | Path | None = None) -> ItemSource:
    """Fashion-MNIST from the first place that has it, else scikit-learn's digits."""
    return read_item_source(locate_item_source(data_dir))
