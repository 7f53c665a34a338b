"""Writers for tiny datasets in the official on-disk formats (VOC, COCO, WIDER-Attribute, ImageNet).

Shared by the test suite and the benchmarks (``benchmarks/loading_speed.py``), so they live in the
package, importable without a ``sys.path`` hack (like ``torch.testing``). Every file is what the
real dataset ships, just with a handful of images. Nothing in the library imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .voc import VOC_CLASSES


def write_voc(
    root: Path,
    annotations: dict[str, list[tuple[str, int]]],
    split: str = "test",
    size=(48, 64),
    seed=0,
    year: str = "2007",
) -> Path:
    """A VOC folder: ``annotations`` maps image id -> [(class, difficult), ...]."""
    voc = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for image_id, objects in annotations.items():
        pixels = (rng.random((*size, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(voc / "JPEGImages" / f"{image_id}.jpg")
        objs = "".join(
            f"<object><name>{name}</name><difficult>{difficult}</difficult></object>" for name, difficult in objects
        )
        (voc / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{objs}</annotation>")
    (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(annotations) + "\n")
    return voc


def random_voc_annotations(n: int, seed: int = 0) -> dict[str, list[tuple[str, int]]]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        picks = rng.choice(len(VOC_CLASSES), size=int(rng.integers(1, 4)), replace=False)
        out[f"{i:06d}"] = [(VOC_CLASSES[c], int(rng.random() < 0.2)) for c in picks]
    # every class gets one plain positive so mAP covers all 20
    for c, name in enumerate(VOC_CLASSES):
        out[f"{c:06d}"].append((name, 0)) if c < n else None
    return out


def write_image(path: Path, size: tuple[int, int], seed: int = 0, fmt: str | None = None) -> Path:
    """A random RGB image ``size = (width, height)``; ``fmt='PNG'`` for exact pixels under any name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def coordinate_image(path: Path, size: tuple[int, int]) -> Path:
    """PNG pixels that encode their own position: R = 6x, G = 8y (so crops can be checked by hand)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    pixels = np.stack([6 * x, 8 * y, np.full_like(x, 77)], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def write_coco(
    root: Path,
    images: list[dict],
    annotations: list[dict],
    categories: list[dict],
    split: str = "val",
    year: str = "2014",
    write_images: bool = True,
) -> Path:
    """``root/annotations/instances_{split}{year}.json`` and ``root/{split}{year}/<file_name>``."""
    ann = root / "annotations" / f"instances_{split}{year}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    full_images = [{"height": im.get("height", 40), "width": im.get("width", 48), **im} for im in images]
    full_anns = [
        {"id": k + 1, "bbox": [1, 1, 5, 5], "area": 25.0, "iscrowd": 0, "segmentation": [], **a}
        for k, a in enumerate(annotations)
    ]
    ann.write_text(
        json.dumps(
            {"info": {}, "licenses": [], "images": full_images, "annotations": full_anns, "categories": categories}
        )
    )
    if write_images:
        for k, im in enumerate(full_images):
            write_image(root / f"{split}{year}" / im["file_name"], (im["width"], im["height"]), seed=k)
    return ann


def write_wider(root: Path, images: list[dict], split: str = "test", names: list[str] | None = None) -> Path:
    """``root/Annotations/wider_attribute_{split}.json`` (official keys) and the images under ``root/Image``.

    ``images``: ``{"file_name", "size": (w, h), "targets": [{"bbox": [x, y, w, h], "attribute": [...]}]}``;
    images are coordinate PNGs so crops can be checked."""
    ann = root / "Annotations" / f"wider_attribute_{split}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    data: dict = {
        "images": [{"file_name": im["file_name"], "scene_id": 0, "targets": im["targets"]} for im in images],
        "scene_id_map": {"0": "Parade"},
    }
    if names is not None:
        data["attribute_id_map"] = {str(k): n for k, n in enumerate(names)}
    ann.write_text(json.dumps(data))
    for im in images:
        if "size" in im:
            coordinate_image(root / "Image" / im["file_name"], im["size"])
    return ann


def write_image_folder(
    root: Path, counts: dict[str, int], size: tuple[int, int] = (40, 32), ext: str = ".JPEG"
) -> Path:
    """``root/<class>/<class>_<i><ext>``: the ImageFolder layout."""
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_image(root / name / f"{name}_{i}{ext}", size, seed=100 * c + i, fmt="JPEG")
    return root


def write_loc_solution(path: Path, rows: list[tuple[str, str]]) -> Path:
    """Kaggle's ``LOC_val_solution.csv``: ImageId, then the wnid and a box per object."""
    lines = ["ImageId,PredictionString"] + [f"{image_id},{wnid} 10 20 30 40 {wnid} 5 5 9 9 " for image_id, wnid in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_devkit(devkit_data: Path, ilsvrc_ids: dict[str, int], ground_truth: list[int]) -> Path:
    """The devkit's ``meta.mat`` (synsets: ILSVRC2012_ID, WNID, words, ..., num_children) for the
    given wnids plus one non-leaf synset, and ``ILSVRC2012_validation_ground_truth.txt``."""
    from scipy.io import savemat

    devkit_data.mkdir(parents=True, exist_ok=True)
    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O"),
              ("children", "O"), ("wordnet_height", "O"), ("num_train_images", "O")]  # fmt: skip
    entries = [(i, w, w, "", 0, np.zeros(0), 0, 1300) for w, i in ilsvrc_ids.items()]
    entries.append((1001, "n00001740", "entity", "", 2, np.array([1, 2]), 18, 0))  # an inner node: not a class
    synsets = np.array(entries, dtype=fields)
    savemat(str(devkit_data / "meta.mat"), {"synsets": synsets.reshape(-1, 1)})
    gt = devkit_data / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("".join(f"{i}\n" for i in ground_truth))
    return gt
