"""PASCAL VOC layout: JPEGImages/, Annotations/*.xml, ImageSets/Main/{split}.txt."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from itertools import compress
from pathlib import Path
from typing import Literal

import torch

from ..errors import CSRAError
from .base import LabelledImages, existing_files

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip

DifficultPolicy = Literal["ignore", "positive", "negative"]


def find_voc_root(data_dir: Path, year: str) -> Path:
    """Accept ``D/VOCdevkit/VOC2007``, ``D/VOC2007`` or the VOC2007 folder itself."""
    for candidate in (data_dir / "VOCdevkit" / f"VOC{year}", data_dir / f"VOC{year}", data_dir):
        if (candidate / "Annotations").is_dir() and (candidate / "JPEGImages").is_dir():
            return candidate
    raise CSRAError(
        f"data_dir {data_dir}: no VOC{year} folder with Annotations/ and JPEGImages/ "
        f"(looked in {data_dir}/VOCdevkit/VOC{year}, {data_dir}/VOC{year} and {data_dir})"
    )


def _image_labels(xml_path: Path, index: dict[str, int], difficult: DifficultPolicy) -> list[int]:
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise CSRAError(f"{xml_path}: cannot parse annotation ({exc})") from None
    plain: set[int] = set()
    hard: set[int] = set()
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in index:
            raise CSRAError(
                f"{xml_path}: class {name!r} is not in the class list; pass `classes` / `classes_file` with it"
            )
        is_difficult = (obj.findtext("difficult") or "0").strip() == "1"
        (hard if is_difficult else plain).add(index[name])
    labels = [0] * len(index)
    for c in plain:
        labels[c] = 1
    for c in hard - plain:
        labels[c] = {"ignore": -1, "positive": 1, "negative": 0}[difficult]
    return labels


def image_boxes(
    xml_path: Path, index: dict[str, int], difficult: DifficultPolicy = "ignore"
) -> dict[int, list[tuple[float, float, float, float]]]:
    """Class index -> ``(xmin, ymin, xmax, ymax)`` boxes (original pixels) of one annotation, for the
    pointing game (:mod:`csra_posthoc.evaluation.localisation`). Consistent with the labels: difficult boxes
    count only under ``difficult='positive'`` (under 'ignore' a class seen only as difficult is
    unknown and left out; under 'negative' it is a negative). Objects without a box are skipped."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise CSRAError(f"{xml_path}: cannot parse annotation ({exc})") from None
    out: dict[int, list[tuple[float, float, float, float]]] = {}
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if name not in index or box is None:
            continue
        if (obj.findtext("difficult") or "0").strip() == "1" and difficult != "positive":
            continue
        try:
            coords = tuple(float(box.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            raise CSRAError(f"{xml_path}: object {name!r} has a non-numeric bndbox") from None
        out.setdefault(index[name], []).append((coords[0], coords[1], coords[2], coords[3]))
    return out


def image_size(xml_path: Path, image_path: Path) -> tuple[int, int]:
    """The original ``(width, height)``: the annotation's ``<size>``, else the image file's header
    (PIL reads the size without decoding the pixels)."""
    try:
        size = ET.parse(xml_path).getroot().find("size")
        if size is not None:
            width, height = int(float(size.findtext("width") or "0")), int(float(size.findtext("height") or "0"))
            if width > 0 and height > 0:
                return width, height
    except (ET.ParseError, OSError, ValueError):
        pass
    from PIL import Image

    try:
        with Image.open(image_path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception as exc:
        raise CSRAError(
            f"{image_path}: cannot read the image size ({type(exc).__name__}) for the pointing game"
        ) from None


def load_voc(
    data_dir: str | Path,
    year: str = "2007",
    split: str = "test",
    classes: list[str] | None = None,
    difficult: DifficultPolicy = "ignore",
    skip_missing: bool = False,
) -> LabelledImages:
    """Labels from the XML annotations (an image whose only instances of a class are difficult is
    unknown for that class under ``difficult='ignore'``, as the VOC devkit does)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CSRAError(f"data_dir {data_dir}: no such directory", param="data_dir")
    root = find_voc_root(data_dir, year)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise CSRAError(f"split {split}: no split file {split_file}; check `split` or `data_dir`", param="split")
    ids = [ln.split()[0] for ln in split_file.read_text().splitlines() if ln.strip()]
    if not ids:
        raise CSRAError(f"{split_file}: lists no images")
    classes = list(classes or VOC_CLASSES)
    index = {c: i for i, c in enumerate(classes)}
    paths = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
    present, notes = existing_files(paths, skip_missing, split_file)
    ids, paths = list(compress(ids, present)), list(compress(paths, present))
    if not ids:
        raise CSRAError(f"{split_file}: none of its images is in {root / 'JPEGImages'}")
    rows, object_boxes = [], []
    for image_id in ids:
        xml_path = root / "Annotations" / f"{image_id}.xml"
        if not xml_path.is_file():
            raise CSRAError(f"{xml_path}: missing annotation for image {image_id} listed in {split_file}")
        rows.append(_image_labels(xml_path, index, difficult))
        object_boxes.append(image_boxes(xml_path, index, difficult))
    has_boxes = any(object_boxes)  # no <bndbox> anywhere: no pointing game
    sizes = (
        [image_size(root / "Annotations" / f"{i}.xml", p) for i, p in zip(ids, paths, strict=True)]
        if has_boxes
        else None
    )
    return LabelledImages(
        dataset=f"voc{year}",
        split=split,
        root=root,
        ids=ids,
        paths=paths,
        labels=torch.tensor(rows, dtype=torch.int8),
        classes=classes,
        options={"difficult": difficult, "skip_missing": skip_missing},
        sources=[split_file],
        notes=notes,
        object_boxes=object_boxes if has_boxes else None,
        image_sizes=sizes,
    )
