"""Per-class Δ with paired-bootstrap intervals (issue 23 part 1): against sklearn and a brute-force resampling loop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from sklearn.metrics import average_precision_score
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from csra_posthoc.evaluation.bootstrap import bootstrap_deltas
from csra_posthoc.evaluation.per_class import print_per_class_table
from csra_posthoc.evaluation.resampling import bootstrap_with_classes
from csra_posthoc.evaluation.results import ClassDeltas
from csra_posthoc.report.plots import plot_class_deltas
from tests.helpers import one_line_error, sweep_argv

runner = CliRunner()


def _data(n: int = 60, c: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, c, generator=g) < 0.3).long()
    labels[torch.rand(n, c, generator=g) < 0.1] = -1  # unknown: left out of that class's AP
    labels[:, -1] = 0
    labels[3, -1] = 1  # a rare class: absent from many resamples
    base = (torch.randn(n, c, generator=g) + labels.clamp_min(0)).round(decimals=1)  # ties
    row = base + 0.8 * torch.randn(n, c, generator=g).round(decimals=1)
    return base, row, labels


def _ap(scores: np.ndarray, labels: np.ndarray) -> float:
    keep = labels != -1
    y = labels[keep]
    return float(average_precision_score(y, scores[keep])) if y.sum() else math.nan


def _class_delta(base: torch.Tensor, row: torch.Tensor, labels: torch.Tensor, idx: np.ndarray, k: int) -> float:
    b, r, y = base.numpy()[idx, k], row.numpy()[idx, k], labels.numpy()[idx, k]
    return (_ap(r, y) - _ap(b, y)) * 100.0


def test_point_estimates_are_sklearn_per_class_ap_differences() -> None:
    base, row, labels = _data()
    n, c = base.shape
    _, found = bootstrap_with_classes(base, {"best": row}, labels, [f"c{k}" for k in range(c)], n=None)
    every = np.arange(n)
    expected = [_class_delta(base, row, labels, every, k) for k in range(c)]
    np.testing.assert_allclose(found["best"].delta, expected, atol=1e-9)
    assert np.isnan(found["best"].low).all()  # n=None: point estimates only


def test_held_out_parts_average_the_halves_class_deltas() -> None:
    base, row, labels = _data(seed=1)
    n, c = base.shape
    first = torch.zeros(n, dtype=torch.bool)
    first[: n // 2] = True
    other = row + 0.5
    parts = [(first, row), (~first, other)]
    _, found = bootstrap_with_classes(base, {"held_out": parts}, labels, [f"c{k}" for k in range(c)], n=None)
    for k in range(c):
        halves = [
            _class_delta(base, row, labels, np.flatnonzero(first.numpy()), k),
            _class_delta(base, other, labels, np.flatnonzero((~first).numpy()), k),
        ]
        defined = [h for h in halves if not math.isnan(h)]
        assert found["held_out"].delta[k] == pytest.approx(float(np.mean(defined)), abs=1e-9)


def test_intervals_equal_a_brute_force_resampling_loop() -> None:
    base, row, labels = _data(n=40, seed=2)
    n, c = base.shape
    resamples, seed = 60, 7
    means, found = bootstrap_with_classes(
        base, {"best": row}, labels, [f"c{k}" for k in range(c)], n=resamples, seed=seed
    )
    # the same draws, made independently: one chunk of n resamples of N indices from the seeded generator
    draws = torch.randint(n, (resamples, n), generator=torch.Generator().manual_seed(seed)).numpy()
    per_resample = np.array([[_class_delta(base, row, labels, idx, k) for k in range(c)] for idx in draws])
    for k in range(c):
        values = per_resample[:, k][~np.isnan(per_resample[:, k])]  # a resample without a positive of k: left out
        low, high = np.percentile(values, [2.5, 97.5])
        assert found["best"].low[k] == pytest.approx(low, abs=1e-9) and found["best"].high[k] == pytest.approx(
            high, abs=1e-9
        )
    assert np.isnan(per_resample[:, -1]).any()  # the rare class was missing from some resamples
    # one resampling serves the sweep's mAP interval too: identical to bootstrap_deltas'
    reference = bootstrap_deltas(base, {"best": row}, labels, n=resamples, seed=seed)["best"]
    assert (means["best"].delta, means["best"].low, means["best"].high) == pytest.approx(
        (reference.delta, reference.low, reference.high), abs=1e-12
    )


def test_single_label_per_class_top1_is_recall_with_brute_force_intervals() -> None:
    g = torch.Generator().manual_seed(3)
    n, c = 50, 4
    target = torch.randint(c, (n,), generator=g)
    labels = torch.nn.functional.one_hot(target, c)
    base = torch.randn(n, c, generator=g) + 1.5 * labels
    row = base + torch.randn(n, c, generator=g)
    means, found = bootstrap_with_classes(base, {"fixed": row}, labels, list("abcd"), single_label=True, n=50, seed=1)

    def recall(scores: torch.Tensor, idx: np.ndarray, k: int) -> float:
        mine = idx[target.numpy()[idx] == k]
        return float((scores.argmax(1).numpy()[mine] == k).mean() * 100.0) if mine.size else math.nan

    every = np.arange(n)
    np.testing.assert_allclose(
        found["fixed"].delta, [recall(row, every, k) - recall(base, every, k) for k in range(c)], atol=1e-9
    )
    draws = torch.randint(n, (50, n), generator=torch.Generator().manual_seed(1)).numpy()
    for k in range(c):
        values = np.array([recall(row, idx, k) - recall(base, idx, k) for idx in draws])
        low, high = np.percentile(values[~np.isnan(values)], [2.5, 97.5])
        assert (found["fixed"].low[k], found["fixed"].high[k]) == pytest.approx((low, high), abs=1e-9)
    reference = bootstrap_deltas(base, {"fixed": row}, labels, single_label=True, n=50, seed=1)["fixed"]
    assert (means["fixed"].low, means["fixed"].high) == pytest.approx((reference.low, reference.high), abs=1e-12)


def _deltas() -> ClassDeltas:
    return ClassDeltas(
        ["up [bold]", "flat", "down", "none"],
        np.array([2.0, 0.5, -1.5, math.nan]),
        np.array([0.5, -0.5, -3.0, math.nan]),
        np.array([3.5, 1.5, -0.2, math.nan]),
    )


def test_significance_marking_in_table_and_json() -> None:
    from csra_posthoc.evaluation.results import SweepResult, SweepRow, Variant

    d = _deltas()
    assert d.significant.tolist() == [True, False, True, False]
    assert d.to_json()["none"] == {"delta": None, "low": None, "high": None}
    row = SweepRow(Variant("max"), 0.5, {"mAP": 50.0}, torch.zeros(4))
    result = SweepResult("mAP", row, [row], row, row, row, per_class_delta={"best": d, "fixed": d})
    console = Console(width=160, record=True)
    print_per_class_table(console, result)
    text = console.export_text()
    lines = text.splitlines()
    body = [ln for ln in lines if ln.startswith("│")]
    assert [ln.split("│")[1].strip() for ln in body] == [
        "up [bold]",
        "flat",
        "down",
    ]  # sorted by Δ, markup printed as text, no-Δ class left out
    assert "+2.00*" in body[0] and "+0.50 " in body[1] and "-1.50*" in body[2] and "*" not in body[1]
    assert "best λ: 1 up, 1 down" in text and "1 classes without a positive have no Δ" in text


def test_class_figure_is_written(tmp_path: Path) -> None:
    png = tmp_path / "classes.png"
    plot_class_deltas({"best λ": _deltas(), "fixed λ": _deltas()}, png, title="t $x$")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 300
    assert png.stat().st_size > 5000


BASE = sweep_argv(lams="0,0.5,1", temps=1, heads=2)


def test_sweep_per_class_json_table_and_figure(voc_dir: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "r.json", tmp_path / "classes.png"
    res = runner.invoke(
        app,
        [
            *BASE,
            "--data-dir",
            str(voc_dir),
            "--bootstrap",
            "100",
            "--out",
            str(out),
            "--per-class",
            "--plot-classes",
            str(png),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    per = data["per_class_delta"]
    assert set(per) == {"best", "fixed", "held_out"} and set(per["best"]) == set(data["classes"])
    for name in ("best", "fixed"):
        for cls, v in per[name].items():
            assert set(v) == {"delta", "low", "high"}
            a, b = data["per_class"][name][cls], data["per_class"]["baseline"][cls]
            if a is not None:  # the point estimate is the per-class AP difference the sweep reports
                assert v["delta"] == pytest.approx(a - b, abs=1e-6)
    assert "per-class ΔAP" in res.output and "Δ held-out λ" in res.output
    assert png.stat().st_size > 5000
    # without the bootstrap: null in the JSON, a note for the table
    res = runner.invoke(app, [*BASE, "--data-dir", str(voc_dir), "--no-bootstrap", "--out", str(out), "--per-class"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["per_class_delta"] is None and "needs the bootstrap" in res.output


def test_plot_classes_bad_path_is_one_line(voc_dir: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, [*BASE, "--data-dir", str(voc_dir), "--plot-classes", str(tmp_path / "c.gif")])
    one_line_error(res, "--plot-classes")


@pytest.mark.slow
def test_demo_per_class_table_on_real_data(tmp_path: Path) -> None:
    """Real weights (EfficientNet-Lite0, packaged) on Fashion-MNIST mosaics: the table and the figure."""
    out, png = tmp_path / "demo.json", tmp_path / "classes.png"
    res = runner.invoke(
        app,
        [
            "demo",
            "--num-train",
            "300",
            "--num-test",
            "300",
            "--cache-dir",
            str(tmp_path / "c"),
            "--out",
            str(out),
            "--per-class",
            "--plot-classes",
            str(png),
        ],
    )
    assert res.exit_code == 0, res.output
    print(res.output)
    data = json.loads(out.read_text())
    per = data["per_class_delta"]
    assert set(per) >= {"best", "fixed"} and set(per["fixed"]) == set(data["classes"])
    assert all(v["low"] <= v["delta"] <= v["high"] for v in per["fixed"].values() if v["delta"] is not None)
    assert "per-class ΔAP" in res.output and png.stat().st_size > 5000
