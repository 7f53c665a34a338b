"""attention: per-location scores of the top classes, consistent with the patched model's own scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from csra_posthoc.errors import CSRAError
from csra_posthoc.options import CSRASettings, ModelSource
from csra_posthoc.patched.attention import attention_maps, run_attention


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_maps_pool_to_the_patched_scores(tmp_path: Path, photo: Path) -> None:
    torch.manual_seed(0)
    res = run_attention(
        photo,
        tmp_path / "a.png",
        ModelSource("test_resnet", random_init=True),
        CSRASettings(lam=0.3),
        img_size=64,
        top_k=4,
        device="cpu",
    )
    assert (
        res.maps.shape == (4, 2, 2) and res.image.shape == (64, 64, 3) and 0 <= res.image.min() <= res.image.max() <= 1
    )
    flat = torch.from_numpy(res.maps).flatten(1)
    assert np.allclose(res.baseline, flat.mean(1).numpy(), atol=1e-5)
    assert np.allclose(res.patched, (flat.mean(1) + 0.3 * flat.amax(1)).numpy(), atol=1e-5)
    assert res.patched == sorted(res.patched, reverse=True)  # the top classes, best first
    with Image.open(tmp_path / "a.png") as im:
        assert im.format == "PNG"


def test_top_classes_match_predict(tmp_path: Path, photo: Path) -> None:
    from csra_posthoc.models import load_model
    from csra_posthoc.patched.apply import default_preprocessing
    from csra_posthoc.patched.model import patch
    from csra_posthoc.patched.predict import predict_images

    torch.manual_seed(1)
    adapter = load_model("test_resnet", random_init=True)
    patched = patch(adapter, 0.2, preprocessing=default_preprocessing(adapter, "auto", 64, None))
    res = attention_maps(patched, photo, top_k=3, device="cpu")
    (pred,) = predict_images(patched, [photo], threshold=0.0, top_k=3, device="cpu")
    assert [p["class"] for p in pred["predictions"]] == res.names
    assert np.allclose([p["score"] for p in pred["predictions"]], res.patched, atol=1e-5)
    assert np.allclose([p["baseline_score"] for p in pred["predictions"]], res.baseline, atol=1e-5)


def test_cli_attention_and_its_refusals(tmp_path: Path, photo: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(
        app,
        [
            "attention",
            str(photo),
            "--model",
            "test_resnet",
            "--random-init",
            "--img-size",
            "64",
            "--top-k",
            "2",
            "--out",
            str(tmp_path / "f.svg"),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "<svg" in (tmp_path / "f.svg").read_text()
    missing_dir = runner.invoke(
        app,
        ["attention", str(photo), "--model", "test_resnet", "--random-init", "--out", str(tmp_path / "no" / "f.png")],
    )
    assert missing_dir.exit_code == 2 and "does not exist" in missing_dir.output
    missing_image = runner.invoke(
        app,
        [
            "attention",
            str(tmp_path / "none.jpg"),
            "--model",
            "test_resnet",
            "--random-init",
            "--out",
            str(tmp_path / "f.png"),
        ],
    )
    assert missing_image.exit_code == 2 and "none.jpg" in missing_image.output


def test_undecodable_image_and_bad_top_k(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(CSRAError, match="cannot decode"):
        run_attention(bad, tmp_path / "a.png", ModelSource("test_resnet", random_init=True), img_size=64)
    with pytest.raises(CSRAError, match="top_k 0"):
        run_attention(bad, tmp_path / "a.png", ModelSource("test_resnet", random_init=True), top_k=0)
