"""Image decoding edge cases: PIL's decompression-bomb limit, high-bit-depth PNGs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from csra_posthoc import CSRAError, extract, load_dataset, load_model
from csra_posthoc.data.base import load_rgb


def _big_first_image(voc_dir: Path) -> Path:
    path = sorted((voc_dir / "VOCdevkit/VOC2007/JPEGImages").glob("*.jpg"))[0]
    Image.fromarray(np.full((100, 120, 3), 128, np.uint8)).save(path)  # 12,000 pixels
    return path


def test_image_over_the_bomb_limit_is_a_named_error(fresh_voc_dir: Path, monkeypatch) -> None:
    path = _big_first_image(fresh_voc_dir)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)  # PIL refuses above 2x: 10,000 < 12,000
    adapter = load_model("test_resnet", random_init=True, num_classes=20)
    with pytest.raises(CSRAError) as info:
        extract(adapter, load_dataset("voc2007", fresh_voc_dir), img_size=64, use_cache=False)
    msg = str(info.value)
    assert msg.startswith(f"{path}: image has 12,000 pixels") and "decompression-bomb limit of 10,000" in msg
    assert "downscale it" in msg and "\n" not in msg


def test_image_in_the_warning_zone_decodes_silently(fresh_voc_dir: Path, monkeypatch) -> None:
    path = _big_first_image(fresh_voc_dir)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 12,000: PIL warns but decodes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would fail the test
        im = load_rgb(path)
    assert im.size == (120, 100) and im.mode == "RGB"


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F"])
def test_high_bit_depth_matches_the_8_bit_copy(tmp_path: Path, mode: str) -> None:
    photo = skdata.camera()  # real 8-bit photo, 512 x 512
    Image.fromarray(photo).save(tmp_path / "8.png")
    sixteen = photo.astype(np.uint16) * 257  # the same photo at 16 bits: full range 0..65535
    if mode == "I;16":
        Image.fromarray(sixteen).save(tmp_path / "hi.png")  # a real 16-bit grayscale PNG
        assert Image.open(tmp_path / "hi.png").mode in ("I;16", "I")
    elif mode == "I;16B":
        Image.fromarray(sixteen.astype(">u2")).save(tmp_path / "hi.tiff")
    elif mode == "I":
        Image.fromarray(sixteen.astype(np.int32)).save(tmp_path / "hi.tiff")
    else:
        Image.fromarray((photo / 255.0).astype(np.float32)).save(tmp_path / "hi.tiff")  # float in [0, 1]
    hi = next(tmp_path.glob("hi.*"))
    eight = np.asarray(load_rgb(tmp_path / "8.png")).astype(int)
    got = np.asarray(load_rgb(hi)).astype(int)
    assert got.shape == eight.shape == (512, 512, 3)
    assert np.abs(got - eight).max() <= 1
    assert (got == 255).mean() < 0.05  # plain convert("RGB") saturated most of the picture
