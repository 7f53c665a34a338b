"""Dataset loaders: each turns a standard on-disk layout into :class:`LabelledImages`.

Which datasets exist, and how each is read, is :mod:`csra_posthoc.data.registry`. The public names
below are imported on first use (PEP 562), so importing the registry (the CLI's ``--help`` does)
does not import torch.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CSRAError
from ..options import DataOptions
from .registry import DATASET_NAMES, REGISTRY, SINGLE_LABEL_DATASETS, DatasetEntry, check_options, dataset_entry

if TYPE_CHECKING:
    from .base import ImageDataset, LabelledImages, load_rgb
    from .coco import load_coco
    from .csv_labels import load_csv
    from .folder import load_image_folder
    from .imagenet import load_imagenet
    from .subset import subset
    from .voc import VOC_CLASSES, load_voc
    from .wider import WIDER_ATTRIBUTES, load_wider

_LAZY: dict[str, str] = {
    "LabelledImages": ".base", "ImageDataset": ".base", "load_rgb": ".base", "load_voc": ".voc", "VOC_CLASSES": ".voc",
    "load_csv": ".csv_labels", "load_coco": ".coco", "load_wider": ".wider", "WIDER_ATTRIBUTES": ".wider",
    "load_imagenet": ".imagenet", "load_image_folder": ".folder", "subset": ".subset",
}  # fmt: skip

__all__ = [
    "DATASET_NAMES",
    "REGISTRY",
    "SINGLE_LABEL_DATASETS",
    "VOC_CLASSES",
    "WIDER_ATTRIBUTES",
    "DatasetEntry",
    "ImageDataset",
    "LabelledImages",
    "dataset_entry",
    "load_coco",
    "load_csv",
    "load_dataset",
    "load_image_folder",
    "load_imagenet",
    "load_rgb",
    "load_voc",
    "load_wider",
    "read_classes",
    "subset",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_classes(classes: str | None, classes_file: str | Path | None) -> list[str] | None:
    """``classes="a,b,c"`` or ``classes_file`` (one name per line)."""
    if classes and classes_file:
        raise CSRAError("classes and classes_file: give one of them, not both", param="classes")
    if classes:
        names = [c.strip() for c in classes.split(",") if c.strip()]
    elif classes_file:
        path = Path(classes_file)
        if not path.is_file():
            raise CSRAError(f"classes_file {path}: no such file", param="classes_file")
        names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    else:
        return None
    if len(set(names)) != len(names) or not names:
        raise CSRAError("classes: class names must be non-empty and unique", param="classes")
    return names


def load_dataset(dataset: str, data_dir: str | Path, options: DataOptions | None = None, **overrides) -> LabelledImages:
    """Load ``dataset`` (one of :data:`DATASET_NAMES`) from ``data_dir``.

    ``overrides`` are :class:`DataOptions` fields (``load_dataset("coco2014", d, split="train")``).
    """
    opts = replace(options or DataOptions(), **overrides)
    entry = dataset_entry(dataset)
    if opts.difficult not in ("ignore", "positive", "negative"):
        raise CSRAError(f"difficult {opts.difficult}: choose ignore, positive or negative", param="difficult")
    check_options(entry, opts)
    images = entry.loader(Path(data_dir), opts.split or entry.eval_split, opts)
    if (images.single_label, images.unknown) != (entry.single_label, entry.unknown):  # a bug, not the user's input
        raise AssertionError(f"loader of {dataset} disagrees with its registry entry (single_label, unknown)")
    if opts.max_images is not None:
        if opts.max_images < 1:
            raise CSRAError(f"max_images {opts.max_images}: must be >= 1", param="max_images")
        from .subset import subset  # torch: this module is imported by the CLI's --help

        images = subset(images, opts.max_images, opts.subset_seed)
    return images
