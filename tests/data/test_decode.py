"""Decode policies on real JPEGs (scikit-image photos): 'pil' and the uint8 pipeline are exact,
'draft' decodes fewer pixels only where the target is at most half the source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from csra_posthoc.data.base import ImageDataset, LabelledImages, load_rgb
from csra_posthoc.data.decode import (
    check_decode,
    decode_key,
    draft_request,
    image_loader,
    normalize_batch,
    pil_stage,
)
from csra_posthoc.data.transforms import build_transform, transform_description
from csra_posthoc.errors import CSRAError
from csra_posthoc.models.base import DataConfig

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """COCO-like JPEGs: 640x480, 480x640, and one 300x451 (chelsea, too small to draft at 224)."""
    folder = tmp_path_factory.mktemp("photos")
    out = []
    for name, size in (("coffee", (640, 480)), ("astronaut", (480, 640)), ("chelsea", None)):
        im = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        im = im.resize(size, Image.BICUBIC) if size else im
        im.save(folder / f"{name}.jpg", quality=90)
        out.append(folder / f"{name}.jpg")
    return out


DESCS = {
    "square224": transform_description(DataConfig(), 224, single_label=False),
    "square448": transform_description(DataConfig(), 448, single_label=False),
    "crop224": transform_description(DataConfig(), 224, single_label=True),
}


@pytest.mark.parametrize("which", sorted(DESCS))
@pytest.mark.parametrize("channels_last", [False, True])
def test_uint8_pipeline_is_bit_equal_to_the_model_transform(
    photos: list[Path], which: str, channels_last: bool
) -> None:
    desc = DESCS[which]
    full, stage = build_transform(desc), pil_stage(desc)
    assert stage is not None
    ref = torch.stack([full(load_rgb(p)) for p in photos])
    u8 = torch.stack([stage(load_rgb(p)) for p in photos])
    assert u8.dtype == torch.uint8 and u8.shape == (len(photos), desc["size"], desc["size"], 3)
    got = normalize_batch(u8, desc["mean"], desc["std"], channels_last=channels_last)
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("which", sorted(DESCS))
def test_pil_policy_is_todays_path(photos: list[Path], which: str) -> None:
    desc = DESCS[which]
    assert image_loader("pil", desc) is load_rgb
    assert decode_key("pil", desc) == desc  # old cache keys stay valid


def test_draft_only_when_target_is_at_most_half_the_source(photos: list[Path]) -> None:
    coffee, astronaut, chelsea = photos
    draft224 = image_loader("draft", DESCS["square224"])
    assert draft224(coffee).size == (320, 240)  # 480 // 224 = 2: decoded at 1/2
    assert draft224(astronaut).size == (240, 320)
    assert draft224(chelsea).size == (451, 300)  # 300 < 448: full size
    assert image_loader("draft", DESCS["square448"])(coffee).size == (640, 480)  # 480 < 896
    assert image_loader("draft", DESCS["crop224"])(coffee).size == (640, 480)  # short side must stay >= 256
    big = photos[0].with_name("big.jpg")
    Image.open(coffee).resize((1280, 960)).save(big, quality=90)
    assert image_loader("draft", DESCS["crop224"])(big).size == (640, 480)  # 960 // 256 = 3 -> 1/2


def test_draft_changes_pixels_a_little_and_enters_the_key(photos: list[Path]) -> None:
    desc = DESCS["square224"]
    full = build_transform(desc)
    coffee = photos[0]
    exact, drafted = full(load_rgb(coffee)), full(image_loader("draft", desc)(coffee))
    assert drafted.shape == exact.shape
    diff = (drafted - exact).abs()
    assert 0 < float(diff.mean()) < 0.05  # normalised units: ~1/100 of the range on average
    assert decode_key("draft", desc) == {**desc, "decode": "draft"}
    assert decode_key("draft", {**desc, "kind": "center-crop", "crop_mode": "squash"})["kind"] == "center-crop"


def test_draft_leaves_png_alone(tmp_path: Path) -> None:
    path = tmp_path / "coffee.png"
    Image.fromarray(skdata.coffee()).resize((640, 480)).save(path)
    assert image_loader("draft", DESCS["square224"])(path).size == (640, 480)
    assert np.array_equal(np.asarray(image_loader("draft", DESCS["square224"])(path)), np.asarray(load_rgb(path)))


def test_draft_request_per_transform_kind() -> None:
    assert draft_request(DESCS["square448"]) == (448, 448)
    assert draft_request(DESCS["crop224"]) == (256, 256)
    assert draft_request({**DESCS["crop224"], "crop_mode": "border"}) is None


def test_unknown_policy_names_the_parameter() -> None:
    with pytest.raises(CSRAError, match="decode 'fast': choose pil or draft") as info:
        check_decode("fast")
    assert info.value.param == "decode"


def test_image_dataset_uses_the_loader_for_whole_images_only(photos: list[Path]) -> None:
    desc = DESCS["square224"]
    full = build_transform(desc)
    images = LabelledImages("t", "test", photos[0].parent, ["a"], [photos[0]], torch.zeros(1, 1), ["c"])
    drafted = ImageDataset(images, full, 224, loader=image_loader("draft", desc))[0][1]
    assert torch.equal(drafted, full(image_loader("draft", desc)(photos[0])))
    boxed = LabelledImages(
        "t", "test", photos[0].parent, ["a"], [photos[0]], torch.zeros(1, 1), ["c"], boxes=[(0, 0, 320, 240)]
    )
    crop = ImageDataset(boxed, full, 224, loader=image_loader("draft", desc))[0][1]
    assert torch.equal(crop, full(load_rgb(photos[0]).crop((0, 0, 320, 240))))  # box in full-size pixels
