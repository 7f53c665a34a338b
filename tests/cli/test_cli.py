"""The CLI end to end on a small VOC-layout fixture: table, JSON schema, NPZ, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from sklearn.metrics import average_precision_score
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from tests.helpers import one_line_error, sweep_argv

runner = CliRunner()
BASE = sweep_argv()


def run(*args: str):
    return runner.invoke(app, [*BASE, *args] if args and args[0] != "sweep" else list(args))


def test_sweep_writes_json_and_npz(voc_dir: Path, tmp_path: Path) -> None:
    out, npz = tmp_path / "r.json", tmp_path / "s.npz"
    res = run(
        "--data-dir",
        str(voc_dir),
        "--lams",
        "0,0.1,0.5",
        "--temps",
        "1,inf",
        "--heads",
        "2",
        "--out",
        str(out),
        "--save-scores",
        str(npz),
        "--metrics",
        "CF1,OF1_top3",
    )
    assert res.exit_code == 0, res.output
    assert "best λ" in res.output and "fixed λ (paper)" in res.output and "CF1" in res.output
    data = json.loads(out.read_text())
    for key in (
        "model",
        "dataset",
        "num_images",
        "identity_max_abs_diff",
        "baseline",
        "rows",
        "best",
        "fixed",
        "baseline_source",
        "per_class",
        "classes_left_out_of_mAP",
    ):
        assert key in data
    assert data["num_images"] == 24 and data["baseline_source"] == "model_logits"
    assert data["identity_max_abs_diff"] < 1e-3
    # variants: max + softmax T=1 (inf folds into max) + heads 2; lams 0, 0.02 (fixed), 0.1, 0.5
    assert {(r["variant"], r["temperature"], r["heads"]) for r in data["rows"]} == {
        ("max", None, None),
        ("softmax", 1.0, None),
        ("heads", None, 2),
    }
    assert len(data["rows"]) == 3 * 4
    assert data["fixed"]["lam"] == 0.02 and data["fixed"]["variant"] == "max"
    assert data["best"]["metrics"]["mAP"] == max(r["metrics"]["mAP"] for r in data["rows"] if r["variant"] == "max")
    assert set(data["per_class"]) == {"baseline", "best", "fixed"}
    # the NPZ lets anyone recompute the numbers with their own code
    arrays = np.load(npz, allow_pickle=False)
    assert arrays["baseline"].shape == arrays["labels"].shape == (24, 20)
    assert list(arrays["classes"]) == data["classes"]
    for name, row in (
        ("baseline", data["baseline"]),
        ("best", data["best"]["metrics"]),
        ("fixed", data["fixed"]["metrics"]),
    ):
        aps = []
        for c in range(20):
            keep = arrays["labels"][:, c] != -1
            y = arrays["labels"][keep, c]
            if y.sum():
                aps.append(average_precision_score(y, arrays[name][keep, c]))
        assert abs(np.mean(aps) * 100 - row["mAP"]) < 1e-4


def test_second_sweep_reuses_cache(voc_dir: Path) -> None:
    assert run("--data-dir", str(voc_dir)).exit_code == 0
    res = run("--data-dir", str(voc_dir))
    assert res.exit_code == 0 and "reused cache" in res.output


def test_keep_maps_allows_uncached_temperatures(voc_dir: Path) -> None:
    res = run("--data-dir", str(voc_dir), "--temps", "2.5")
    assert (
        res.exit_code == 2
        and "not cached" in res.output
        and "--keep-maps" in res.output
        and "keep_maps" not in res.output
    )
    res = run("--data-dir", str(voc_dir), "--temps", "2.5", "--keep-maps")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--data-dir", "{tmp}/nowhere"], ["--data-dir", "no such directory"]),
        (sweep_argv(img_size=None, model="resnet_nope", data_dir="{voc}"), ["unknown timm model"]),
        (["--data-dir", "{voc}", "--lams", "0,abc"], ["--lams"]),
        (["--data-dir", "{voc}", "--heads", "3"], ["--heads 3"]),
        (["--data-dir", "{voc}", "--split", "val"], ["--split val"]),
        (["--data-dir", "{voc}", "--dataset", "imagenet21k"], ["--dataset imagenet21k"]),
    ],
    ids=["missing-data-dir", "unknown-model", "bad-lams", "bad-heads", "missing-split", "unknown-dataset"],
)
def test_errors(voc_dir: Path, tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    one_line_error(run(*[a.format(tmp=tmp_path, voc=voc_dir) for a in args]), *fragments)


def test_checkpoint_with_other_classes_is_an_error(voc_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=1000).state_dict(), tmp_path / "in1k.pth")
    res = runner.invoke(app, sweep_argv(img_size=None, checkpoint=tmp_path / "in1k.pth", data_dir=voc_dir))
    one_line_error(res, "1000 classes", "has 20", "--checkpoint")


def test_no_weight_source_is_an_error(voc_dir: Path) -> None:
    res = runner.invoke(app, sweep_argv(img_size=None, random_init=None, data_dir=voc_dir))
    one_line_error(res, "--pretrained", "--random-init")


def test_class_token_vit_at_another_size_reports_both_baselines(voc_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "vit.json"
    res = runner.invoke(
        app,
        sweep_argv(model="vit_tiny_patch16_224", data_dir=voc_dir, lams="0,0.2", temps="", heads="", out=out),
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["baseline_source"] == "patch_average"
    assert "mAP" in data["model_logits"]  # the model's own class-token logits, reported beside the baseline
    assert data["transform"]["size"] == 64
