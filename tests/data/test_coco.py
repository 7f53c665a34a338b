"""COCO loader on a few-image instances_val2014.json: labels, empty images, crowd, layouts, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from csra_posthoc import CSRAError, load_dataset
from csra_posthoc.data.fixtures import write_coco
from tests.helpers import COCO_ANNOTATIONS as ANNOTATIONS
from tests.helpers import COCO_CATEGORIES as CATEGORIES
from tests.helpers import COCO_IMAGES as IMAGES

# non-contiguous ids listed out of order: columns must follow ascending id (1, 3, 90)


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    write_coco(tmp_path / "coco", IMAGES, ANNOTATIONS, CATEGORIES)
    return tmp_path / "coco"


def test_labels_classes_and_skipped_empty_images(coco: Path) -> None:
    images = load_dataset("coco2014", coco)
    assert images.classes == ["person", "car", "toothbrush"]
    assert images.ids == ["7", "9", "42"]  # ascending image id, image 100 skipped
    expected = torch.tensor([[0, 1, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.int8)
    assert torch.equal(images.labels, expected)
    assert images.paths[0] == coco / "val2014" / "COCO_val2014_000000000007.jpg"
    assert any("1 of 4 images have no annotation" in n and "skipped" in n for n in images.notes)
    assert any("1 iscrowd annotations count as labels" in n for n in images.notes)
    assert images.sources == [coco / "annotations" / "instances_val2014.json"]


def test_keep_empty_adds_an_all_negative_row(coco: Path) -> None:
    images = load_dataset("coco2014", coco, keep_empty=True)
    assert images.ids == ["7", "9", "42", "100"]
    assert images.labels[3].tolist() == [0, 0, 0]
    assert images.fingerprint() != load_dataset("coco2014", coco).fingerprint()


def test_other_layouts_through_ann_file_and_image_dir(tmp_path: Path) -> None:
    ann = write_coco(tmp_path / "c17", IMAGES, ANNOTATIONS, CATEGORIES, year="2017")
    images = load_dataset("coco2014", tmp_path / "c17", ann_file=ann, image_dir=tmp_path / "c17" / "val2017")
    assert images.labels.shape == (3, 3)
    assert load_dataset("coco2017", tmp_path / "c17").ids == images.ids
    (tmp_path / "flat" / "images").mkdir(parents=True)  # the official prepare script's images/val2014/
    (tmp_path / "c17" / "val2017").rename(tmp_path / "flat" / "images" / "val2014")
    (tmp_path / "c17" / "annotations").rename(tmp_path / "flat" / "annotations")
    (tmp_path / "flat" / "annotations" / "instances_val2017.json").rename(
        tmp_path / "flat" / "annotations" / "instances_val2014.json"
    )
    assert load_dataset("coco2014", tmp_path / "flat").ids == images.ids


def test_missing_image_is_named_or_skipped_and_counted(coco: Path) -> None:
    (coco / "val2014" / "COCO_val2014_000000000009.jpg").unlink()
    with pytest.raises(CSRAError, match="COCO_val2014_000000000009.jpg: image listed in .*skip_missing=True"):
        load_dataset("coco2014", coco)
    images = load_dataset("coco2014", coco, skip_missing=True)
    assert images.ids == ["7", "42"]
    assert any("1 images listed in instances_val2014.json are missing" in n for n in images.notes)


def _truncated(data: dict) -> str:
    return json.dumps(data)[:-20]


def _no_categories(data: dict) -> str:
    return json.dumps({k: v for k, v in data.items() if k != "categories"})


def _annotations(annotations: list[dict]):
    return lambda data: json.dumps({"images": IMAGES, "annotations": annotations, "categories": CATEGORIES})


@pytest.mark.parametrize(
    ("rewrite", "kwargs", "match"),
    [
        (None, {"split": "train"}, "no annotations/instances_train2014.json for split=train"),
        (None, {"ann_file": "nope.json"}, "ann_file .*nope.json: no such annotation file"),
        (_truncated, {}, "not valid JSON \\(line 1"),
        (_no_categories, {}, "the file has no 'categories' key"),
        (_annotations([{"image_id": 42}]), {}, "annotations\\[0\\] has no 'category_id' key"),
        (_annotations([{"image_id": 5, "category_id": 1}]), {}, "points at image_id 5"),
        (None, {"difficult": "positive"}, "difficult does not apply to dataset=coco2014"),
    ],
    ids=[
        "no-split-file",
        "no-ann-file",
        "truncated-json",
        "no-categories",
        "no-category-id",
        "unknown-image-id",
        "difficult",
    ],
)
def test_bad_annotation_files_are_one_line_errors(
    coco: Path, tmp_path: Path, rewrite, kwargs: dict, match: str
) -> None:
    ann = coco / "annotations" / "instances_val2014.json"
    if rewrite is not None:
        ann.write_text(rewrite(json.loads(ann.read_text())))
    if "ann_file" in kwargs:
        kwargs = {**kwargs, "ann_file": tmp_path / kwargs["ann_file"]}
    with pytest.raises(CSRAError, match=match):
        load_dataset("coco2014", coco, **kwargs)
