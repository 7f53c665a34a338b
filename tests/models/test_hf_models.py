"""Hugging Face image classifiers: ``--model hf:FOLDER`` and ``patch(hf_model)``.

Tiny random-init ``transformers`` models, written with ``save_pretrained`` to a tmp folder (no
download). Every number is checked against the model's own forward pass or its hidden states read
directly through ``transformers`` (not through the adapter).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # transformers models: beyond the quick loop's small CNNs

from typer.testing import CliRunner  # noqa: E402

from csra_posthoc import load_model, patch  # noqa: E402
from csra_posthoc.cli.app import app  # noqa: E402
from csra_posthoc.data import load_dataset, load_rgb  # noqa: E402
from csra_posthoc.data.transforms import build_transform, transform_description  # noqa: E402
from csra_posthoc.errors import CSRAError  # noqa: E402
from csra_posthoc.models.hf_tiny import TINY_FAMILIES, tiny_hf_model  # noqa: E402
from csra_posthoc.patched.export import exported_config, run_exported  # noqa: E402
from tests.helpers import apply_argv, exported_inputs  # noqa: E402

runner = CliRunner()
VOC = 20
T = transformers


FAMILIES = list(TINY_FAMILIES)
CLASS_TOKEN = {"vit", "deit"}  # baseline: the patch average


def save(model: torch.nn.Module, folder: Path, processor: object | None = None) -> Path:
    model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)  # type: ignore[attr-defined]
    return folder


def _hidden(model, x: torch.Tensor) -> torch.Tensor:
    return model.base_model(pixel_values=x, return_dict=True).last_hidden_state


def reference_location_scores(family: str, model, x: torch.Tensor) -> torch.Tensor:
    """Per-location class scores ``(B, C, K)`` written out by hand from transformers' hidden states."""
    h = _hidden(model, x)
    if family in ("vit",):
        return (h[:, 1:] @ model.classifier.weight.T + model.classifier.bias).transpose(1, 2)
    if family == "deit":
        w = (model.cls_classifier.weight + model.distillation_classifier.weight) / 2
        b = (model.cls_classifier.bias + model.distillation_classifier.bias) / 2
        return (h[:, 2:] @ w.T + b).transpose(1, 2)
    if family == "beit":  # mean pooling -> LayerNorm: per patch, with the pooled vector's statistics
        tokens, ln = h[:, 1:], model.beit.pooler.layernorm
        pooled = tokens.mean(1, keepdim=True)
        mu, var = pooled.mean(-1, keepdim=True), pooled.var(-1, unbiased=False, keepdim=True)
        normed = (tokens - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias
        return (normed @ model.classifier.weight.T + model.classifier.bias).transpose(1, 2)
    if family == "swin":
        return (h @ model.classifier.weight.T + model.classifier.bias).transpose(1, 2)
    tokens = h.flatten(2).transpose(1, 2)  # (B, K, D) from a (B, D, H, W) map
    if family.startswith("convnext"):
        ln = model.base_model.layernorm
        pooled = tokens.mean(1, keepdim=True)
        mu, var = pooled.mean(-1, keepdim=True), pooled.var(-1, unbiased=False, keepdim=True)
        tokens = (tokens - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias
    linear = model.classifier[-1] if isinstance(model.classifier, torch.nn.Sequential) else model.classifier
    return (tokens @ linear.weight.T + linear.bias).transpose(1, 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_from_its_folder_and_scores_per_location(family: str, tmp_path: Path) -> None:
    model = tiny_hf_model(family)
    folder = save(model, tmp_path / family)
    adapter = load_model(f"hf:{folder}")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        s, logits = adapter(x)
        own = model(pixel_values=x).logits
        ref = reference_location_scores(family, model, x)
    assert torch.allclose(logits, own, atol=1e-5), "the adapter's logits are the model's own"
    assert s.shape == ref.shape
    assert torch.allclose(s, ref, atol=1e-4, rtol=1e-4)
    scale = max(1.0, float(own.abs().max()))
    if family in CLASS_TOKEN:
        assert adapter.info.baseline_source == "patch_average"
    else:
        assert adapter.info.baseline_source == "model_logits"
        assert float((s.mean(-1) - own).abs().max()) <= 1e-4 * scale  # CSRA's identity, against transformers' forward
    assert adapter.info.family == f"hf-{family}"


@pytest.mark.parametrize("family", ["swin", "convnext", "vit"])
def test_patch_on_a_transformers_instance(family: str) -> None:
    model = tiny_hf_model(family)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    patched = patch(model, lam=0.3)
    with torch.no_grad():
        ref = reference_location_scores(family, model, x)
        expected = ref.mean(-1) + 0.3 * ref.amax(-1)
        got = patched(x)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert patched.config.model_kwargs["hf_class"] == type(model).__name__
    assert patched.config.model_kwargs["hf_config"]["model_type"] == family


def test_preprocessing_comes_from_preprocessor_config(tmp_path: Path) -> None:
    from csra_posthoc.models.hf_models import hf_data_config

    model = tiny_hf_model("convnext")
    convnext = save(
        model, tmp_path / "convnext", T.ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875, resample=3)
    )
    cfg, _ = hf_data_config(model, convnext)
    assert (cfg.input_size, cfg.crop_pct, cfg.crop_mode, cfg.interpolation) == (64, 0.875, "center", "bicubic")
    deit = save(
        model,
        tmp_path / "deit",
        T.DeiTImageProcessor(
            size={"height": 80, "width": 80}, crop_size={"height": 64, "width": 64}, image_mean=[0.5] * 3
        ),
    )
    cfg, _ = hf_data_config(model, deit)
    assert (cfg.input_size, cfg.crop_pct, cfg.crop_mode, cfg.mean) == (64, 0.8, "squash", (0.5, 0.5, 0.5))
    vit = save(
        model, tmp_path / "vit", T.ViTImageProcessor(size={"height": 64, "width": 64}, do_normalize=False, resample=2)
    )
    cfg, _ = hf_data_config(model, vit)
    assert (cfg.input_size, cfg.crop_pct, cfg.crop_mode, cfg.interpolation, cfg.std) == (
        64,
        1.0,
        "squash",
        "bilinear",
        (1.0, 1.0, 1.0),
    )


def _sweep(folder: Path, data: Path, out: Path, extra: list[str] | None = None):
    grid = ["--lams", "0,0.3,0.9", "--temps", "", "--heads", ""]
    outputs = ["--out", str(out / "r.json"), "--save-scores", str(out / "s.npz")]
    return runner.invoke(
        app,
        [
            "sweep",
            "--model",
            f"hf:{folder}",
            "--dataset",
            "voc2007",
            "--data-dir",
            str(data),
            *grid,
            *outputs,
            *(extra or []),
        ],
    )


@pytest.mark.parametrize(
    "family,fmt",
    [
        ("swin", "safetensors"),
        pytest.param(
            "swin", "ts", marks=pytest.mark.slow
        ),  # TorchScript holds Swin's unsaved relative-position buffers: the fingerprint check skips them
        ("vit", "ts"),
        pytest.param("swin", "pt2", marks=pytest.mark.slow),  # size expressions with Mul(...)
        pytest.param("convnext", "onnx", marks=pytest.mark.slow),
        pytest.param("vit", "pt2", marks=pytest.mark.slow),
    ],
)
def test_sweep_apply_predict_through_hf_folder(family: str, fmt: str, voc_dir: Path, tmp_path: Path) -> None:
    model = tiny_hf_model(family, VOC)
    folder = save(model, tmp_path / "model", T.ViTImageProcessor(size={"height": 64, "width": 64}))
    res = _sweep(folder, voc_dir, tmp_path)
    assert res.exit_code == 0, res.output
    arrays = np.load(tmp_path / "s.npz", allow_pickle=False)
    out = tmp_path / f"patched.{fmt}"
    res = runner.invoke(
        app,
        apply_argv(f"hf:{folder}", tmp_path / "r.json", out),
    )
    assert res.exit_code == 0, res.output
    config = exported_config(out)
    assert config.model_kwargs["hf_class"] == type(model).__name__
    images = load_dataset("voc2007", voc_dir)
    x = exported_inputs(config.preprocessing, images.paths)
    shutil.rmtree(folder)  # the exported file is rebuilt from its own config, never from the folder
    got = run_exported(out, x).numpy()
    fixed = arrays["fixed"]
    assert np.abs(got - fixed).max() <= 1e-4 * max(1.0, np.abs(fixed).max())
    # the same scores by hand: the model's hidden states, its classifier per location, mean + lam * max
    lam = json.loads((tmp_path / "r.json").read_text())["fixed"]["lam"]
    with torch.no_grad():
        ref = reference_location_scores(family, model, x)
    by_hand = (ref.mean(-1) + lam * ref.amax(-1)).numpy()
    assert np.abs(by_hand - fixed).max() <= 1e-4 * max(1.0, np.abs(fixed).max())


def test_predict_through_hf_folder(voc_dir: Path, tmp_path: Path) -> None:
    model = tiny_hf_model("resnet", VOC)
    model.config.id2label = {
        i: f"thing-{i}" for i in range(VOC)
    }  # the config's class names are the ones predict prints
    model.config.label2id = {f"thing-{i}": i for i in range(VOC)}
    folder = save(model, tmp_path / "model", T.ViTImageProcessor(size={"height": 64, "width": 64}))
    image = sorted((voc_dir / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))[0]
    res = runner.invoke(
        app,
        [
            "predict",
            "--model",
            f"hf:{folder}",
            "--lam",
            "0.5",
            "--threshold",
            "0",
            "--top-k",
            "3",
            str(image),
            "--json",
            str(tmp_path / "p.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    preds = json.loads((tmp_path / "p.json").read_text())[0]["predictions"]
    # predict on a lone image uses the model's eval transform: resize straight to 64x64 (preprocessor_config.json)
    x = build_transform(
        {**transform_description(load_model(f"hf:{folder}").data_config, None, single_label=True, choice="crop")}
    )(load_rgb(image))[None]
    with torch.no_grad():
        ref = reference_location_scores("resnet", model, x)[0]
        scores = ref.mean(-1) + 0.5 * ref.amax(-1)
    top = torch.topk(scores, 3)
    names = [f"thing-{int(i)}" for i in top.indices]
    assert [p["class"] for p in preds] == names
    assert np.allclose([p["score"] for p in preds], top.values.numpy(), atol=1e-4)


def one_line_error(res, *fragments: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    text = " ".join(res.output.split())
    for f in fragments:
        assert f in text, (f, res.output)


def test_bad_hf_input_is_one_line(voc_dir: Path, tmp_path: Path) -> None:
    apply = ["apply", "--lam", "0.2", "--out", str(tmp_path / "p.safetensors")]
    # a folder without weights
    empty = tmp_path / "noweights"
    tiny_hf_model("resnet").config.save_pretrained(empty)
    one_line_error(runner.invoke(app, [*apply, "--model", f"hf:{empty}"]), f"model hf:{empty}", "no weights")
    # a non-image model
    bert = tmp_path / "bert"
    T.BertModel(
        T.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50)
    ).save_pretrained(bert)
    one_line_error(
        runner.invoke(app, [*apply, "--model", f"hf:{bert}"]),
        f"model hf:{bert}",
        "'bert' model",
        "not an image classifier",
    )
    # custom code is never run
    remote = save(tiny_hf_model("resnet"), tmp_path / "remote")
    cfg = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(
        json.dumps({**cfg, "auto_map": {"AutoModelForImageClassification": "modeling.Evil"}})
    )
    one_line_error(runner.invoke(app, [*apply, "--model", f"hf:{remote}"]), "custom code", "never runs code")
    # neither a folder nor a cached hub model (nothing is downloaded)
    one_line_error(
        runner.invoke(app, [*apply, "--model", "hf:nobody/no-such-model-h22c"]),
        "no hub model 'nobody/no-such-model-h22c' in the local Hugging Face cache",
    )
    # an input size the patch grid cannot tile
    vit = save(tiny_hf_model("vit", VOC), tmp_path / "vit")
    res = _sweep(vit, voc_dir, tmp_path, ["--img-size", "70"])
    one_line_error(res, f"model hf:{vit}", "--img-size 70x70 is not divisible by its patch size 16")
    # its own weights: a checkpoint is refused, not silently ignored
    one_line_error(
        runner.invoke(app, [*apply, "--model", f"hf:{vit}", "--checkpoint", str(remote / "model.safetensors")]),
        "carries its own weights",
    )


def test_library_refusals_name_parameters(tmp_path: Path) -> None:
    from csra_posthoc.models.instance import check_architecture_kwargs

    with pytest.raises(CSRAError, match="not an image classifier"):
        load_model(
            f"hf:{save(T.BertModel(T.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)), tmp_path / 'b')}"
        )
    with pytest.raises(ValueError, match="hf_class"):
        check_architecture_kwargs("hf:x", {"hf_class": "BertModel", "hf_config": {"model_type": "bert"}})
    with pytest.raises(ValueError, match="custom code"):
        check_architecture_kwargs(
            "hf:x",
            {"hf_class": "ViTForImageClassification", "hf_config": {"model_type": "vit", "auto_map": {"x": "y"}}},
        )


@pytest.mark.parametrize("family", ["vit", "deit", "beit", "swin"])
def test_larger_input_than_the_training_size(family: str, tmp_path: Path) -> None:
    """A model saved at 64 px runs at 96: ViT / DeiT / BEiT resample their position embeddings (as
    transformers' interpolate_pos_encoding does), Swin pads its windows; the logits are the model's own."""
    model = tiny_hf_model(family)
    adapter = load_model(f"hf:{save(model, tmp_path / family)}")
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    kwargs = {} if family == "swin" else {"interpolate_pos_encoding": True}
    with torch.no_grad():
        s, logits = adapter(x)
        own = model(pixel_values=x, **kwargs).logits
        ref = reference_location_scores(family, model, x) if family == "swin" else None
    assert s.shape[-1] == (12 * 12 if family == "swin" else 6 * 6)  # swin: 96 / 4, one merge; the others: 96 / 16
    assert torch.allclose(logits, own, atol=1e-5)
    if ref is not None:
        assert torch.allclose(s, ref, atol=1e-4)


def test_hub_name_from_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``hf:OWNER/NAME`` reads the snapshot already in the Hugging Face cache (laid out by hand as the
    hub client writes it: refs/main -> snapshots/<commit>/), with no network."""
    from huggingface_hub import constants

    model = tiny_hf_model("convnext")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-convnext"
    save(model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    adapter = load_model("hf:someone/tiny-convnext")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _, logits = adapter(x)
        assert torch.allclose(logits, model(pixel_values=x).logits, atol=1e-5)
    with pytest.raises(CSRAError, match="no hub model 'someone/other' in the local Hugging Face cache"):
        load_model("hf:someone/other")


def test_second_sweep_reuses_the_cache_without_loading_the_model(
    voc_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder's files (config, preprocessing, weights) key the cache's memo, as a checkpoint's do:
    a second sweep reads the statistics without building the model; a changed weights file builds it again."""
    import os

    import csra_posthoc.models.hf_models as hf

    folder = save(tiny_hf_model("resnet", VOC), tmp_path / "model")
    assert _sweep(folder, voc_dir, tmp_path).exit_code == 0

    def no_build(name: str):
        raise AssertionError("the model was built")

    monkeypatch.setattr(hf, "load_hf_model", no_build)
    res = _sweep(folder, voc_dir, tmp_path)
    assert res.exit_code == 0, res.output
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    res = _sweep(folder, voc_dir, tmp_path)
    assert isinstance(res.exception, AssertionError) and "the model was built" in str(res.exception)


def _compare_with_processor(proc, image, tmp_path: Path) -> None:
    from csra_posthoc.models.hf_models import hf_data_config

    model = tiny_hf_model("resnet")
    cfg, _ = hf_data_config(model, save(model, tmp_path / "m", proc))
    ours = build_transform(transform_description(cfg, None, single_label=True, choice="crop"))(image)
    theirs = proc(images=image, return_tensors="pt")["pixel_values"][0]
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs.float(), atol=1e-4), float((ours - theirs).abs().max())


@pytest.mark.parametrize(
    "processor",
    [
        lambda: T.ViTImageProcessor(
            size={"height": 64, "width": 64}, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.4]
        ),
        lambda: T.ViTImageProcessor(size={"height": 64, "width": 64}, rescale_factor=1 / 127.5, do_normalize=False),
        lambda: T.EfficientNetImageProcessor(size={"height": 64, "width": 64}),  # include_top: divided by std twice
        lambda: T.EfficientNetImageProcessor(
            size={"height": 64, "width": 64}, rescale_factor=1 / 127.5, rescale_offset=True, include_top=False
        ),
    ],
    ids=["normalise", "rescale-only", "include-top", "rescale-offset"],
)
def test_pixel_arithmetic_is_the_processors(processor, tmp_path: Path) -> None:
    """Our transform of a random 64x64 image equals the transformers processor's own output (same
    size: no resampling, so the rescale / offset / normalise arithmetic is compared exactly)."""
    from PIL import Image

    _compare_with_processor(
        processor(), Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)), tmp_path
    )


@pytest.mark.parametrize(
    "processor",
    [
        lambda: T.ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875),  # short side to 73, centre crop
        lambda: T.ConvNextImageProcessor(size={"shortest_edge": 384}),  # >= 384: warped to a square, no crop
        lambda: T.DeiTImageProcessor(
            size={"height": 80, "width": 80}, crop_size={"height": 64, "width": 64}
        ),  # warp, then crop
        lambda: T.MobileNetV2ImageProcessor(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64}),
        lambda: T.ViTImageProcessor(size={"height": 64, "width": 64}),  # warp
    ],
    ids=["convnext-crop-pct", "convnext-384", "deit-warp-crop", "mobilenet-short-side", "vit-warp"],
)
def test_resize_and_crop_are_the_processors(processor, tmp_path: Path) -> None:
    """Resize and crop of a 120x90 image match the processor's: a smooth ramp, so the two resamplers
    agree and a wrong size, crop or warp shows as a shifted ramp."""
    from PIL import Image

    y, x = np.mgrid[0:90, 0:120]
    _compare_with_processor(
        processor(), Image.fromarray(np.stack([2 * x, 2 * y, x + y], -1).astype(np.uint8)), tmp_path
    )


def test_a_missing_folder_is_named_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(CSRAError, match=r"no such folder .*nothere \(hf: takes the folder"):
        load_model(f"hf:{tmp_path / 'nothere'}")


def test_unsaved_buffers_are_listed_and_cannot_hide_weights() -> None:
    """Swin's relative-position indexes are outside its state dict: the config lists them (a
    TorchScript file holds them, the fingerprint does not); listing a real weight there does not
    get it past the fingerprint check."""
    from dataclasses import replace

    from csra_posthoc.patched.config import PatchedConfig
    from csra_posthoc.patched.model import verify_state_dict

    model = tiny_hf_model("swin")
    patched = patch(model, lam=0.2)
    unsaved = patched.config.model_unsaved_buffers
    assert unsaved and all(name.endswith("relative_position_index") for name in unsaved)
    assert not set(unsaved) & set(model.state_dict())
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update({f"model.{k}": dict(model.named_buffers())[k] for k in unsaved})
    state.update({f"head.classifier.{k}": v for k, v in patched.head.classifier.state_dict().items()})
    verify_state_dict(patched.config, state)  # the TorchScript layout passes
    with pytest.raises(CSRAError, match="do not hash"):
        verify_state_dict(replace(patched.config, model_unsaved_buffers=[*unsaved, "classifier.weight"]), state)
    with pytest.raises(CSRAError, match="'model_unsaved_buffers' is not a list"):
        PatchedConfig.from_json(
            {**patched.config.to_json(), "head_norm": {"pooled_norm": False, "eps": 1e-6}, "model_unsaved_buffers": "x"}
        )
