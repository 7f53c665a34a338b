"""Issue #22's named architectures, each through the whole tool as a user runs it: ``sweep`` (random
init, an 8-image VOC fixture, ``--save-scores``), ``apply --from-results`` in all four formats, each
exported file run as a user without this package would and compared with the sweep's scores to
1e-4, then ``predict`` on the patched file. Full-size timm models at random init, so marked slow
(CI runs it); the identity of each family at tiny width is in test_timm_contract.py and
test_timm_coverage_more.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from csra_posthoc.data import load_dataset
from csra_posthoc.data.fixtures import random_voc_annotations, write_voc
from csra_posthoc.patched.export import exported_config, run_exported
from tests.helpers import apply_argv, exported_inputs

runner = CliRunner()
FORMATS = ("safetensors", "ts", "pt2", "onnx")
# issue #22's list, each by its smallest timm variant, at the smallest input it takes (its own size
# where position embeddings or windows are fixed)
NAMED = {
    "Swin": ("swin_tiny_patch4_window7_224", 64),
    "SwinV2": ("swinv2_tiny_window8_256", 256),
    "BEiT": ("beitv2_base_patch16_224", 224),
    "EVA-02": ("eva02_tiny_patch14_224", 224),
    "MaxViT": ("maxvit_pico_rw_256", 256),
    "CoAtNet": ("coatnet_nano_rw_224", 224),
    "RegNetZ": ("regnetz_b16", 64),
    "RepViT": ("repvit_m1", 64),
    "FastViT": ("fastvit_t8", 64),
    "EfficientFormer": ("efficientformer_l1", 224),
    "LeViT": ("levit_128s", 224),
    "PVTv2": ("pvt_v2_b0", 64),
    "Twins": ("twins_svt_small", 64),
    "CaiT": ("cait_xxs24_224", 224),
    "XCiT": ("xcit_nano_12_p16_224", 64),
    "Mixer": ("mixer_s32_224", 224),
    "MobileNetV3": ("mobilenetv3_small_050", 64),
    "VGG": ("vgg11", 64),
    "TResNet": ("tresnet_m", 64),
    "HGNetV2": ("hgnetv2_b0", 64),
}


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_voc(tmp_path_factory.mktemp("named") / "data", random_voc_annotations(8))


@pytest.mark.slow
@pytest.mark.parametrize("family", list(NAMED))
def test_sweep_apply_in_every_format_and_predict(family: str, voc: Path, tmp_path: Path) -> None:
    arch, size = NAMED[family]
    results, scores = tmp_path / "r.json", tmp_path / "s.npz"
    sweep = ["sweep", "--model", arch, "--random-init", "--dataset", "voc2007", "--data-dir", str(voc)]
    sweep += ["--img-size", str(size), "--lams", "0,0.5", "--temps", "", "--heads", "", "--bootstrap", "100"]
    res = runner.invoke(app, [*sweep, "--out", str(results), "--save-scores", str(scores)])
    assert res.exit_code == 0, res.output
    summary = json.loads(results.read_text())
    assert summary["fixed"]["lam"] > 0
    want = np.load(scores, allow_pickle=False)["fixed"]
    images = load_dataset("voc2007", voc)
    for fmt in FORMATS:
        out = tmp_path / f"patched.{fmt}"
        res = runner.invoke(app, apply_argv(arch, results, out, "--random-init"))
        assert res.exit_code == 0, (fmt, res.output)
        config = exported_config(out)
        got = run_exported(out, exported_inputs(config.preprocessing, images.paths)).numpy()
        assert got.shape == want.shape, fmt
        diff = float(np.abs(got - want).max())
        print(f"{family} ({arch}) {fmt}: exported vs sweep max abs diff {diff:.2e}")  # shown with -rP
        assert diff <= 1e-4 * max(1.0, np.abs(want).max()), (family, fmt)
        if fmt in ("ts", "pt2"):
            out.unlink()  # full-size weights (VGG: ~0.5 GB a file); predict reads the other two
    report = tmp_path / "p.json"
    res = runner.invoke(app, ["predict", "--patched", str(tmp_path / "patched.safetensors"), str(images.paths[0])])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["predict", "--patched", str(tmp_path / "patched.onnx"), str(images.paths[0]), "--json", str(report)]
    )
    assert res.exit_code == 0, res.output
    assert report.exists()
