"""MS-COCO (2014, or any instances_*.json): multi-label image classification from detection annotations.

The multi-label protocol (as in the CSRA paper and its official preprocessing): an image's labels
are the categories of its instance annotations, ``iscrowd`` ones included; the 80 categories map
to contiguous indices in ascending category-id order; images with no annotation are skipped
(val2014: 40,504 images -> 40,137 scored), unless ``keep_empty``.
"""

from __future__ import annotations

import contextlib
import io
from itertools import compress
from pathlib import Path

import torch

from ..errors import CSRAError
from .base import LabelledImages, existing_files, inside_image_dir
from .json_files import read_json, require


def find_coco_paths(
    data_dir: Path, split: str, year: str, ann_file: Path | None, image_dir: Path | None
) -> tuple[Path, Path]:
    """Default layout ``D/annotations/instances_{split}{year}.json`` and ``D/{split}{year}/``
    (or ``D/images/{split}{year}/``); ``--ann-file`` / ``--image-dir`` override either."""
    if ann_file is None:
        ann_file = data_dir / "annotations" / f"instances_{split}{year}.json"
        if not ann_file.is_file():
            raise CSRAError(
                f"data_dir {data_dir}: no {ann_file.relative_to(data_dir)} for split={split}; check `data_dir` / `split`, or pass `ann_file`"
            )
    if image_dir is None:
        candidates = (data_dir / f"{split}{year}", data_dir / "images" / f"{split}{year}")
        image_dir = next((c for c in candidates if c.is_dir()), None)
        if image_dir is None:
            raise CSRAError(
                f"data_dir {data_dir}: no image folder {split}{year}/ or images/{split}{year}/; pass image_dir",
                param="data_dir",
            )
    elif not image_dir.is_dir():
        raise CSRAError(f"image_dir {image_dir}: no such directory", param="image_dir")
    return ann_file, image_dir


def _index(data: dict, path: Path):
    """Validate the keys the loader needs, then let pycocotools build its index."""
    from pycocotools.coco import COCO

    if not isinstance(data, dict):
        raise CSRAError(f"{path}: expected a COCO instances object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        require(data, key, "the file", path, list)
    for i, image in enumerate(data["images"]):
        require(image, "id", f"images[{i}]", path, int)
        require(image, "file_name", f"images[{i}]", path, str)
    inside_image_dir([image["file_name"] for image in data["images"]], path)
    for i, cat in enumerate(data["categories"]):
        require(cat, "id", f"categories[{i}]", path, int)
        require(cat, "name", f"categories[{i}]", path, str)
    image_ids = {image["id"] for image in data["images"]}
    cat_ids = {cat["id"] for cat in data["categories"]}
    for i, ann in enumerate(data["annotations"]):
        if require(ann, "image_id", f"annotations[{i}]", path) not in image_ids:
            raise CSRAError(f"{path}: annotations[{i}] points at image_id {ann['image_id']}, which is not in 'images'")
        if require(ann, "category_id", f"annotations[{i}]", path) not in cat_ids:
            raise CSRAError(
                f"{path}: annotations[{i}] has category_id {ann['category_id']}, which is not in 'categories'"
            )
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        coco.createIndex()
    return coco


def load_coco(
    data_dir: str | Path,
    split: str = "val",
    year: str = "2014",
    ann_file: str | Path | None = None,
    image_dir: str | Path | None = None,
    keep_empty: bool = False,
    skip_missing: bool = False,
) -> LabelledImages:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CSRAError(f"data_dir {data_dir}: no such directory", param="data_dir")
    ann_path, images_root = find_coco_paths(
        data_dir, split, year, Path(ann_file) if ann_file else None, Path(image_dir) if image_dir else None
    )
    coco = _index(read_json(ann_path, "ann_file"), ann_path)
    cat_ids = sorted(coco.getCatIds())
    column = {cat_id: k for k, cat_id in enumerate(cat_ids)}
    classes = [coco.cats[cat_id]["name"] for cat_id in cat_ids]
    if len(set(classes)) != len(classes):
        raise CSRAError(f"{ann_path}: category names are not unique")

    all_ids = sorted(coco.getImgIds())
    kept = [i for i in all_ids if keep_empty or coco.imgToAnns[i]]
    empty = len(all_ids) - len(kept)
    if not kept:
        raise CSRAError(f"{ann_path}: no image has an annotation (pass keep_empty=True to score them anyway)")
    paths = [images_root / coco.imgs[i]["file_name"] for i in kept]
    present, missing_notes = existing_files(paths, skip_missing, ann_path)
    kept, paths = list(compress(kept, present)), list(compress(paths, present))

    anns = [(row, ann) for row, image_id in enumerate(kept) for ann in coco.imgToAnns[image_id]]
    labels = torch.zeros(len(kept), len(classes), dtype=torch.int8)
    labels[[row for row, _ in anns], [column[ann["category_id"]] for _, ann in anns]] = 1
    crowd = sum(bool(ann.get("iscrowd", 0)) for _, ann in anns)
    notes = []
    if empty:
        notes.append(
            f"{empty} of {len(all_ids)} images have no annotation and were "
            + ("kept (all negative)" if keep_empty else "skipped (--keep-empty keeps them)")
        )
    notes += missing_notes
    if crowd:
        notes.append(f"{crowd} iscrowd annotations count as labels, as in the multi-label protocol")
    boxes = coco_boxes(coco.dataset, column)
    sizes = [_image_size(coco.imgs[i]) for i in kept]
    pointable = any(boxes.get(i) for i in kept) and all(
        size is not None for size in sizes
    )  # boxes, and every image's size
    return LabelledImages(
        dataset=f"coco{year}",
        split=split,
        root=images_root,
        ids=[str(i) for i in kept],
        paths=paths,
        labels=labels,
        classes=classes,
        options={"keep_empty": keep_empty, "skip_missing": skip_missing, "ann_file": str(ann_path.resolve())},
        sources=[ann_path],
        notes=notes,
        object_boxes=[boxes.get(i, {}) for i in kept] if pointable else None,
        image_sizes=[s for s in sizes if s is not None] if pointable else None,
    )


def _image_size(image: dict) -> tuple[int, int] | None:
    """``images[].width`` / ``height`` (no decoding); None when absent or not positive."""
    width, height = image.get("width"), image.get("height")
    if isinstance(width, int | float) and isinstance(height, int | float) and width > 0 and height > 0:
        return int(width), int(height)
    return None


def coco_boxes(data: dict, column: dict[int, int]) -> dict[int, dict[int, list[tuple[float, float, float, float]]]]:
    """Image id -> class index -> ``(xmin, ymin, xmax, ymax)`` boxes (original pixels) from COCO
    ``bbox`` ``[x, y, width, height]``, for the pointing game (:mod:`csra_posthoc.evaluation.localisation`).
    ``column`` maps category id -> class index. iscrowd boxes count, as they count as labels;
    annotations without a 4-number bbox are skipped."""
    out: dict[int, dict[int, list[tuple[float, float, float, float]]]] = {}
    for ann in data.get("annotations", []):
        bbox, cat = ann.get("bbox"), ann.get("category_id")
        if cat not in column or not isinstance(bbox, list | tuple) or len(bbox) != 4:
            continue
        x, y, w, h = (float(v) for v in bbox)
        out.setdefault(ann["image_id"], {}).setdefault(column[cat], []).append((x, y, x + w, y + h))
    return out
