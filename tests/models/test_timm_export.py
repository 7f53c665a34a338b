"""Issue #22: exported files of the newly supported timm layouts reproduce the sweep's scores.

Swin (NHWC feature map, built with dynamic_img_size), MLP-Mixer (tokens on a grid, a model built
for 224 inputs) and TResNet (timm's 'fast' pool): sweep with --save-scores, apply --from-results in
every format, run the *file* as a user without this package would, compare with the NPZ row to 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from csra_posthoc.data import load_dataset
from csra_posthoc.patched.export import exported_config, run_exported
from tests.helpers import apply_argv, exported_inputs

runner = CliRunner()
MODELS = {
    "swin": ("swin_tiny_patch4_window7_224", "64"),
    "mixer": ("mixer_s32_224", "224"),
    "tresnet": ("tresnet_m", "64"),
}


class _Sweeps(dict):
    """One sweep per model on an 8-image VOC fixture, run when a test first asks for it."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, key: str) -> tuple[Path, Path, Path]:
        from csra_posthoc.data.fixtures import random_voc_annotations, write_voc

        data = self.root / "data"
        if not data.exists():
            write_voc(data, random_voc_annotations(8))
        results, scores = self.root / f"{key}.json", self.root / f"{key}.npz"
        model, size = MODELS[key]
        args = [
            "sweep",
            "--model",
            model,
            "--random-init",
            "--dataset",
            "voc2007",
            "--data-dir",
            str(data),
            "--img-size",
            size,
        ]
        args += ["--lams", "0,0.5", "--temps", "", "--heads", "", "--out", str(results), "--save-scores", str(scores)]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CSRA_POSTHOC_CACHE", str(self.root / "cache"))
            res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        self[key] = (data, results, scores)
        return self[key]


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> dict[str, tuple[Path, Path, Path]]:
    return _Sweeps(tmp_path_factory.mktemp("timm_export"))


class _Applied(dict):
    """One ``apply --from-results`` (the fixed row) per (model, format), run when a test first asks for it:
    the export check and the predict check read the same swin file instead of each applying it."""

    def __init__(self, root: Path, swept: _Sweeps) -> None:
        super().__init__()
        self.root, self.swept = root, swept

    def __missing__(self, key_fmt: tuple[str, str]) -> Path:
        key, fmt = key_fmt
        out = self.root / f"{key}.{fmt}"
        res = runner.invoke(app, apply_argv(MODELS[key][0], self.swept[key][1], out, "--random-init"))
        assert res.exit_code == 0, res.output
        self[key_fmt] = out
        return out


@pytest.fixture(scope="module")
def applied(tmp_path_factory, swept) -> dict[tuple[str, str], Path]:
    return _Applied(tmp_path_factory.mktemp("timm_export_files"), swept)


CASES = [  # the inner loop: one file of the NHWC model; CI (the full suite) runs every model in every format
    pytest.param(key, fmt, marks=() if (key, fmt) == ("swin", "safetensors") else pytest.mark.slow)
    for key in MODELS
    for fmt in ("safetensors", "ts", "pt2", "onnx")
]


@pytest.mark.parametrize("key,fmt", CASES)
@pytest.mark.slow
def test_exported_file_reproduces_the_sweep_row(swept, applied, key: str, fmt: str) -> None:
    data, results, scores = swept[key]
    summary = json.loads(results.read_text())
    assert summary["baseline_source"] == "model_logits" and summary["identity_max_abs_diff"] < 1e-3
    arrays = np.load(scores, allow_pickle=False)
    out = applied[key, fmt]
    config = exported_config(out)
    assert config.lam == summary["fixed"]["lam"] > 0
    images = load_dataset("voc2007", data)
    x = exported_inputs(config.preprocessing, images.paths)
    got = run_exported(out, x).numpy()
    want = arrays["fixed"]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), (key, fmt)


@pytest.mark.slow
def test_predict_runs_on_the_patched_swin(swept, applied, tmp_path: Path) -> None:
    data, _, _ = swept["swin"]
    out = applied["swin", "safetensors"]  # the file the export check above compares with the sweep
    image = load_dataset("voc2007", data).paths[0]
    res = runner.invoke(app, ["predict", "--patched", str(out), str(image), "--json", str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p.json").exists()
