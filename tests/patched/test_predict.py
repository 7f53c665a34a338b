"""`csra-posthoc predict`: JSON schema and order, scores equal to the sweep's, --compare, broken images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from tests.helpers import apply_argv, sweep_argv

runner = CliRunner()


@pytest.fixture(scope="module")
def applied(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A sweep's results + scores and the safetensors applied from its fixed row (built once)."""
    import timm
    import torch

    from csra_posthoc.data.fixtures import random_voc_annotations, write_voc

    tmp_path = tmp_path_factory.mktemp("predict")
    voc_dir = tmp_path / "data"
    write_voc(voc_dir, random_voc_annotations(24))
    with pytest.MonkeyPatch.context() as mp:  # undone even when a step fails
        mp.setenv("CSRA_POSTHOC_CACHE", str(tmp_path / "cache"))

        torch.manual_seed(0)
        model = timm.create_model("resnet10t", num_classes=20)
        with torch.no_grad():  # a random head with spread, so the max term can reorder classes
            model.fc.weight.normal_(0, 1)
            model.fc.bias.normal_(0, 1)
        ckpt = tmp_path / "voc_resnet10t.pth"
        torch.save(model.state_dict(), ckpt)
        results, scores, patched = tmp_path / "r.json", tmp_path / "s.npz", tmp_path / "p.safetensors"
        res = runner.invoke(
            app,
            sweep_argv(  # resnet10t: its random head reorders classes at lam = 5 (timm's test_resnet's does not)
                model="resnet10t",
                checkpoint=ckpt,
                data_dir=voc_dir,
                lams="0,0.5",
                temps="",
                heads="",
                out=results,
                save_scores=scores,
            ),
        )
        assert res.exit_code == 0, res.output
        res = runner.invoke(
            app,
            apply_argv("resnet10t", results, patched, "--checkpoint", str(ckpt)),
        )
        assert res.exit_code == 0, res.output
    return patched, scores, voc_dir / "VOCdevkit" / "VOC2007" / "JPEGImages"


def test_predict_json_matches_the_sweep_scores(applied, tmp_path: Path) -> None:
    patched, scores, images = applied
    out = tmp_path / "pred.json"
    res = runner.invoke(
        app, ["predict", "--patched", str(patched), str(images), "--top-k", "4", "--threshold", "0", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    arrays = np.load(scores, allow_pickle=False)
    ids, classes = list(arrays["ids"]), list(arrays["classes"])
    assert [Path(e["image"]).stem for e in data] == sorted(ids)  # input order: the directory's sorted files
    for entry in data:
        preds = entry["predictions"]
        assert len(preds) == 4
        assert [p["score"] for p in preds] == sorted((p["score"] for p in preds), reverse=True)
        row = ids.index(Path(entry["image"]).stem)
        expected_top = np.argsort(-arrays["fixed"][row], kind="stable")[:4]
        assert [p["class"] for p in preds] == [classes[c] for c in expected_top]
        for p in preds:
            c = classes.index(p["class"])
            assert math.isclose(p["score"], arrays["fixed"][row, c], abs_tol=1e-4)
            assert math.isclose(p["baseline_score"], arrays["baseline"][row, c], abs_tol=1e-4)
    assert "predictions" in res.output


def test_threshold_keeps_only_confident_top_k(applied, tmp_path: Path) -> None:
    patched, _, images = applied
    out = tmp_path / "pred.json"
    first = sorted(images.iterdir())[0]
    res = runner.invoke(
        app,
        ["predict", "--patched", str(patched), str(first), "--top-k", "20", "--threshold", "0.5", "--json", str(out)],
    )
    assert res.exit_code == 0, res.output
    preds = json.loads(out.read_text())[0]["predictions"]
    assert all(p["score"] >= 0 for p in preds)  # sigmoid(score) >= 0.5  <=>  score >= 0
    res0 = runner.invoke(
        app, ["predict", "--patched", str(patched), str(first), "--top-k", "20", "--threshold", "0", "--json", str(out)]
    )
    assert res0.exit_code == 0
    everything = json.loads(out.read_text())[0]["predictions"]
    assert all(p["threshold"] == 0.5 and p["threshold_mode"] == "probability" for p in preds)
    drop = lambda p: {k: v for k, v in p.items() if k != "threshold"}  # noqa: E731
    assert len(everything) == 20 and [drop(p) for p in everything if p["score"] >= 0] == [drop(p) for p in preds]


def test_compare_marks_classes_moved_by_the_patch(applied, tmp_path: Path) -> None:
    patched, _, images = applied
    out = tmp_path / "pred.json"
    res = runner.invoke(
        app,
        [
            "predict",
            "--patched",
            str(patched),
            str(images),
            "--lam",
            "5",
            "--top-k",
            "3",
            "--threshold",
            "0",
            "--compare",
            "--json",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    for entry in data:
        top = {p["class"] for p in entry["predictions"]}
        base = {p["class"] for p in sorted(entry["top_k"], key=lambda p: p["baseline_rank"])[:3]}
        assert set(entry["moved_in"]) == top - base and set(entry["moved_out"]) == base - top
    assert any(e["moved_in"] for e in data), "lam = 5 should reorder some top-3"
    assert "moved in" in res.output and "baseline rank" in res.output


def test_a_broken_image_is_named_and_the_others_still_predicted(applied, tmp_path: Path) -> None:
    patched, _, images = applied
    broken = tmp_path / "imgs" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"not a jpeg")
    good = sorted(images.iterdir())[:2]
    out = tmp_path / "pred.json"
    res = runner.invoke(
        app, ["predict", "--patched", str(patched), str(good[0]), str(broken), str(good[1]), "--json", str(out)]
    )
    assert res.exit_code == 1, res.output
    assert "broken.jpg" in res.output and "Traceback" not in res.output
    data = json.loads(out.read_text())
    assert [Path(e["image"]).name for e in data] == [good[0].name, "broken.jpg", good[1].name]
    assert "error" in data[1] and data[1]["predictions"] == [] and "error" not in data[0]


@pytest.mark.slow  # end to end (sweep, export or subprocess): the full suite runs it
def test_imagenet_heads_get_imagenet_names_offline(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((40, 40, 3), 127, np.uint8)).save(tmp_path / "grey.png")
    out = tmp_path / "p.json"
    res = runner.invoke(
        app,
        [
            "predict",
            "--model",
            "resnet10t",
            "--random-init",
            "--img-size",
            "64",
            str(tmp_path / "grey.png"),
            "--threshold",
            "0",
            "--json",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    from timm.data import ImageNetInfo

    names = {ImageNetInfo().index_to_description(i) for i in range(1000)}
    assert all(p["class"] in names for p in json.loads(out.read_text())[0]["predictions"])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--threshold", "1.5"], "--threshold"),
        (["--top-k", "0"], "--top-k"),
        (["--heads", "5"], "--heads 5"),
        (["--lam", "-1"], "--lam"),
        (["--device", "tpu"], "--device tpu"),
    ],
)
def test_bad_predict_flags_fail_before_any_model_work(tmp_path: Path, args: list[str], fragment: str) -> None:
    (tmp_path / "x.png").write_bytes(b"")
    res = runner.invoke(app, ["predict", "--model", "resnet10t", "--random-init", str(tmp_path / "x.png"), *args])
    assert res.exit_code == 2 and fragment in " ".join(res.output.split()) and "Traceback" not in res.output


def test_missing_image_and_wrong_patched_file(tmp_path: Path) -> None:
    res = runner.invoke(app, ["predict", "--model", "resnet10t", "--random-init", str(tmp_path / "nope.jpg")])
    assert res.exit_code == 2 and "nope.jpg" in res.output
    (tmp_path / "m.onnx").write_bytes(b"")
    (tmp_path / "x.png").write_bytes(b"")
    res = runner.invoke(app, ["predict", "--patched", str(tmp_path / "m.onnx"), str(tmp_path / "x.png")])
    assert (
        res.exit_code == 2 and "m.onnx" in res.output and "apply --out" in res.output and "Traceback" not in res.output
    )
    (tmp_path / "m.pkl").write_bytes(b"")
    res = runner.invoke(app, ["predict", "--patched", str(tmp_path / "m.pkl"), str(tmp_path / "x.png")])
    assert res.exit_code == 2 and ".safetensors" in res.output


@pytest.mark.slow  # end to end (sweep, export or subprocess): the full suite runs it
def test_an_exported_file_predicts_the_same_scores_without_a_baseline(applied, tmp_path: Path) -> None:
    patched, _, images = applied
    ts = tmp_path / "p.ts"
    from csra_posthoc.patched.export import export_patched
    from csra_posthoc.patched.model import load_patched

    export_patched(load_patched(patched), ts)
    outs = {}
    for name, path in (("safetensors", patched), ("ts", ts)):
        out = tmp_path / f"{name}.json"
        res = runner.invoke(
            app, ["predict", "--patched", str(path), str(images), "--threshold", "0", "--json", str(out)]
        )
        assert res.exit_code == 0, res.output
        outs[name] = json.loads(out.read_text())
    for a, b in zip(outs["safetensors"], outs["ts"], strict=True):
        assert [p["class"] for p in a["predictions"]] == [p["class"] for p in b["predictions"]]
        assert all(
            math.isclose(p["score"], q["score"], abs_tol=1e-5)
            for p, q in zip(a["predictions"], b["predictions"], strict=True)
        )
        assert all(q["baseline_score"] is None for q in b["predictions"])  # the file holds the CSRA scores only
    res = runner.invoke(app, ["predict", "--patched", str(ts), str(images), "--compare"])
    assert res.exit_code == 2 and "--compare" in res.output and ".safetensors" in res.output
