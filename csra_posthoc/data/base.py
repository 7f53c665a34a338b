"""A labelled split of images: the one thing every dataset loader produces."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import first_line
from ..metrics import UnknownPolicy


@dataclass
class LabelledImages:
    """Image paths and a label matrix ``(N, C)`` with 1 positive, 0 negative, -1 unknown."""

    dataset: str
    split: str
    root: Path
    ids: list[str]
    paths: list[Path]
    labels: torch.Tensor
    classes: list[str]
    single_label: bool = False
    unknown: UnknownPolicy = "exclude"
    options: dict[str, Any] = field(default_factory=dict)  # loader choices that change labels

    def __post_init__(self) -> None:
        self.labels = self.labels.to(torch.int8)
        if self.labels.shape != (len(self.ids), len(self.classes)) or len(self.paths) != len(self.ids):
            raise ValueError("ids, paths, labels and classes disagree in size")

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        """Hash of everything that changes pixels or labels: ids, files (size, mtime), labels, options."""
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps([self.dataset, self.split, self.classes, self.options, self.unknown], sort_keys=True).encode())
        for image_id, path in zip(self.ids, self.paths):
            try:
                st = path.stat()
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            h.update(f"{image_id}\0{path}\0{stamp}\n".encode())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()


def load_rgb(path: Path) -> Image.Image:
    """Decode an image as RGB (raises OSError / UnidentifiedImageError for broken files)."""
    with Image.open(path) as im:
        return im.convert("RGB")


class ImageDataset(Dataset):
    """Transforms images for extraction; a broken image comes back as an error, not an exception.

    (An exception inside a DataLoader worker would reach the user as a wrapped traceback.)
    """

    def __init__(self, images: LabelledImages, transform: Callable[[Image.Image], torch.Tensor], size: int) -> None:
        self.images = images
        self.transform = transform
        self.size = size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, str]:
        path = self.images.paths[index]
        try:
            return index, self.transform(load_rgb(path)), ""
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            return index, torch.zeros(3, self.size, self.size), f"{path}: cannot decode image ({first_line(exc, 120)})"
