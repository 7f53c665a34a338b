"""ImageNet (ImageFolder, flat val + LOC_val_solution.csv or devkit ground truth) and any image folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from csra_posthoc import CSRAError, load_dataset
from csra_posthoc.data.fixtures import write_devkit, write_image, write_image_folder, write_loc_solution
from csra_posthoc.data.imagenet import imagenet_wnids
from csra_posthoc.data.transforms import eval_transform
from csra_posthoc.models.base import DataConfig

TENCH, CAT, ESPRESSO = "n01440764", "n02124075", "n07920052"  # indices 0, 285, 967


def test_imagenet_folder_uses_the_standard_1000_class_order(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "val", {ESPRESSO: 2, CAT: 3})
    images = load_dataset("imagenet", tmp_path)
    assert images.single_label and images.split == "val" and len(images.classes) == 1000
    assert images.classes[285] == CAT and images.classes[967] == ESPRESSO
    assert images.labels.argmax(1).tolist() == [285, 285, 285, 967, 967]  # sorted wnid folders, sorted files
    assert images.labels.sum(1).tolist() == [1] * 5
    assert images.ids[0] == f"{CAT}/{CAT}_0.JPEG"


def test_flat_val_with_loc_solution(tmp_path: Path) -> None:
    rows = [("ILSVRC2012_val_00000003", ESPRESSO), ("ILSVRC2012_val_00000001", TENCH), ("ILSVRC2012_val_00000002", CAT)]
    for k, (image_id, _) in enumerate(rows):
        write_image(tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val" / f"{image_id}.JPEG", (30, 20), seed=k, fmt="JPEG")
    write_loc_solution(tmp_path / "LOC_val_solution.csv", rows)
    images = load_dataset("imagenet", tmp_path)  # Kaggle layout, label file found at the top
    assert images.ids == [r[0] for r in rows]
    assert images.labels.argmax(1).tolist() == [967, 0, 285]
    assert images.sources == [tmp_path / "LOC_val_solution.csv"]


def test_flat_val_with_devkit_ground_truth(tmp_path: Path) -> None:
    # ILSVRC2012_IDs are not the sorted-wnid index: meta.mat maps them
    write_devkit(tmp_path / "ILSVRC2012_devkit_t12" / "data", {TENCH: 449, CAT: 7, ESPRESSO: 900}, [7, 449, 900, 7])
    for i in range(1, 5):
        write_image(tmp_path / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", (24, 24), seed=i, fmt="JPEG")
    images = load_dataset("imagenet", tmp_path)
    assert images.ids == [f"ILSVRC2012_val_{i:08d}" for i in range(1, 5)]
    assert images.labels.argmax(1).tolist() == [285, 0, 967, 285]


def test_imagenet_bad_input(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "val", {CAT: 1, "n99999999": 1})
    with pytest.raises(CSRAError, match="folder 'n99999999' is not an ImageNet-1k wnid"):
        load_dataset("imagenet", tmp_path)
    flat = tmp_path / "flat"
    write_image(flat / "val" / "ILSVRC2012_val_00000001.JPEG", (20, 20), fmt="JPEG")
    with pytest.raises(CSRAError, match="needs its labels: put LOC_val_solution.csv"):
        load_dataset("imagenet", flat)
    write_loc_solution(
        flat / "LOC_val_solution.csv", [("ILSVRC2012_val_00000001", CAT), ("ILSVRC2012_val_00000002", "n12345678")]
    )
    with pytest.raises(CSRAError, match="LOC_val_solution.csv:3: unknown wnid 'n12345678'"):
        load_dataset("imagenet", flat)
    write_loc_solution(
        flat / "LOC_val_solution.csv", [("ILSVRC2012_val_00000001", CAT), ("ILSVRC2012_val_00000002", TENCH)]
    )
    with pytest.raises(CSRAError, match="ILSVRC2012_val_00000002.JPEG: image listed in .*LOC_val_solution.csv"):
        load_dataset("imagenet", flat)
    assert load_dataset("imagenet", flat, skip_missing=True).ids == ["ILSVRC2012_val_00000001"]
    gt = write_devkit(tmp_path / "dk", {CAT: 7}, [7, 8])
    with pytest.raises(CSRAError, match="ILSVRC2012_validation_ground_truth.txt:2: '8' is not an ILSVRC2012_ID"):
        load_dataset("imagenet", flat, labels=gt)


def test_generic_folder_and_split_selection(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", {"b": 2, "a": 2})
    write_image_folder(tmp_path / "val", {"b": 1, "a": 2})
    images = load_dataset("folder", tmp_path)
    assert images.split == "val" and images.classes == ["a", "b"]
    assert images.labels.tolist() == [[1, 0], [1, 0], [0, 1]]
    assert load_dataset("folder", tmp_path, split="train").split == "train"
    wide = load_dataset("folder", tmp_path, classes=["x", "b", "a"])  # a head's class order, a superset
    assert wide.labels.argmax(1).tolist() == [2, 2, 1]
    with pytest.raises(CSRAError, match="folder 'a' is not in `classes`"):
        load_dataset("folder", tmp_path, classes=["b"])
    with pytest.raises(CSRAError, match="split test: no folder"):
        load_dataset("folder", tmp_path, split="test")
    (tmp_path / "val" / "c").mkdir()
    with pytest.raises(CSRAError, match="Found no valid file for the classes c"):
        load_dataset("folder", tmp_path)


def test_single_label_data_gets_the_models_centre_crop() -> None:
    import timm
    from timm.data import create_transform, resolve_model_data_config

    cfg = resolve_model_data_config(timm.create_model("test_resnet", pretrained=False))
    ours = DataConfig(
        input_size=64, mean=cfg["mean"], std=cfg["std"], interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"]
    )
    image = Image.fromarray((torch.rand(50, 90, 3) * 255).byte().numpy())
    tf, desc = eval_transform(ours, None, single_label=True)
    reference = create_transform(
        64, interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"], crop_pct=cfg["crop_pct"]
    )
    assert desc["kind"] == "center-crop" and desc["resize"] == int(64 / cfg["crop_pct"])
    assert torch.equal(tf(image), reference(image))
    square, desc = eval_transform(ours, None, single_label=False)
    assert desc["kind"] == "square-resize" and square(image).shape == (3, 64, 64)
    assert eval_transform(ours, None, single_label=False, choice="crop")[1]["kind"] == "center-crop"
    tv = DataConfig(input_size=240, crop_pct=240 / 255)  # torchvision efficientnet_b1: resize 255, crop 240
    assert eval_transform(tv, None, single_label=True)[1]["resize"] == 255


def test_the_1000_wnids_are_sorted() -> None:
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and wnids == sorted(wnids)
