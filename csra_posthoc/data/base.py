"""A labelled split of images: the one thing every dataset loader produces."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import CSRAError, first_line
from ..metrics import UnknownPolicy

Box = tuple[int, int, int, int]  # left, upper, right, lower (PIL crop order), in pixels
ObjectBoxes = dict[
    int, list[tuple[float, float, float, float]]
]  # class index -> (xmin, ymin, xmax, ymax) boxes, original pixels


@dataclass
class LabelledImages:
    """Samples (an image, or a box of one) and a label matrix ``(N, C)``: 1 positive, 0 negative, -1 unknown.

    ``boxes`` crop a sample out of its image (WIDER-Attribute's person boxes); ``sources`` are the
    annotation files the labels came from (their size and mtime go into the cache key); ``notes``
    are what the loader wants the report to say (skipped images, counting conventions).

    ``object_boxes`` (per sample: class index -> object boxes) and ``image_sizes`` (per sample: the
    original ``(width, height)``, read from the annotations, never by decoding) are known for VOC
    layouts (and the demo's mosaics) and COCO, None elsewhere; they feed the pointing game
    (:mod:`csra_posthoc.evaluation.localisation`) and change no pixel or label, so they stay out of the key.
    """

    dataset: str
    split: str
    root: Path
    ids: list[str]
    paths: list[Path]
    labels: torch.Tensor
    classes: list[str]
    single_label: bool = False
    unknown: UnknownPolicy = "exclude"
    options: dict[str, Any] = field(default_factory=dict)  # loader choices that change pixels or labels
    boxes: list[Box] | None = None
    sources: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    object_boxes: list[ObjectBoxes] | None = None
    image_sizes: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        self.labels = self.labels.to(torch.int8)
        if self.labels.shape != (len(self.ids), len(self.classes)) or len(self.paths) != len(self.ids):
            raise ValueError("ids, paths, labels and classes disagree in size")
        if self.boxes is not None and len(self.boxes) != len(self.ids):
            raise ValueError("boxes and ids disagree in size")
        for name in ("object_boxes", "image_sizes"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.ids):
                raise ValueError(f"{name} and ids disagree in size")

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self, content: bool = False) -> str:
        """Hash of everything that changes pixels or labels: ids, files, boxes, annotation files,
        labels and loader options.

        A file enters by its resolved path (so ``--data-dir data`` and ``--data-dir $PWD/data`` are
        one key) and its size + mtime, or with ``content`` its bytes (blake2b): slower, but an image
        rewritten in place with the same size and mtime is then noticed.
        """
        stamp = _content_stamp if content else _stamp
        h = hashlib.blake2b(digest_size=16)
        h.update(
            json.dumps([self.dataset, self.split, self.classes, self.options, self.unknown], sort_keys=True).encode()
        )
        for source in self.sources:
            h.update(f"source\0{_resolved(source)}\0{stamp(source)}\n".encode())
        for image_id, path in zip(self.ids, self.paths, strict=True):
            h.update(f"{image_id}\0{_resolved(path)}\0{stamp(path)}\n".encode())
        if self.boxes is not None:
            h.update(json.dumps(self.boxes).encode())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()


def _resolved(path: Path) -> str:
    try:
        return str(Path(path).resolve())
    except OSError:
        return str(Path(path).absolute())


def _stamp(path: Path) -> str:
    try:
        st = path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return "missing"


def _content_stamp(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    except OSError:
        return "missing"
    return h.hexdigest()


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def load_rgb(path: Path, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image as 8-bit RGB (raises OSError / UnidentifiedImageError for broken files,
    ``Image.DecompressionBombError`` above PIL's limit).

    ``draft`` ``(w, h)``: let a JPEG decode at 1/2, 1/4 or 1/8 scale (DCT domain) while both sides
    stay >= ``(w, h)``; no effect on other formats or when the image is under twice that size.
    Changes the pixels: see :mod:`csra_posthoc.data.decode`, which picks ``(w, h)``.

    High-bit-depth images are scaled, not clipped (``convert("RGB")`` would saturate a 16-bit PNG):
    16-bit integers (modes ``I;16*``, and ``I`` holding values above 255) map 0..65535 to 0..255;
    floats in [0, 1] map to 0..255. PIL's ``DecompressionBombWarning`` (over ``MAX_IMAGE_PIXELS``
    but under twice that, where PIL still decodes) is silenced: the image is used as it is.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            if draft is not None and im.format == "JPEG":
                im.draft("RGB", draft)
            if im.mode in _SIXTEEN_BIT or im.mode in ("I", "F"):
                return _high_bit_depth_to_rgb(im)
            return im.convert("RGB")


def _high_bit_depth_to_rgb(im: Image.Image) -> Image.Image:
    """One-channel 16-bit / 32-bit int / float image -> 8-bit RGB, scaled by the data's bit depth."""
    a = np.asarray(im).astype(np.float64)
    if im.mode in _SIXTEEN_BIT or (im.mode == "I" and a.max(initial=0) > 255):
        a = np.clip(a, 0, 65535) / 257.0  # 65535 / 257 = 255 exactly; an 8-bit value v stored as 257 v comes back as v
    elif im.mode == "F" and a.min(initial=0) >= 0 and a.max(initial=0) <= 1:
        a = a * 255.0
    elif im.mode == "F" and a.max(initial=0) > 255:
        a = np.clip(a, 0, 65535) / 257.0
    gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def inside_image_dir(names: list[str], listed_in: Path, where: str = "images[{i}].file_name") -> None:
    """Refuse an image name from an annotation file that leaves the image folder: an absolute path
    or one with a ``..`` part would read a file outside it (a crafted file could point anywhere)."""
    from pathlib import PurePosixPath, PureWindowsPath

    for i, name in enumerate(names):
        parts = {*PurePosixPath(name).parts, *PureWindowsPath(name).parts}
        if (
            PurePosixPath(name).is_absolute()
            or PureWindowsPath(name).is_absolute()
            or PureWindowsPath(name).drive
            or ".." in parts
        ):
            raise CSRAError(
                f"{listed_in}: {where.format(i=i)} {name!r} points outside the image folder (absolute or with '..'); "
                "names in an annotation file must be relative to the image folder"
            )


def existing_files(paths: list[Path], skip_missing: bool, listed_in: Path) -> tuple[list[bool], list[str]]:
    """Which of ``paths`` exist, and the report's note on those skipped (none, or one line);
    a missing one is an error naming it unless ``skip_missing``."""
    present = [p.is_file() for p in paths]
    missing = present.count(False)
    if missing and not skip_missing:
        first = paths[present.index(False)]
        raise CSRAError(
            f"{first}: image listed in {listed_in} does not exist ({missing} of {len(paths)} missing); "
            "check `data_dir` / `image_dir`, or pass skip_missing=True to go on without them"
        )
    notes = (
        [f"{missing} images listed in {listed_in.name} are missing on disk and were skipped (--skip-missing)"]
        if missing
        else []
    )
    return present, notes


class ImageDataset(Dataset):
    """Transforms images for extraction; a broken image comes back as an error, not an exception.

    Policy for huge images: above twice ``PIL.Image.MAX_IMAGE_PIXELS`` (PIL's decompression-bomb
    limit, ~179 Mpixel) an image is an error naming it; between the limit and twice it, PIL's
    warning is silenced and the image is used (it decodes fine, and is resized anyway).

    (An exception inside a DataLoader worker would reach the user as a wrapped traceback.)
    """

    def __init__(
        self,
        images: LabelledImages,
        transform: Callable[[Image.Image], torch.Tensor],
        size: int,
        loader: Callable[[Path], Image.Image] = load_rgb,
        uint8: bool = False,
    ) -> None:
        self.images = images
        self.transform = transform
        self.size = size
        self.loader = loader  # whole images only: a box is in the full-size image's pixels, so boxes use load_rgb
        self.uint8 = (
            uint8  # transform ends in uint8 (H, W, 3) (data.decode.pil_stage): a broken image's placeholder matches
        )
        self._last: tuple[Path, Image.Image] | None = None  # boxes of one image are consecutive samples

    def _placeholder(self) -> torch.Tensor:
        if self.uint8:
            return torch.zeros(self.size, self.size, 3, dtype=torch.uint8)
        return torch.zeros(3, self.size, self.size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, str]:
        path = self.images.paths[index]
        box = self.images.boxes[index] if self.images.boxes is not None else None
        try:
            if box is None:
                return index, self.transform(self.loader(path)), ""
            if self._last is None or self._last[0] != path:
                self._last = (path, load_rgb(path))
            return index, self.transform(self._last[1].crop(box)), ""
        except Image.DecompressionBombError as exc:
            return index, self._placeholder(), f"{path}: {_bomb_detail(exc)}"
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            return (
                index,
                self._placeholder(),
                f"{path}: cannot decode image ({first_line(exc, 120)}); fix or remove the file",
            )


def _bomb_detail(exc: Exception) -> str:
    """PIL's decompression-bomb refusal in our words (its own message ends in "DOS attack")."""
    import re

    numbers = re.findall(r"\d+", str(exc))
    size = f"{int(numbers[0]):,} pixels" if numbers else "too many pixels"
    limit = f"{int(numbers[1]):,}" if len(numbers) > 1 else "PIL's"
    return f"image has {size}, over PIL's decompression-bomb limit of {limit} pixels; downscale it or remove the file"
