"""ImageNet-1k: an ImageFolder of wnids, or the flat ``val/`` with its label file.

Label files: Kaggle's ``LOC_val_solution.csv`` (ImageId, PredictionString whose first word is the
wnid) or the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (ILSVRC2012_IDs, one per line in
file order) with the devkit's ``meta.mat`` to turn those IDs into wnids. Classes are the 1000
wnids in sorted order, the index order of timm and torchvision ImageNet heads.
"""

from __future__ import annotations

import csv
from functools import cache
from itertools import compress
from pathlib import Path
from typing import Any

from ..errors import CSRAError
from .base import LabelledImages, existing_files
from .folder import class_folders, folder_samples, one_hot, split_root

DEVKIT_DATA = Path("ILSVRC2012_devkit_t12") / "data"


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in index order (shipped with timm: no download); a new list each call."""
    return list(_imagenet_info().label_names())


def imagenet_descriptions() -> list[str]:
    """The 1000 ImageNet-1k class descriptions in index order (shipped with timm); a new list each call."""
    info = _imagenet_info()
    return [info.index_to_description(i) for i in range(1000)]


@cache
def _imagenet_info() -> Any:
    """timm's ``ImageNetInfo``, built once: it parses its class files on every construction (about 25 ms)."""
    from timm.data import ImageNetInfo

    return ImageNetInfo("imagenet-1k")


def find_label_file(data_dir: Path, root: Path) -> Path:
    for folder in dict.fromkeys((data_dir, root, root.parent)):
        for candidate in (
            folder / "LOC_val_solution.csv",
            folder / DEVKIT_DATA / "ILSVRC2012_validation_ground_truth.txt",
            folder / "ILSVRC2012_validation_ground_truth.txt",
        ):
            if candidate.is_file():
                return candidate
    raise CSRAError(
        f"{root}: a flat ImageNet folder needs its labels: put LOC_val_solution.csv or the devkit "
        f"({DEVKIT_DATA}/) in {data_dir}, or pass `labels` (a label file)"
    )


def read_loc_solution(path: Path, known: set[str]) -> list[tuple[str, str]]:
    """``(image id, wnid)`` rows of Kaggle's ``LOC_val_solution.csv``."""
    rows = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise CSRAError(f"labels {path}: the header must be ImageId,PredictionString", param="labels")
        for line_no, row in enumerate(reader, start=2):
            words = (row["PredictionString"] or "").split()
            if not words or words[0] not in known:
                raise CSRAError(
                    f"labels {path}:{line_no}: unknown wnid {words[0] if words else '(empty)'!r} for {row['ImageId']}",
                    param="labels",
                )
            rows.append((row["ImageId"], words[0]))
    return rows


def read_devkit_ids(meta: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid for the 1000 leaf synsets of the devkit's ``meta.mat``."""
    from scipy.io import loadmat

    if not meta.is_file():
        raise CSRAError(f"{meta}: the ground-truth file needs the devkit's meta.mat next to it (ILSVRC2012_ID -> wnid)")
    try:
        synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
        return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise CSRAError(
            f"{meta}: not a devkit meta.mat with synsets (ILSVRC2012_ID, WNID, num_children): {exc}"
        ) from None


def read_ground_truth(path: Path, known: set[str]) -> list[tuple[str, str]]:
    """``(image id, wnid)`` from the devkit's ground truth: line i labels ``ILSVRC2012_val_{i:08d}``."""
    id_to_wnid = read_devkit_ids(path.parent / "meta.mat")
    rows = []
    for line_no, text in enumerate(path.read_text().split(), start=1):
        try:
            wnid = id_to_wnid[int(text)]
        except (ValueError, KeyError):
            raise CSRAError(
                f"labels {path}:{line_no}: {text!r} is not an ILSVRC2012_ID in meta.mat", param="labels"
            ) from None
        if wnid not in known:
            raise CSRAError(f"labels {path}:{line_no}: unknown wnid {wnid!r}", param="labels")
        rows.append((f"ILSVRC2012_val_{line_no:08d}", wnid))
    return rows


def flat_image_path(root: Path, image_id: str) -> Path:
    for ext in (".JPEG", ".jpeg", ".jpg", ".png"):
        if (root / (image_id + ext)).is_file():
            return root / (image_id + ext)
    return root / (image_id + ".JPEG")


def load_imagenet(
    data_dir: str | Path, split: str | None = None, labels: str | Path | None = None, skip_missing: bool = False
) -> LabelledImages:
    data_dir = Path(data_dir)
    kaggle = data_dir / "ILSVRC" / "Data" / "CLS-LOC"
    root, split_name = split_root(kaggle if kaggle.is_dir() else data_dir, split)
    wnids = imagenet_wnids()
    index = {w: k for k, w in enumerate(wnids)}
    folders = class_folders(root)
    sources: list[Path] = []
    if folders and labels is None:
        unknown = [f for f in folders if f not in index]
        if unknown:
            raise CSRAError(
                f"{root}: folder '{unknown[0]}' is not an ImageNet-1k wnid ({len(unknown)} such folders); "
                "the layout is <split>/<wnid>/<image>, or a flat <split>/ with `labels`"
            )
        samples = folder_samples(root, {f: index[f] for f in folders})
        ids = [str(p.relative_to(root)) for p, _ in samples]
        paths, targets = [p for p, _ in samples], [k for _, k in samples]
        layout, notes = "image-folder", [f"{len(ids)} images in {len(folders)} wnid folders"]
    else:
        label_file = Path(labels) if labels else find_label_file(data_dir, root)
        if not label_file.is_file():
            raise CSRAError(f"labels {label_file}: no such file", param="labels")
        reader = read_loc_solution if label_file.suffix == ".csv" else read_ground_truth
        rows = reader(label_file, set(index))
        if not rows:
            raise CSRAError(f"labels {label_file}: no rows", param="labels")
        paths = [flat_image_path(root, image_id) for image_id, _ in rows]
        present, missing_notes = existing_files(paths, skip_missing, label_file)
        rows, paths = list(compress(rows, present)), list(compress(paths, present))
        if not rows:
            raise CSRAError(f"{root}: none of the images in {label_file} is here")
        ids, targets = [image_id for image_id, _ in rows], [index[w] for _, w in rows]
        layout, sources = f"flat+{label_file.name}", [label_file]
        notes = [f"{len(ids)} images labelled by {label_file.name}", *missing_notes]
    return LabelledImages(
        dataset="imagenet",
        split=split_name,
        root=root,
        ids=ids,
        paths=paths,
        labels=one_hot(targets, len(wnids)),
        classes=wnids,
        single_label=True,
        options={"layout": layout, "skip_missing": skip_missing},
        sources=sources,
        notes=notes,
    )
