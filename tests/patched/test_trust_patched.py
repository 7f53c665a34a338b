"""Issue #20 part 3: a tampered or damaged patched model, results file or idx file is refused by
name (one line, exit 2), never run into silent wrong numbers; the patched model is inference-only."""

from __future__ import annotations

import copy
import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import csra_posthoc as cp
from csra_posthoc.cli.app import app
from csra_posthoc.errors import CSRAError
from csra_posthoc.patched.model import CONFIG_KEY
from tests.helpers import apply_argv

runner = CliRunner()
SIZE = 64


def one_line_error(res, *fragments: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit)), (
        res.output
    )
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    text = " ".join(res.output.split())
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.output  # one red line, last
    for f in fragments:
        assert f in text, (f, res.output)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A patched test_resnet (random weights, 5 classes, 64 px) saved by save_patched."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5).eval()
    path = tmp_path_factory.mktemp("patched") / "p.safetensors"
    cp.save_patched(cp.patch(model, lam=0.3, classes=list("abcde"), img_size=SIZE), path)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(path)
    return path


def rewrite(src: Path, dst: Path, *, tensors=None, config=None, raw_config: str | None = None) -> Path:
    """``src`` with edited tensors (a function of the dict) and/or config (a function of the dict)."""
    t = load_file(str(src))
    with safe_open(str(src), framework="pt") as fh:
        raw = fh.metadata()[CONFIG_KEY]
    t = tensors(t) if tensors else t
    cfg = json.loads(raw)
    if config:
        config(cfg)
    save_file(t, str(dst), metadata={CONFIG_KEY: raw_config if raw_config is not None else json.dumps(cfg)})
    return dst


def _bump(key: str):
    def edit(t: dict) -> dict:
        t[key] = t[key] + 0.01
        return t

    return edit


def _set(field: str, value):
    def edit(cfg: dict) -> None:
        cfg[field] = value

    return edit


def _drop(field: str):
    def edit(cfg: dict) -> None:
        del cfg[field]

    return edit


# (edit, text the one-line refusal names): each case from the issue, plus neighbours
DAMAGED = {
    "head-weights-edited": (dict(tensors=_bump("head.weight")), "head tensors do not hash"),
    "model-weights-edited": (dict(tensors=_bump("model.conv1.0.weight")), "model tensors do not hash"),
    "no-weights-fingerprint": (dict(config=_drop("weights_fingerprint")), "no valid weights_fingerprint"),
    "no-head-fingerprint": (dict(config=_drop("head_fingerprint")), "no valid head_fingerprint"),
    "metadata-not-json": (dict(raw_config="{not json"), "not valid JSON"),
    "lam-abc": (dict(config=_set("lam", "abc")), "'lam'"),
    "lam-nan": (dict(config=_set("lam", math.nan)), "NaN is not a number JSON allows"),
    "lam-negative": (dict(config=_set("lam", -1)), "'lam'"),
    "empty-temperatures": (dict(config=_set("temperatures", [])), "'temperatures'"),
    "unexpected-model-kwargs": (dict(config=_set("model_kwargs", {"pretrained": True})), "'model_kwargs'"),
    "model-kwargs-bad-type": (dict(config=_set("model_kwargs", {"img_size": "224"})), "'model_kwargs'"),
    "renamed-model-unknown": (dict(config=_set("model", "test_resnet_evil")), "'model'"),
    "renamed-model-known": (dict(config=_set("model", "resnet14t")), "do not fit resnet14t"),
    "classes-wrong-length": (dict(config=_set("classes", ["a"])), "'classes'"),
    "num-classes-mismatch": (dict(config=_set("num_classes", 7)), "'classes'"),
    "num-classes-mismatch-no-names": (
        dict(config=lambda c: c.update(classes=None, num_classes=7)),
        "its head has 5 classes",
    ),
    "head-norm-missing": (dict(config=_drop("head_norm")), "'head_norm'"),
    "format-version-future": (dict(config=_set("format_version", 99)), "not one this version reads"),
    "heads-not-int": (dict(config=_set("heads", "two")), "'heads'"),
    "preprocessing-bad": (dict(config=_set("preprocessing", {"kind": "center-crop", "size": -1})), "'preprocessing'"),
    "config-not-object": (dict(raw_config="[1, 2]"), "not a JSON object"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_patched_file_is_refused_by_load_patched_and_cli(
    saved: Path, image: Path, tmp_path: Path, case: str
) -> None:
    edit, fragment = DAMAGED[case]
    bad = rewrite(saved, tmp_path / "bad.safetensors", **edit)
    with pytest.raises(CSRAError, match="patched_file") as info:
        cp.load_patched(bad)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    one_line_error(
        runner.invoke(app, ["predict", "--patched", str(bad), str(image)], terminal_width=400), "--patched", fragment
    )


def test_intact_file_still_loads_and_matches(saved: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    loaded = cp.load_patched(saved)
    with torch.no_grad():  # independent: the model's own logits are the lam=0 scores
        assert torch.allclose(loaded.forward_with_baseline(x)[1], model(x), atol=1e-4)


def test_model_kwargs_never_reach_timm_unchecked(saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: calls.append(k) or real(*a, **k))
    bad = rewrite(saved, tmp_path / "bad.safetensors", config=_set("model_kwargs", {"checkpoint_path": "/etc/passwd"}))
    with pytest.raises(CSRAError, match="model_kwargs"):
        cp.load_patched(bad)
    assert not any("checkpoint_path" in k for k in calls)


def test_caller_mode_changes_do_not_change_patched_scores() -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5)  # timm's default: train mode
    reference = copy.deepcopy(model).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = cp.patch(model, lam=0.0)
    assert model.training, "patch() must leave the caller's model in its mode"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "patch() moved batch-norm statistics"
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = reference(x)  # independent: the model's own eval-mode logits (lam = 0)
        model.train()
        assert torch.allclose(p(x), expected, atol=1e-4)
        model.eval()
        assert torch.allclose(p(x), expected, atol=1e-4)
        model.train()
        p.train()
        assert not p.training and torch.allclose(p(x), expected, atol=1e-4)
    assert model.training and all(m.training for m in model.modules())  # the caller's mode is back after each call
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_save_after_patch_of_train_mode_model_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5)  # train mode, as timm returns it
    p = cp.patch(model, lam=0.2, img_size=SIZE)
    cp.save_patched(p, tmp_path / "p.safetensors")
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(cp.load_patched(tmp_path / "p.safetensors")(x), p(x), atol=1e-5)


def test_loaded_model_is_for_inference_and_patch_keeps_requires_grad(saved: Path) -> None:
    loaded = cp.load_patched(saved)
    assert not any(t.requires_grad for t in loaded.parameters())
    x = torch.randn(1, 3, SIZE, SIZE, requires_grad=True)
    out = loaded(x)
    assert not loaded(x.detach()).requires_grad
    out.sum().backward()  # saliency with respect to the input still works
    assert x.grad is not None and x.grad.abs().sum() > 0
    model = timm.create_model("test_resnet", num_classes=5).eval()
    model.fc.weight.requires_grad_(False)
    flags = {n: t.requires_grad for n, t in model.named_parameters()}
    cp.patch(model)
    assert flags == {n: t.requires_grad for n, t in model.named_parameters()}


# --- results files: one reader, one rule --------------------------------------------------------


def _results(tmp_path: Path) -> tuple[Path, dict]:
    from tests.helpers import write_results

    path = tmp_path / "r.json"
    return path, write_results(path, "test_resnet", "voc2007", 1)


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_compare_refuses_non_finite_numbers_by_name(tmp_path: Path, bad: str) -> None:
    path, data = _results(tmp_path)
    metric = data["primary_metric"]
    text = json.dumps(data).replace(json.dumps({metric: data["baseline"][metric]})[1:-1], f'"{metric}": {bad}', 1)
    assert bad in text
    path.write_text(text)
    tex = tmp_path / "t.tex"
    res = runner.invoke(app, ["compare", str(path), "--latex", str(tex)], terminal_width=400)
    one_line_error(res, str(path), "not a finite number")
    assert not tex.exists()
    from csra_posthoc.patched.apply import read_results

    with pytest.raises(CSRAError, match="not a finite number"):
        read_results(path)


@pytest.mark.parametrize("schema", [2, None, "1"])
def test_apply_from_results_and_compare_share_the_schema_rule(tmp_path: Path, schema) -> None:
    from csra_posthoc.patched.apply import read_results
    from csra_posthoc.report.compare import read_results_file

    path, data = _results(tmp_path)
    data["classes"] = data.get("classes") or list("abcde")
    if schema is None:
        del data["schema"]
    else:
        data["schema"] = schema
    path.write_text(json.dumps(data))
    for reader in (read_results, read_results_file):
        with pytest.raises(CSRAError, match="this version reads schema 1"):
            reader(path)
    res = runner.invoke(
        app,
        apply_argv("test_resnet", path, tmp_path / "p.safetensors", "--random-init", pick=None),
    )
    one_line_error(res, "--from-results", "schema")
    assert not (tmp_path / "p.safetensors").exists()


# --- demo: damaged Fashion-MNIST idx files --------------------------------------------------------

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _fake_idx(folder: Path, n: int = 4) -> None:
    """A tiny, valid Fashion-MNIST folder (idx headers written by hand, big-endian)."""
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        images = (
            np.array([0, 0, 8, 3, 0, 0, 0, n, 0, 0, 0, 28, 0, 0, 0, 28], np.uint8).tobytes()
            + rng.integers(0, 255, n * 784, dtype=np.uint8).tobytes()
        )
        labels = (
            np.array([0, 0, 8, 1, 0, 0, 0, n], np.uint8).tobytes() + rng.integers(0, 10, n, dtype=np.uint8).tobytes()
        )
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))


def _truncate_gz(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _truncate_content(path: Path) -> None:
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))


def _garble_magic(path: Path) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[2] = 0x0D  # float data instead of unsigned bytes
    path.write_bytes(gzip.compress(bytes(raw)))


@pytest.mark.parametrize("damage", [_truncate_gz, _truncate_content, _garble_magic, Path.unlink])
def test_damaged_idx_file_is_one_line_naming_it(tmp_path: Path, damage) -> None:
    from csra_posthoc.demo.sources import find_item_source

    _fake_idx(tmp_path)
    assert find_item_source(tmp_path).images["test"].shape == (4, 28, 28)  # the intact folder reads
    target = tmp_path / "train-images-idx3-ubyte.gz"
    damage(target)
    with pytest.raises(CSRAError) as info:
        find_item_source(tmp_path)
    msg = str(info.value)
    assert (
        info.value.param == "data_dir" and "train-images-idx3-ubyte" in msg and "reinstall" in msg and "\n" not in msg
    )


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.slow
def test_demo_cli_on_a_truncated_real_fashion_mnist_file(tmp_path: Path) -> None:
    data = tmp_path / "fm"
    shutil.copytree(FASHION, data)
    _truncate_gz(data / "t10k-labels-idx1-ubyte.gz")
    args = [
        "demo",
        "--data-dir",
        str(data),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--num-train",
        "20",
        "--num-test",
        "20",
        "--img-size",
        "64",
    ]
    res = runner.invoke(app, args, terminal_width=400)
    one_line_error(res, "--data-dir", "t10k-labels-idx1-ubyte.gz", "reinstall")


# --- real weights -------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_weights_edited_head_is_refused_intact_file_predicts(tmp_path: Path) -> None:
    from skimage import data as skdata

    adapter = cp.load_model("efficientnet_lite0", pretrained=True)
    path = tmp_path / "lite0.safetensors"
    cp.save_patched(cp.patch(adapter, lam=0.1, img_size=128), path)
    img = tmp_path / "cat.png"
    Image.fromarray(skdata.chelsea()).save(img)
    res = runner.invoke(
        app, ["predict", "--patched", str(path), str(img), "--json", str(tmp_path / "pred.json")], terminal_width=400
    )
    assert res.exit_code == 0, res.output
    assert (
        "tabby" in (tmp_path / "pred.json").read_text().lower() or "cat" in (tmp_path / "pred.json").read_text().lower()
    )
    bad = rewrite(path, tmp_path / "edited.safetensors", tensors=_bump("head.bias"))
    one_line_error(
        runner.invoke(app, ["predict", "--patched", str(bad), str(img)], terminal_width=400), "head tensors do not hash"
    )


# --- exported formats carry the same config and (where the tensors are there) the same checks ----


@pytest.mark.slow
def test_exported_torchscript_with_edited_head_or_config_is_refused(image: Path, tmp_path: Path) -> None:
    from csra_posthoc.patched.export import ExportedModel, export_patched

    torch.manual_seed(0)
    patched = cp.patch(timm.create_model("test_resnet", num_classes=5).eval(), lam=0.3, img_size=SIZE)
    good = tmp_path / "p.ts"
    export_patched(patched, good)
    assert ExportedModel(good).config.model == "test_resnet"
    extra = {"csra_config.json": ""}
    module = torch.jit.load(str(good), _extra_files=extra)
    config = json.loads(extra["csra_config.json"])
    with torch.no_grad():
        module.head.classifier.weight.add_(0.01)
    torch.jit.save(module, str(tmp_path / "edited.ts"), _extra_files=extra)
    with pytest.raises(CSRAError, match="head tensors do not hash"):
        ExportedModel(tmp_path / "edited.ts")
    one_line_error(
        runner.invoke(app, ["predict", "--patched", str(tmp_path / "edited.ts"), str(image)], terminal_width=400),
        "head tensors do not hash",
    )
    module = torch.jit.load(str(good))
    torch.jit.save(
        module,
        str(tmp_path / "badcfg.ts"),
        _extra_files={"csra_config.json": json.dumps({**config, "num_classes": "5"})},
    )
    one_line_error(
        runner.invoke(app, ["predict", "--patched", str(tmp_path / "badcfg.ts"), str(image)], terminal_width=400),
        "'num_classes'",
    )


@pytest.mark.parametrize("suffix", [".safetensors", ".ts"])
def test_weights_changed_after_patch_are_refused_at_save(tmp_path: Path, suffix: str) -> None:
    from csra_posthoc.patched.export import export_patched

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5).eval()
    patched = cp.patch(model, lam=0.3, img_size=SIZE)
    with torch.no_grad():
        model.fc.bias.add_(1.0)  # the caller fine-tunes its model after patching: the config's fingerprint is stale
    with pytest.raises(CSRAError, match="changed after patch"):
        export_patched(patched, tmp_path / f"p{suffix}")
    assert not (tmp_path / f"p{suffix}").exists()


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_safetensors_file_is_one_line(saved: Path, image: Path, tmp_path: Path, keep: float) -> None:
    raw = saved.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(CSRAError, match="patched_file"):
        cp.load_patched(cut)
    one_line_error(
        runner.invoke(app, ["predict", "--patched", str(cut), str(image)], terminal_width=400), "--patched", str(cut)
    )
