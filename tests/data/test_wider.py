"""WIDER-Attribute loader: one sample per person box, 1 / -1 / 0 labels, clipped crops, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF

from csra_posthoc import CSRAError, load_dataset
from csra_posthoc.data import WIDER_ATTRIBUTES, ImageDataset
from csra_posthoc.data.fixtures import write_wider
from csra_posthoc.metrics import thresholded_metrics
from tests.helpers import WIDER_A as A
from tests.helpers import WIDER_B as B
from tests.helpers import WIDER_IMAGES as IMAGES


@pytest.fixture
def wider(tmp_path: Path) -> Path:
    write_wider(tmp_path / "wider", IMAGES, names=WIDER_ATTRIBUTES)
    return tmp_path / "wider"


def test_samples_labels_unknowns_and_boxes(wider: Path) -> None:
    images = load_dataset("wider", wider)
    assert images.classes == WIDER_ATTRIBUTES and images.unknown == "negative"
    assert images.ids == [
        "0--Parade/0_Parade_marchingband_1_1.jpg#0",
        "0--Parade/0_Parade_marchingband_1_1.jpg#1",
        "1--Handshaking/1_Handshaking_2.jpg#0",
    ]
    to_ours = {1: 1, -1: 0, 0: -1}
    assert images.labels.tolist() == [[to_ours[v] for v in A], [to_ours[v] for v in B], [to_ours[v] for v in B]]
    # by hand: (left, upper, right, lower) = (floor x, floor y, ceil(x + w), ceil(y + h)) clipped to the image
    assert images.boxes == [(2, 3, 12, 15), (30, 10, 40, 30), (0, 0, 6, 7)]
    assert any("1 of 4 boxes have no area" in n for n in images.notes)
    assert images.paths[2] == wider / "Image" / "1--Handshaking" / "1_Handshaking_2.jpg"


def test_crops_are_the_box_pixels(wider: Path) -> None:
    images = load_dataset("wider", wider)
    crops = ImageDataset(images, TF.pil_to_tensor, size=8)
    _, crop, err = crops[1]
    assert err == "" and crop.shape == (3, 20, 10)  # rows 10..29, columns 30..39
    assert crop[0, 0, 0] == 6 * 30 and crop[1, 0, 0] == 8 * 10  # R = 6x, G = 8y at the box corner
    assert crop[0, -1, -1] == 6 * 39 and crop[1, -1, -1] == 8 * 29
    _, crop, _ = crops[2]
    assert crop.shape == (3, 7, 6) and crop[0, 0, 0] == 0 and crop[1, 0, 0] == 0


def test_unspecified_is_out_of_ap_but_negative_in_cp(wider: Path) -> None:
    images = load_dataset("wider", wider)
    scores = torch.full(images.labels.shape, 5.0)  # everything predicted positive
    as_negative = thresholded_metrics(scores, images.labels, unknown=images.unknown)
    excluded = thresholded_metrics(scores, images.labels, unknown="exclude")
    assert as_negative["OP"] < excluded["OP"]  # unknowns became false positives
    positives = int((images.labels == 1).sum())
    assert as_negative["OP"] == pytest.approx(100.0 * positives / images.labels.numel())


def test_default_names_and_trainval_split(tmp_path: Path) -> None:
    write_wider(tmp_path / "w", IMAGES[1:], split="trainval")
    images = load_dataset("wider", tmp_path / "w", split="trainval")
    assert images.classes == WIDER_ATTRIBUTES and images.split == "trainval"


def test_bad_input(wider: Path, tmp_path: Path) -> None:
    ann = wider / "Annotations" / "wider_attribute_test.json"
    data = json.loads(ann.read_text())
    data["images"][1]["targets"][0]["bbox"] = [25, 3, 5, 5]  # starts right of a 20-px-wide image
    ann.write_text(json.dumps(data))
    with pytest.raises(
        CSRAError, match="images\\[1\\].targets\\[0\\] box \\[25, 3, 5, 5\\] lies outside its 20x24 image"
    ):
        load_dataset("wider", wider)
    del data["images"][1]["targets"][0]["attribute"]
    ann.write_text(json.dumps(data))
    with pytest.raises(CSRAError, match="images\\[1\\].targets\\[0\\] has no 'attribute' key"):
        load_dataset("wider", wider)
    data["images"][1]["targets"] = [{"bbox": [1, 1, 3, 3], "attribute": [2] * 14}]
    ann.write_text(json.dumps(data))
    with pytest.raises(CSRAError, match="must be 14 values of 1, -1 or 0"):
        load_dataset("wider", wider)
    (wider / "Image" / "1--Handshaking" / "1_Handshaking_2.jpg").unlink()
    with pytest.raises(CSRAError, match="1_Handshaking_2.jpg: image listed in .*skip_missing=True"):
        load_dataset("wider", wider)
    images = load_dataset("wider", wider, skip_missing=True)
    assert len(images) == 2 and any("1 images listed" in n for n in images.notes)
    with pytest.raises(CSRAError, match="no such annotation file"):
        load_dataset("wider", wider, split="trainval")
    with pytest.raises(CSRAError, match="keep_empty does not apply to dataset=wider"):
        load_dataset("wider", wider, keep_empty=True)
