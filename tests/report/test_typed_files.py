"""Typed files between layers (issue 21, part 3): the results JSON (report.results_file.ResultsFile),
the patched-model config (patched.config.PatchedConfig) and the transform description
(data.transforms.TransformSpec), each with to_json / from_json, a version, and unknown fields kept."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import csra_posthoc as cp
from csra_posthoc.data.transforms import TransformSpec, build_transform, transform_description
from csra_posthoc.errors import CSRAError
from csra_posthoc.models.base import DataConfig
from csra_posthoc.patched.config import FORMAT_VERSION, PatchedConfig
from csra_posthoc.report.results_file import SCHEMA, ResultsFile

# what other engineers add to the results JSON (issue 21): an unknown version must keep it
LATER_FIELDS = {
    "location_head": {"kind": "probe", "fingerprint": "ab" * 16},
    "by_object_size": {"small": {"mAP": 40.0}, "large": {"mAP": 70.0}},
    "by_label_count": {"1": {"mAP": 60.0}},
}
TEST_POOL_ROW = {"variant": "test-pool", "temperature": None, "heads": None, "lam": 0.4, "metrics": {"mAP": 61.0}}


def results_json() -> dict:
    row = {"variant": "max", "temperature": None, "heads": None, "lam": 0.2, "metrics": {"mAP": 60.0}}
    return {
        "schema": 1,
        "model": "test_resnet",
        "dataset": "voc2007",
        "split": "test",
        "num_images": 4,
        "classes": ["a", "b"],
        "primary_metric": "mAP",
        "head": "the model's own classifier",
        "transform": {
            "kind": "square-resize",
            "size": 64,
            "interpolation": "bilinear",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        },
        "baseline": {"mAP": 58.0},
        "rows": [row, TEST_POOL_ROW],
        "best": row,
        "fixed": row,
        "best_variant": row,
        **LATER_FIELDS,
    }


def test_results_file_round_trip_keeps_unknown_fields_and_test_pool_rows(tmp_path: Path) -> None:
    data = results_json()
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    results = ResultsFile.read(path, required=("model", "best"), param="from_results", label="from_results")
    assert SCHEMA == 1 and results.schema == 1
    assert results.to_json() == {
        **data,
        "head_fingerprint": None,
        "head_file": None,
        "weights": None,
        "weights_fingerprint": None,
    }
    assert {k: results.extra[k] for k in LATER_FIELDS} == LATER_FIELDS and results.extra["rows"][1] == TEST_POOL_ROW
    assert results.transform == TransformSpec("square-resize", 64, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert results.settings("best") == cp.CSRASettings(0.2, math.inf, None)
    assert results.where == f"from_results {path}"


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda d: d.update(schema=2), "schema 2, this version reads schema 1"),
        (lambda d: d.pop("schema"), "no schema field"),
        (lambda d: d.pop("best"), "not a csra-posthoc results file (no model / best)"),
    ],
)
def test_results_file_refusals_keep_their_lines(tmp_path: Path, edit, fragment: str) -> None:
    data = results_json()
    edit(data)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CSRAError) as info:
        ResultsFile.read(path, required=("model", "best"), param="paths")
    assert str(info.value).startswith(f"{path}: ") and fragment in str(info.value) and info.value.param == "paths"


def test_results_file_refuses_nan_by_name(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results_json()).replace('"mAP": 58.0', '"mAP": NaN'))
    with pytest.raises(CSRAError, match="not a finite number"):
        ResultsFile.read(path)


def test_a_bad_row_is_named_with_the_file() -> None:
    data = results_json()
    data["best"] = {**data["best"], "lam": -0.5}
    results = ResultsFile.from_json(data, path="r.json", label="from_results")
    with pytest.raises(
        CSRAError, match=r"^from_results r.json: its 'best' row has lam -0.5: it must be a finite number >= 0$"
    ):
        results.row("best")


def test_patched_config_round_trip_keeps_unknown_fields(tmp_path: Path) -> None:
    patched = cp.patch(cp.load_model("test_resnet", random_init=True), lam=0.3, heads=4, img_size=32)
    patched.config.extra["later_field"] = {"kind": "probe"}  # a later release's field
    path = tmp_path / "p.safetensors"
    cp.save_patched(patched, path)
    restored = cp.load_patched(path)
    assert isinstance(restored.config, PatchedConfig) and restored.config.format_version == FORMAT_VERSION
    assert restored.config.extra == {"later_field": {"kind": "probe"}}
    assert (
        restored.config.temperatures == (1.0, 2.0, 4.0, math.inf)
        and restored.config.heads == 4
        and restored.config.temperature is None
    )
    written = restored.config.to_json()
    assert written["temperatures"] == [1.0, 2.0, 4.0, "inf"] and written["later_field"] == {"kind": "probe"}
    assert PatchedConfig.from_json(json.loads(json.dumps(written)), path) == restored.config


def test_patched_config_refuses_a_future_version() -> None:
    patched = cp.patch(cp.load_model("test_resnet", random_init=True), lam=0.3, img_size=32)
    data = patched.config.to_json()
    data["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(CSRAError, match="is not one this version reads"):
        PatchedConfig.from_json(data, rebuild=False)


def test_transform_spec_round_trips_the_description_and_builds_timms_transform(tmp_path: Path) -> None:
    """The crop description's transform equals timm's own eval transform on a real photo."""
    import timm.data
    from skimage import data

    cfg = DataConfig(
        input_size=96,
        interpolation="bicubic",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        crop_pct=0.875,
        crop_mode="center",
    )
    desc = transform_description(cfg, None, single_label=True)
    spec = TransformSpec.from_json(desc)
    assert spec.to_json() == desc and list(desc) == [
        "kind",
        "size",
        "resize",
        "crop_pct",
        "crop_mode",
        "interpolation",
        "mean",
        "std",
    ]
    assert TransformSpec.VERSION == 1
    photo = Image.fromarray(data.astronaut())
    theirs = timm.data.create_transform(
        96, interpolation="bicubic", mean=cfg.mean, std=cfg.std, crop_pct=0.875, crop_mode="center"
    )
    assert torch.allclose(build_transform(spec)(photo), theirs(photo), atol=1e-6)
    kept = TransformSpec.from_json({**desc, "note": "later"})
    assert kept.to_json() == {**desc, "note": "later"}


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        ({"kind": "zoom"}, "kind 'zoom'"),
        ({"size": 0}, "size is not a positive integer"),
        ({"mean": [0.5, 0.5]}, "mean is not a list of 3 finite numbers"),
        ({"std": [1.0, 0.0, 1.0]}, "std has a value <= 0"),
    ],
)
def test_transform_spec_refuses_a_bad_description(edit: dict, fragment: str) -> None:
    desc = {
        "kind": "square-resize",
        "size": 64,
        "interpolation": "bilinear",
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        **edit,
    }
    with pytest.raises(ValueError, match=fragment):
        TransformSpec.from_json(desc)


def test_square_spec_on_a_real_photo_is_the_plain_resize(tmp_path: Path) -> None:
    from skimage import data

    spec = TransformSpec("square-resize", 48, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    photo = Image.fromarray(data.coffee())
    x = build_transform(spec)(photo)
    pixels = np.asarray(photo.resize((48, 48), Image.BILINEAR), dtype=np.float32) / 255.0
    assert torch.allclose(x, (torch.from_numpy(pixels).permute(2, 0, 1) - 0.5) / 0.25, atol=1e-5)
