"""VOC and CSV loaders: label matrices checked against values worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from csra_posthoc import CSRAError, load_dataset
from csra_posthoc.data import read_classes
from csra_posthoc.data.fixtures import write_voc

ANNOTATIONS = {
    "a": [("cat", 0), ("dog", 1)],  # dog only difficult
    "b": [("dog", 0), ("dog", 1), ("person", 1), ("person", 0)],  # dog and person have a plain instance
    "c": [("car", 1)],
}


def label_row(images, image_id: str, names: list[str]) -> list[int]:
    row = images.labels[images.ids.index(image_id)]
    return [int(row[images.classes.index(n)]) for n in names]


@pytest.mark.parametrize(
    "policy,expected_a_dog,expected_c_car",
    [("ignore", -1, -1), ("positive", 1, 1), ("negative", 0, 0)],
)
def test_voc_difficult_policies(tmp_path: Path, policy: str, expected_a_dog: int, expected_c_car: int) -> None:
    write_voc(tmp_path, ANNOTATIONS)
    images = load_dataset("voc2007", tmp_path, difficult=policy)
    assert images.labels.shape == (3, 20) and images.labels.dtype == torch.int8
    assert label_row(images, "a", ["cat", "dog", "car"]) == [1, expected_a_dog, 0]
    assert label_row(images, "b", ["dog", "person", "cat"]) == [1, 1, 0]
    assert label_row(images, "c", ["car", "cat"]) == [expected_c_car, 0]
    assert int((images.labels != 0).sum()) == 3 + 2 * (policy != "negative")


@pytest.mark.parametrize("layout", ["devkit", "year", "itself"])
def test_voc_accepts_three_layouts(tmp_path: Path, layout: str) -> None:
    voc = write_voc(tmp_path / "raw", ANNOTATIONS)
    target = {"devkit": tmp_path / "raw", "year": voc.parent, "itself": voc}[layout]
    assert load_dataset("voc2007", target).ids == ["a", "b", "c"]


def test_voc_custom_classes_and_errors(tmp_path: Path) -> None:
    write_voc(tmp_path, {"x": [("sneaker", 0)], "y": [("bag", 0), ("sneaker", 1)]})
    with pytest.raises(CSRAError, match="class 'sneaker' is not in the class list; pass `classes`"):
        load_dataset("voc2007", tmp_path)
    images = load_dataset("voc2007", tmp_path, classes=["bag", "sneaker"])
    assert images.labels.tolist() == [[0, 1], [1, -1]]
    with pytest.raises(CSRAError, match="split trainval: no split file"):
        load_dataset("voc2007", tmp_path, split="trainval", classes=["bag", "sneaker"])
    with pytest.raises(CSRAError, match="no such directory"):
        load_dataset("voc2007", tmp_path / "nope")
    (tmp_path / "VOCdevkit/VOC2007/JPEGImages/x.jpg").unlink()
    with pytest.raises(CSRAError, match="x.jpg: image listed in .*test.txt does not exist .*skip_missing=True"):
        load_dataset("voc2007", tmp_path, classes=["bag", "sneaker"])
    kept = load_dataset("voc2007", tmp_path, classes=["bag", "sneaker"], skip_missing=True)
    assert kept.ids == ["y"] and any("1 images listed in test.txt are missing" in n for n in kept.notes)


def test_voc2012_scores_val_by_default_and_says_so(tmp_path: Path) -> None:
    write_voc(tmp_path, {"2008_000001": [("cat", 0)], "2008_000002": [("dog", 0)]}, split="val", year="2012")
    images = load_dataset("voc2012", tmp_path)
    assert images.dataset == "voc2012" and images.split == "val" and images.labels.shape == (2, 20)
    assert any("VOC2012: the val split is scored (test labels are not public)" in n for n in images.notes)


def test_read_classes(tmp_path: Path) -> None:
    assert read_classes("a, b", None) == ["a", "b"]
    (tmp_path / "c.txt").write_text("x\ny\n")
    assert read_classes(None, tmp_path / "c.txt") == ["x", "y"]
    with pytest.raises(CSRAError, match="unique"):
        read_classes("a,a", None)


def test_csv_loader(tmp_path: Path) -> None:
    for name in ("p.png", "q.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text("path,shoe,bag\np.png,1,-1\nq.png,0,1\n")
    images = load_dataset("csv", tmp_path, labels=tmp_path / "labels.csv")
    assert images.classes == ["shoe", "bag"]
    assert images.labels.tolist() == [[1, -1], [0, 1]]
    (tmp_path / "bad.csv").write_text("path,shoe\np.png,2\n")
    with pytest.raises(CSRAError, match="bad.csv:2: labels must be 1, 0 or -1"):
        load_dataset("csv", tmp_path, labels=tmp_path / "bad.csv")
    (tmp_path / "missing.csv").write_text("path,shoe\nr.png,1\n")
    with pytest.raises(CSRAError, match="r.png does not exist"):
        load_dataset("csv", tmp_path, labels=tmp_path / "missing.csv")
