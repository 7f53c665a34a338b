"""WIDER-Attribute: one sample per annotated person box, 14 attributes labelled 1 / -1 / 0.

Official layout: ``Annotations/wider_attribute_{split}.json`` and ``Image/<scene>/<file>.jpg``.
Each box (x, y, w, h) is clipped to its image and cropped; label 1 is positive, -1 negative and
0 "unspecified", which is unknown: left out of that attribute's AP but counted as a negative in
CP/CR/OP/OR, as the official evaluation does (docs/method.md §4).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from ..errors import CSRAError
from .base import Box, LabelledImages, existing_files, inside_image_dir
from .json_files import read_json, require

WIDER_ATTRIBUTES = [
    "Male", "longHair", "sunglass", "Hat", "Tshirt", "longSleeve", "formal",
    "shorts", "jeans", "longPants", "skirt", "faceMask", "logo", "stripe",
]  # fmt: skip

_LABEL = {1: 1, -1: 0, 0: -1}  # official value -> ours (1 positive, 0 negative, -1 unknown)


def clip_box(bbox: list[float], width: int, height: int) -> Box | None:
    """``(x, y, w, h)`` clipped to a ``width x height`` image, as whole pixels covering the box;
    None for a degenerate box (no area, before or after clipping)."""
    x, y, w, h = (float(v) for v in bbox)
    if not (w > 0 and h > 0):
        return None
    left, upper = max(0, math.floor(x)), max(0, math.floor(y))
    right, lower = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
    if right <= left or lower <= upper:
        return None
    return left, upper, right, lower


def _attribute_names(data: dict, path: Path, count: int) -> list[str]:
    id_map = data.get("attribute_id_map")
    if id_map is None:
        names = WIDER_ATTRIBUTES
    else:
        try:
            names = [str(id_map[k]) for k in sorted(id_map, key=int)]
        except (TypeError, ValueError, AttributeError):
            raise CSRAError(f"{path}: 'attribute_id_map' must map attribute ids (0, 1, ...) to names") from None
    if len(names) != count:
        raise CSRAError(f"{path}: boxes have {count} attributes but the attribute names are {len(names)}")
    return names


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:  # reads the header only
            return im.size
    except (OSError, UnidentifiedImageError) as exc:
        raise CSRAError(f"{path}: cannot read image ({exc}); fix or remove the file") from None


def load_wider(
    data_dir: str | Path,
    split: str = "test",
    ann_file: str | Path | None = None,
    image_dir: str | Path | None = None,
    skip_missing: bool = False,
) -> LabelledImages:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CSRAError(f"data_dir {data_dir}: no such directory", param="data_dir")
    ann_path = Path(ann_file) if ann_file else data_dir / "Annotations" / f"wider_attribute_{split}.json"
    images_root = Path(image_dir) if image_dir else data_dir / "Image"
    if not images_root.is_dir():
        raise CSRAError(
            f"image_dir {images_root}: no such directory (WIDER-Attribute keeps its images in Image/)",
            param="image_dir",
        )
    data = read_json(ann_path, "ann_file")
    entries = require(data, "images", "the file", ann_path, list)

    files = [require(e, "file_name", f"images[{i}]", ann_path, str) for i, e in enumerate(entries)]
    inside_image_dir(files, ann_path)
    present, missing_notes = existing_files([images_root / f for f in files], skip_missing, ann_path)
    ids, paths, boxes, rows = [], [], [], []
    degenerate, total_boxes, num_attrs = 0, 0, None
    for i, (entry, file_name, ok) in enumerate(zip(entries, files, present, strict=True)):
        targets = require(entry, "targets", f"images[{i}]", ann_path, list)
        if not ok:
            continue
        path = images_root / file_name
        width, height = _image_size(path) if targets else (0, 0)
        for j, target in enumerate(targets):
            where = f"images[{i}].targets[{j}]"
            bbox = require(target, "bbox", where, ann_path, list)
            attrs = require(target, "attribute", where, ann_path, list)
            if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
                raise CSRAError(f"{ann_path}: {where}['bbox'] must be 4 numbers x, y, w, h")
            if any(a not in _LABEL for a in attrs) or (num_attrs is not None and len(attrs) != num_attrs):
                raise CSRAError(f"{ann_path}: {where}['attribute'] must be {num_attrs or 14} values of 1, -1 or 0")
            num_attrs = len(attrs)
            total_boxes += 1
            x, y, w, h = bbox
            if w > 0 and h > 0 and (x >= width or y >= height or x + w <= 0 or y + h <= 0):
                raise CSRAError(
                    f"{ann_path}: {where} box {bbox} lies outside its {width}x{height} image {file_name}; fix the annotation"
                )
            box = clip_box(bbox, width, height)
            if box is None:
                degenerate += 1
                continue
            ids.append(f"{file_name}#{j}")
            paths.append(path)
            boxes.append(box)
            rows.append([_LABEL[a] for a in attrs])
    if not ids:
        raise CSRAError(f"{ann_path}: no usable person box")
    classes = _attribute_names(data, ann_path, num_attrs or len(WIDER_ATTRIBUTES))
    notes = [
        f"{len(ids)} person boxes from {len(set(paths))} images; label 0 (unspecified) is left out of AP and counts as negative in CP/CR/OP/OR"
    ]
    if degenerate:
        notes.append(f"{degenerate} of {total_boxes} boxes have no area (after clipping to the image) and were skipped")
    notes += missing_notes
    return LabelledImages(
        dataset="wider",
        split=split,
        root=images_root,
        ids=ids,
        paths=paths,
        labels=torch.tensor(rows, dtype=torch.int8),
        classes=classes,
        unknown="negative",
        options={
            "boxes": "clip-to-image, skip-degenerate",
            "skip_missing": skip_missing,
            "ann_file": str(ann_path.resolve()),
        },
        boxes=boxes,
        sources=[ann_path],
        notes=notes,
    )
