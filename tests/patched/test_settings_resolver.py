"""One calling convention for apply / predict / attention (issue 21, part 3): one model source
(options.ModelSource / options.PatchedFile), one options.CSRASettings, one resolver
(patched.settings.resolve_settings) with one wording of its errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import csra_posthoc as cp
from csra_posthoc.cli.app import app
from csra_posthoc.errors import CSRAError
from csra_posthoc.options import CSRASettings, ModelSource, PatchedFile, model_source
from csra_posthoc.patched.settings import resolve_settings
from csra_posthoc.report.results_file import ResultsFile

runner = CliRunner()


def test_public_names_take_the_option_objects() -> None:
    assert cp.CSRASettings is CSRASettings and cp.ModelSource is ModelSource and cp.PatchedFile is PatchedFile
    assert (
        callable(cp.apply_patch)
        and callable(cp.run_predict)
        and callable(cp.predict_images)
        and callable(cp.run_attention)
    )


@pytest.mark.parametrize(
    ("kwargs", "param", "start"),
    [
        (dict(lam=-1.0), "lam", "lam -1.0: must be a finite number >= 0"),
        (dict(lam=math.nan), "lam", "lam nan: must be a finite number >= 0"),
        (dict(temperature=2.0, heads=4), "temperature", "temperature and `heads`: give one of them"),
        (dict(heads=3), "heads", "heads 3: the paper's head counts are 1, 2, 4, 6, 8"),
        (dict(temperature=0.0), "temperature", "temperature 0.0: must be > 0"),
        (dict(pick="worst"), "pick", "pick worst: choose best, fixed, best-variant"),
        (
            dict(lam=0.2, from_results="r.json"),
            "from_results",
            "from_results sets lam / temperature / heads: drop `lam`, or drop `from_results`",
        ),
    ],
)
def test_settings_refuse_in_library_terms(kwargs: dict, param: str, start: str) -> None:
    with pytest.raises(CSRAError) as info:
        CSRASettings(**kwargs)
    assert info.value.param == param and str(info.value).startswith(start), str(info.value)


def test_resolver_fills_in_from_a_patched_config_as_set_settings_did() -> None:
    """lam alone keeps the file's variant; a temperature or heads replaces it; nothing given: the file's."""
    patched = cp.patch(cp.load_model("test_resnet", random_init=True), lam=0.4, heads=4, img_size=32)
    config = patched.config
    assert resolve_settings(CSRASettings(), config=config) == CSRASettings(0.4, None, 4)
    assert resolve_settings(CSRASettings(lam=0.1), config=config) == CSRASettings(0.1, None, 4)
    assert resolve_settings(CSRASettings(temperature=2.0), config=config) == CSRASettings(0.4, 2.0, None)
    assert resolve_settings(CSRASettings(heads=2), config=config) == CSRASettings(0.4, None, 2)


def test_resolver_defaults_and_its_one_missing_lam_line() -> None:
    assert resolve_settings(CSRASettings(), default_lam=0.2) == CSRASettings(0.2, math.inf, None)
    assert resolve_settings(CSRASettings(heads=6), default_lam=0.2) == CSRASettings(0.2, None, 6)
    with pytest.raises(CSRAError, match="give the residual weight `lam`") as info:
        resolve_settings(CSRASettings())
    assert info.value.param == "lam"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {"variant": "max", "temperature": None, "heads": None, "lam": 0.3, "metrics": {}},
            CSRASettings(0.3, math.inf, None, pick="fixed"),
        ),
        (
            {"variant": "softmax", "temperature": 3.0, "heads": None, "lam": 0.1, "metrics": {}},
            CSRASettings(0.1, 3.0, None, pick="fixed"),
        ),
        (
            {"variant": "heads", "temperature": None, "heads": 8, "lam": 0.5, "metrics": {}},
            CSRASettings(0.5, None, 8, pick="fixed"),
        ),
    ],
)
def test_resolver_reads_the_picked_results_row(row: dict, expected: CSRASettings) -> None:
    results = ResultsFile.from_json(
        {"schema": 1, "model": "m", "best": {}, "fixed": row}, path="r.json", label="from_results"
    )
    assert resolve_settings(CSRASettings(from_results="r.json", pick="fixed"), results=results) == expected


def test_a_test_pool_row_is_read_but_not_built(tmp_path: Path) -> None:
    row = {"variant": "test-pool", "temperature": None, "heads": None, "lam": 0.3, "metrics": {"mAP": 50.0}}
    results = ResultsFile.from_json({"schema": 1, "model": "m", "best": row}, path="r.json", label="from_results")
    assert results.row("best").variant == "test-pool" and results.row("best").metric("mAP") == 50.0
    with pytest.raises(CSRAError, match="from_results r.json: its 'best' row has an unusable variant"):
        resolve_settings(CSRASettings(from_results="r.json"), results=results)


def test_model_source_refuses_weights_beside_a_patched_file(tmp_path: Path) -> None:
    assert model_source("test_resnet", random_init=True) == ModelSource("test_resnet", random_init=True)
    assert model_source(None, patched_file="p.safetensors") == PatchedFile("p.safetensors")
    with pytest.raises(CSRAError, match=r"holds the weights and the head: drop `checkpoint` / `random_init`") as info:
        model_source("test_resnet", tmp_path / "w.pth", random_init=True, patched_file="p.safetensors")
    assert info.value.param == "patched_file"
    with pytest.raises(CSRAError, match="give a model name with its weights") as info:
        model_source(None)
    assert info.value.param == "model"


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_the_three_commands_share_one_wording(tmp_path: Path, photo: Path) -> None:
    """Before: apply, predict and attention each had their own line for the same mistake."""
    common = ["--model", "test_resnet", "--random-init", "--lam", "0.2", "--temperature", "2", "--heads", "4"]
    lines = []
    for argv in (
        ["apply", *common, "--out", str(tmp_path / "p.safetensors")],
        ["predict", *common, str(photo)],
        ["attention", str(photo), *common, "--out", str(tmp_path / "a.png")],
    ):
        res = runner.invoke(app, argv, terminal_width=400)
        assert res.exit_code == 2, res.output
        lines.append(res.output.strip())
    assert (
        len(set(lines)) == 1
        and lines[0] == "error: --temperature and --heads: give one of them (heads use the paper's temperature sets)"
    ), lines


@pytest.mark.slow
def test_predict_on_real_weights_and_a_real_photo_matches_the_model(tmp_path: Path) -> None:
    """efficientnet_lite0's packaged ImageNet weights, skimage's cat: the CSRA score of run_predict
    equals mean + lam * max of the per-location logits computed here with timm directly."""
    import timm
    from skimage import data

    path = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    (entry,) = cp.run_predict(
        [path],
        ModelSource("efficientnet_lite0", pretrained=True),
        CSRASettings(lam=0.3),
        img_size=128,
        transform="square",
        threshold=0.0,
        top_k=3,
        device="cpu",
    )
    adapter = cp.load_model("efficientnet_lite0", pretrained=True)
    model: torch.nn.Module = adapter.model
    config = timm.data.resolve_data_config({}, model=model)
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[config["interpolation"]]
    pixels = np.asarray(Image.open(path).convert("RGB").resize((128, 128), resample), dtype=np.float32) / 255.0
    x = (torch.from_numpy(pixels).permute(2, 0, 1) - torch.tensor(config["mean"])[:, None, None]) / torch.tensor(
        config["std"]
    )[:, None, None]
    with torch.no_grad():
        fmap = model.forward_features(x[None].float())[0]  # (C, h, w): timm's pre-pool features
        s = torch.einsum("chw,kc->khw", fmap, model.classifier.weight) + model.classifier.bias[:, None, None]
    s = s.flatten(1)
    expected = s.mean(1) + 0.3 * s.amax(1)
    top = torch.argsort(expected, descending=True)[:3]
    assert [p["score"] for p in entry["predictions"]] == pytest.approx(expected[top].tolist(), abs=2e-3)
    assert [p["baseline_score"] for p in entry["predictions"]] == pytest.approx(s.mean(1)[top].tolist(), abs=2e-3)
