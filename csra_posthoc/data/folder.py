"""Single-label image folders: one sub-folder per class (torchvision's ``ImageFolder`` layout)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CSRAError
from .base import LabelledImages


def split_root(data_dir: Path, split: str | None, default: str = "val") -> tuple[Path, str]:
    """``D/<split>`` when ``--split`` is given; else ``D/val`` if there is one, else ``D`` itself."""
    if not data_dir.is_dir():
        raise CSRAError(f"data_dir {data_dir}: no such directory", param="data_dir")
    if split is not None:
        root = data_dir / split
        if not root.is_dir():
            raise CSRAError(f"split {split}: no folder {root}; check `split` or `data_dir`", param="split")
        return root, split
    if (data_dir / default).is_dir():
        return data_dir / default, default
    return data_dir, data_dir.name


def class_folders(root: Path) -> list[str]:
    """Sub-folder names, sorted (the index order ImageFolder and ImageNet models use)."""
    from torchvision.datasets.folder import find_classes  # imported here: torchvision is slow to import

    try:
        return find_classes(root)[0]
    except FileNotFoundError:
        return []


def folder_samples(root: Path, class_to_idx: dict[str, int]) -> list[tuple[Path, int]]:
    """``(path, class index)`` for every image under the class folders in ``class_to_idx``."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    try:
        samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as exc:  # a class folder with no image in it
        raise CSRAError(f"{root}: {str(exc).splitlines()[0]}") from None
    return [(Path(p), k) for p, k in samples]


def one_hot(targets: list[int], num_classes: int) -> torch.Tensor:
    labels = torch.zeros(len(targets), num_classes, dtype=torch.int8)
    labels[torch.arange(len(targets)), torch.tensor(targets, dtype=torch.long)] = 1
    return labels


def load_image_folder(
    data_dir: str | Path, split: str | None = None, classes: list[str] | None = None
) -> LabelledImages:
    """``--dataset folder``: classes are the sorted sub-folder names, or ``--classes`` (a superset, in the
    head's order, e.g. when a folder holds only some of a model's classes)."""
    root, split_name = split_root(Path(data_dir), split)
    folders = class_folders(root)
    if not folders:
        raise CSRAError(f"{root}: no class sub-folders (the layout is <root>/<class>/<image>)")
    classes = list(classes) if classes else folders
    index = {c: k for k, c in enumerate(classes)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise CSRAError(f"{root}: folder '{unknown[0]}' is not in `classes` ({len(unknown)} such folders)")
    samples = folder_samples(root, {f: index[f] for f in folders})
    return LabelledImages(
        dataset="folder",
        split=split_name,
        root=root,
        ids=[str(p.relative_to(root)) for p, _ in samples],
        paths=[p for p, _ in samples],
        labels=one_hot([k for _, k in samples], len(classes)),
        classes=classes,
        single_label=True,
        options={"layout": "image-folder"},
        notes=[f"{len(samples)} images in {len(folders)} class folders ({len(classes)} classes)"],
    )
