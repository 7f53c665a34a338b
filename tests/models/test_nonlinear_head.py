"""Non-linear heads (issue #22 part 2): score = the model's logits + lam * attended(head(x_k)).

Every expected number is computed here independently of the package: the model's own
``forward_head`` (timm) / ``classifier`` (torchvision) run on one 1x1 cell (or one 7x7 window for
VGG) of the feature map at a time, in a plain Python loop, and the model's own ``model(x)``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from typer.testing import CliRunner

from csra_posthoc import CSRAError, extract, load_dataset, patch
from csra_posthoc.cli.app import app
from csra_posthoc.models.instance import adapter_for_module
from csra_posthoc.models.nonlinear import check_pooled_head, nonlinear_adapter
from csra_posthoc.models.timm_models import timm_data_config
from csra_posthoc.patched.export import exported_config, run_exported
from tests.helpers import apply_argv, exported_inputs

runner = CliRunner()


def _cells_timm(model, fmap: torch.Tensor) -> torch.Tensor:
    """(B, C, H*W): the model's forward_head on each 1x1 cell, row-major."""
    h, w = fmap.shape[-2:]
    return torch.stack(
        [model.forward_head(fmap[:, :, i : i + 1, j : j + 1]) for i in range(h) for j in range(w)], dim=-1
    )


def _cells_torchvision(model, fmap: torch.Tensor) -> torch.Tensor:
    h, w = fmap.shape[-2:]
    return torch.stack([model.classifier(fmap[:, :, i, j]) for i in range(h) for j in range(w)], dim=-1)


def _windows_vgg(model, fmap: torch.Tensor) -> torch.Tensor:
    """(B, C, K): timm VGG's head (7x7 conv MLP -> pool -> linear) on each 7x7 window of the conv map."""
    h, w = fmap.shape[-2:]
    return torch.stack(
        [model.forward_head(fmap[:, :, i : i + 7, j : j + 7]) for i in range(h - 6) for j in range(w - 6)], dim=-1
    )


def _tiny_vgg():
    from timm.models.vgg import VGG

    torch.manual_seed(0)
    return VGG([8, "M", 8, "M", 8, "M", 8, "M", 8, "M"], num_classes=4, mlp_ratio=1 / 64).eval()


def _case(kind: str):
    """(model, adapter, features of x, per-location reference, input size)."""
    torch.manual_seed(0)
    if kind == "timm-mobilenetv3":
        model = timm.create_model("mobilenetv3_small_050", num_classes=5).eval()
        return model, adapter_for_module(model), model.forward_features, _cells_timm, 96
    if (
        kind == "timm-norm-mlp-head"
    ):  # NormMlpClassifierHead with a hidden pre-logits layer (MaxViT / CoAtNet's head class)
        model = timm.create_model("convnext_atto", num_classes=5, head_hidden_size=24).eval()
        return model, adapter_for_module(model), model.forward_features, _cells_timm, 96
    if kind == "timm-hgnetv2":  # ClassifierHead with a last_conv + activation after the pool
        model = timm.create_model("hgnetv2_b0", num_classes=5).eval()
        return model, adapter_for_module(model), model.forward_features, _cells_timm, 96
    if kind == "torchvision-mobilenet_v3":
        model = torchvision.models.mobilenet_v3_small(num_classes=5).eval()
        return (
            model,
            adapter_for_module(model, "torchvision:mobilenet_v3_small"),
            model.features,
            _cells_torchvision,
            96,
        )
    if kind == "timm-maxvit-tanh":  # MaxViT's own head: LayerNorm -> linear -> tanh -> linear (a tiny MaxxVit config)
        from dataclasses import replace

        from timm.models import maxxvit

        cfg = replace(
            maxxvit.model_cfgs["maxvit_tiny_tf"],
            embed_dim=(32, 32, 32, 32),
            depths=(1, 1, 1, 1),
            stem_width=16,
            head_hidden_size=16,
        )
        model = maxxvit.MaxxVit(cfg, num_classes=5, img_size=224).eval()
        assert type(model.head.pre_logits.act).__name__ == "Tanh"  # timm's own Tanh layer
        adapter = nonlinear_adapter(model, "maxvit-tiny", "random-init", timm_data_config(model))
        check_pooled_head(adapter)
        return model, adapter, model.forward_features, _cells_timm, 224
    model = _tiny_vgg()  # 9x9 conv map at 288: 3x3 windows
    adapter = nonlinear_adapter(model, "vgg-tiny", "random-init", timm_data_config(model))
    check_pooled_head(adapter)
    return model, adapter, model.forward_features, _windows_vgg, 288


KINDS = [
    "timm-mobilenetv3",
    "timm-norm-mlp-head",
    "timm-maxvit-tanh",
    "timm-hgnetv2",
    "torchvision-mobilenet_v3",
    "timm-vgg",
]


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
@pytest.mark.slow
def test_lam0_is_the_logits_and_the_score_is_the_head_at_each_location(kind: str) -> None:
    model, adapter, features, cells, size = _case(kind)
    assert adapter.info.location_head == "nonlinear" and adapter.info.baseline_source == "model_logits"
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    logits = model(x)
    s_ref = cells(model, features(x))  # (B, C, K), K > 1
    assert s_ref.shape[-1] > 1
    scale = max(1.0, float(logits.abs().max()))
    assert float((patch(adapter, lam=0.0)(x) - logits).abs().max()) <= 1e-6 * scale  # the baseline IS the logits
    for lam, temperature in ((0.7, math.inf), (0.3, 2.0)):
        w = torch.softmax(temperature * s_ref, dim=-1) if math.isfinite(temperature) else None
        attended = s_ref.amax(-1) if w is None else (w * s_ref).sum(-1)
        got = patch(adapter, lam=lam, temperature=temperature)(x)
        assert float((got - (logits + lam * attended)).abs().max()) <= 1e-4 * scale, (kind, lam, temperature)
    if kind == "timm-vgg":  # per window the head is pool -> linear: the mean is the logits as well
        return
    # on a random map too (torchvision's random init gives a flat one): the head at each location
    fm = torch.randn(2, adapter.head.dim, 3, 4, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(adapter.head(fm), cells(model, fm), atol=1e-5, rtol=1e-4)
    if kind.startswith("timm"):  # the mean of per-location scores is not the logits: the linear route would be wrong
        assert float((s_ref.mean(-1) - logits).abs().max()) > 1e-3 * float(logits.abs().max())


def test_statistics_use_the_logits_as_avg(voc_dir: Path) -> None:
    torch.manual_seed(0)
    adapter = adapter_for_module(timm.create_model("mobilenetv3_small_050", num_classes=20).eval())
    stats = extract(adapter, load_dataset("voc2007", voc_dir), img_size=96, use_cache=False, keep_maps=True)
    assert stats.info.location_head == "nonlinear" and stats.info.baseline_source == "model_logits"
    assert torch.equal(stats.avg, stats.logits)  # the variant's baseline: the model's own logits
    gap = (stats.maps.float().mean(-1) - stats.logits).abs().max()
    assert gap > 2e-3 * stats.logits.abs().max()  # not the mean of per-location scores (fp16 maps: ~5e-4 relative)
    assert torch.allclose(
        stats.max, stats.maps.float().amax(-1), atol=1e-2
    )  # max over the whole head per location (fp16 maps)
    assert stats.info.identity_max_rel_diff <= 1e-4  # the self-check: head(pooled) vs logits


def test_cache_key_differs_from_a_linear_head_of_the_same_statistics() -> None:
    from csra_posthoc.cache.keys import statistics_key

    common = dict(
        model="m", weights_fingerprint="w", head_fingerprint="h", baseline_source="model_logits", transform={}, dataset="d", split="s",
        data_fingerprint="f", temperatures=[1.0], amp=False, keep_maps=False,
    )  # fmt: skip
    assert statistics_key(**common, location_head="nonlinear") != statistics_key(**common)
    assert statistics_key(**common, location_head="linear") == statistics_key(**common)  # old linear keys stay valid


@pytest.mark.slow
def test_warm_run_key_is_the_extraction_key(voc_dir: Path) -> None:
    """A warm run (model memo, no build) must find the non-linear statistics under the same key."""
    from csra_posthoc.cache.resolution import resolution_of, statistics_location
    from csra_posthoc.extraction.run import extraction_key, forward_pass
    from csra_posthoc.log import output_console
    from csra_posthoc.options import ExtractOptions

    adapter = adapter_for_module(timm.create_model("mobilenetv3_small_050", num_classes=20).eval())
    images = load_dataset("voc2007", voc_dir)
    opts = ExtractOptions(img_size=96)
    fp = forward_pass(adapter, images.single_label, opts, output_console(None, True))
    key, _ = statistics_location(resolution_of(adapter), images, opts, voc_dir)
    assert key == extraction_key(adapter, images, fp.desc, False, False)


@pytest.mark.slow
def test_heads_that_do_not_start_with_average_pooling_are_refused() -> None:
    model = timm.create_model("mobilenetv3_small_050", num_classes=5, global_pool="max").eval()
    with pytest.raises(CSRAError, match="does not start with average pooling"):
        adapter_for_module(model)
    with pytest.raises(CSRAError, match="reads the whole 7x7 grid"):
        adapter_for_module(torchvision.models.vgg11(num_classes=3), "torchvision:vgg11")
    with pytest.raises(CSRAError, match="non-linear"):  # a linear probe cannot stand in for a non-linear head
        patch(timm.create_model("mobilenetv3_small_050", num_classes=5), head=(_linear_probe(), {}))


def test_a_probe_is_refused_before_any_image_is_read(voc_dir: Path) -> None:
    from csra_posthoc.extraction.probe import fit_probe

    adapter = adapter_for_module(timm.create_model("mobilenetv3_small_050", num_classes=20).eval())
    with pytest.raises(CSRAError, match="non-linear after pooling; a linear probe cannot replace it") as info:
        fit_probe(adapter, load_dataset("voc2007", voc_dir))
    assert info.value.param == "head"


def _linear_probe():
    from csra_posthoc.heads.location import LocationHead

    return LocationHead(torch.randn(5, 288))


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    from csra_posthoc.data.fixtures import random_voc_annotations, write_voc

    root = tmp_path_factory.mktemp("nonlinear")
    data = write_voc(root / "data", random_voc_annotations(12))
    results, scores = root / "r.json", root / "s.npz"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CSRA_POSTHOC_CACHE", str(root / "cache"))
        args = [
            "sweep",
            "--model",
            "mobilenetv3_small_050",
            "--random-init",
            "--dataset",
            "voc2007",
            "--data-dir",
            str(data),
            "--img-size",
            "96",
        ]
        res = runner.invoke(
            app,
            [
                *args,
                "--lams",
                "0,0.5",
                "--temps",
                "",
                "--heads",
                "",
                "--out",
                str(results),
                "--save-scores",
                str(scores),
            ],
        )
    assert res.exit_code == 0, res.output
    assert "non-linear head" in res.output
    return data, results, scores, root


@pytest.mark.parametrize(
    "fmt", ["safetensors", *(pytest.param(f, marks=pytest.mark.slow) for f in ("pt2", "ts", "onnx"))]
)  # the inner loop exports one format; CI runs all four
@pytest.mark.slow
def test_sweep_apply_and_predict_agree_for_mobilenetv3(swept, fmt: str) -> None:
    data, results, scores, root = swept
    doc = json.loads(results.read_text())
    assert doc["location_head"] == "nonlinear" and doc["baseline_source"] == "model_logits" and doc["fixed"]["lam"] > 0
    arrays = np.load(scores, allow_pickle=False)
    out = root / f"p.{fmt}"
    res = runner.invoke(
        app,
        apply_argv("mobilenetv3_small_050", results, out, "--random-init"),
    )
    assert res.exit_code == 0, res.output
    config = exported_config(out)
    assert config.location_head == "nonlinear" and config.lam == doc["fixed"]["lam"]
    images = load_dataset("voc2007", data)
    x = exported_inputs(config.preprocessing, images.paths)
    assert list(images.ids) == list(arrays["ids"])
    with torch.random.fork_rng(devices=[]):  # the random init the CLI seeds
        torch.manual_seed(0)
        model = timm.create_model("mobilenetv3_small_050", num_classes=20).eval()
    with torch.no_grad():
        logits = model(x).numpy()
    scale = max(1.0, float(np.abs(arrays["fixed"]).max()))
    assert np.abs(arrays["baseline"] - logits).max() <= 1e-4 * scale  # the sweep's baseline is the model's logits
    got = run_exported(out, x).numpy()
    assert np.abs(got - arrays["fixed"]).max() <= 1e-4 * scale, fmt
    if fmt in ("safetensors", "onnx"):  # predict reads the file and scores the images as the sweep did
        pred = root / f"pred-{fmt}.json"
        images_dir = Path(images.paths[0]).parent
        res = runner.invoke(
            app,
            [
                "predict",
                "--patched",
                str(out),
                str(images_dir),
                "--top-k",
                "3",
                "--threshold",
                "0",
                "--json",
                str(pred),
            ],
        )
        assert res.exit_code == 0, res.output
        ids, classes = list(arrays["ids"]), list(arrays["classes"])
        for entry in json.loads(pred.read_text()):
            row = ids.index(Path(entry["image"]).stem)
            for p in entry["predictions"]:
                assert math.isclose(p["score"], arrays["fixed"][row, classes.index(p["class"])], abs_tol=1e-4 * scale)
