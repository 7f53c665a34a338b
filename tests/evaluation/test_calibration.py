"""Calibrated per-class thresholds (issue 24 part 2, sweep side) and the self-consistent held-out row.

Thresholds are checked against a brute force over every candidate with scikit-learn's f1_score;
held-out CF1 / OF1 against a numpy re-computation of the halves; the sweep's JSON / table, apply's
config and a real demo run structurally.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from sklearn.metrics import f1_score
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from csra_posthoc.evaluation.calibration import NO_POSITIVE_THRESHOLD, f1_thresholds, held_out_f1, sweep_thresholds
from csra_posthoc.evaluation.grid import row_scores, sweep
from csra_posthoc.evaluation.selection import half_masks, select_half
from csra_posthoc.metrics import mean_average_precision
from csra_posthoc.report.tables import print_table, results_dict
from tests.helpers import make_stats as _make_stats
from tests.helpers import sweep_argv


def make_stats(**kwargs):
    stats = _make_stats(**kwargs)
    stats.info.identity_max_abs_diff = 0.0  # print_table's identity line
    return stats


runner = CliRunner()


def brute_thresholds(scores: np.ndarray, labels: np.ndarray, unknown: str) -> np.ndarray:
    """Every distinct score of the class as a candidate, F1 counted afresh at each, highest threshold
    on ties; sklearn's F1 at the chosen threshold is the count's (one sklearn call a class, not one a
    candidate: its argument checks cost more than this whole loop)."""
    out = np.full(scores.shape[1], NO_POSITIVE_THRESHOLD)
    for c in range(scores.shape[1]):
        s, y = scores[:, c], labels[:, c]
        if unknown == "exclude":
            s_known, y_known = s[y != -1], y[y != -1]
        else:
            s_known, y_known = s, (y == 1).astype(int)
        if not (y_known == 1).any():
            continue
        positive = y_known == 1
        best, best_t = -1.0, None
        for t in sorted(set(s.tolist()), reverse=True):
            pred = s_known >= t
            tp = np.count_nonzero(pred & positive)
            wrong = np.count_nonzero(pred ^ positive)  # false positives and false negatives
            f = 2 * tp / (2 * tp + wrong) if tp else 0.0
            if f > best + 1e-12:
                best, best_t = f, t
        assert f1_score(y_known, (s_known >= best_t).astype(int), zero_division=0) == pytest.approx(best, abs=1e-12)
        out[c] = best_t
    return out


def numpy_cf1_of1(scores: np.ndarray, labels: np.ndarray, t: np.ndarray, unknown: str) -> tuple[float, float]:
    pred = scores >= t[None, :]
    pos = labels == 1
    counted = labels != -1 if unknown == "exclude" else np.ones_like(pos)
    tp, npred, ngt = (pred & pos).sum(0), (pred & counted).sum(0), pos.sum(0)
    keep = ngt > 0
    cp = np.mean(tp[keep] / np.maximum(npred[keep], 1))
    cr = np.mean(tp[keep] / ngt[keep])
    op, or_ = tp.sum() / max(npred.sum(), 1), tp.sum() / ngt.sum()

    def f1(p: float, r: float) -> float:
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)

    return 100 * f1(cp, cr), 100 * f1(op, or_)


def random_problem(seed: int, n: int = 60, c: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, c, generator=g) < 0.3).long()
    labels[torch.rand(n, c, generator=g) < 0.1] = -1  # unknown labels
    labels[:, -1] = torch.where(labels[:, -1] == 1, 0, labels[:, -1])  # a class with no positive
    scores = torch.randn(n, c, generator=g) + 1.5 * (labels == 1)
    scores[:, 1] = torch.round(scores[:, 1] * 2) / 2  # heavy ties
    return scores, labels


@pytest.mark.parametrize("unknown", ["exclude", "negative"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thresholds_are_the_brute_force_f1_optimum(seed: int, unknown: str) -> None:
    scores, labels = random_problem(seed)
    got = f1_thresholds(scores, labels, unknown).numpy()  # type: ignore[arg-type]
    want = brute_thresholds(scores.double().numpy(), labels.numpy(), unknown)
    np.testing.assert_allclose(got, want, rtol=0, atol=0)
    assert got[-1] == NO_POSITIVE_THRESHOLD  # no positive: the 0.5-probability rule


def test_ties_pick_the_highest_threshold_and_tied_scores_go_together() -> None:
    # scores 3 (pos), 2 (neg), 1 (pos), 1 (neg): t=3 -> F1 2/3; t=2 -> 2*1/(2+2)=0.5; t=1 -> 2*2/(4+2)=2/3
    scores = torch.tensor([[3.0], [2.0], [1.0], [1.0]])
    labels = torch.tensor([[1], [0], [1], [0]])
    assert f1_thresholds(scores, labels).tolist() == [3.0]


def test_held_out_f1_matches_a_numpy_recomputation_of_the_halves() -> None:
    scores, labels = random_problem(3, n=80)
    masks = half_masks(80, 5)
    got = held_out_f1(scores, labels, masks, "exclude")
    assert got is not None
    cf1, of1, cf1_h, of1_h = [], [], [], []
    s, y = scores.double().numpy(), labels.numpy()
    for a, b in ((masks[0], masks[1]), (masks[1], masks[0])):
        a, b = a.numpy(), b.numpy()
        t = brute_thresholds(s[a], y[a], "exclude")
        f = numpy_cf1_of1(s[b], y[b], t, "exclude")
        h = numpy_cf1_of1(s[b], y[b], np.zeros(s.shape[1]), "exclude")  # sigmoid(score) >= 0.5 <=> score >= 0
        cf1.append(f[0]), of1.append(f[1]), cf1_h.append(h[0]), of1_h.append(h[1])
    assert got.cf1 == pytest.approx(np.mean(cf1), abs=1e-9) and got.of1 == pytest.approx(np.mean(of1), abs=1e-9)
    assert got.cf1_at_half == pytest.approx(np.mean(cf1_h), abs=1e-9) and got.of1_at_half == pytest.approx(
        np.mean(of1_h), abs=1e-9
    )


def test_sweep_json_has_each_rows_thresholds_and_the_table_reports_them() -> None:
    stats = make_stats(n=80, c=5)
    result = sweep(stats, task="multi_label", fixed_lam=0.2, lams=(0.0, 0.1, 0.5), temps=(1.0,), heads=())
    result.thresholds = sweep_thresholds(result, stats, seed=0)
    data = json.loads(json.dumps(results_dict(result, stats), allow_nan=False))
    th = data["thresholds"]
    assert set(th) == {"baseline", "best", "fixed", "best_variant"}
    for key, row in (
        ("baseline", result.baseline),
        ("best", result.best),
        ("fixed", result.fixed),
        ("best_variant", result.best_variant),
    ):
        entry = th[key]
        assert entry["scale"] == "score" and len(entry["values"]) == len(data["classes"])
        scores = stats.avg if key == "baseline" else row_scores(stats, row)
        np.testing.assert_allclose(
            entry["values"], brute_thresholds(scores.double().numpy(), stats.labels.numpy(), "exclude"), atol=1e-6
        )
        for k in ("cf1", "of1", "cf1_at_0.5", "of1_at_0.5"):
            assert 0.0 <= entry[k] <= 100.0
    console = Console(record=True, width=200)
    print_table(console, result, stats)
    text = console.export_text()
    b = th["best"]
    assert (
        "thresholds (per-class F1, chosen on one seeded half" in text
        and f"CF1 {b['cf1_at_0.5']:.2f} -> {b['cf1']:.2f}" in text
    )


def test_single_label_sweeps_have_no_thresholds() -> None:
    stats = make_stats(n=40, c=4)
    stats.labels = torch.nn.functional.one_hot(torch.arange(40) % 4, 4).long()
    result = sweep(stats, task="single_label", fixed_lam=0.2, lams=(0.0, 0.1), temps=(), heads=())
    result.thresholds = sweep_thresholds(result, stats)
    assert result.thresholds is None and "thresholds" not in results_dict(result, stats)


def test_held_out_row_shows_its_own_baseline_over_the_same_halves() -> None:
    stats = make_stats(n=40, c=5, seed=4)
    held = select_half(stats, single_label=False, lams=(0.0, 0.1, 0.5), temps=(), heads=(), seed=3)
    masks = half_masks(40, 3)
    base = [mean_average_precision(stats.avg[m], stats.labels[m])[0] for m in masks]
    want = (base[1] + base[0]) / 2  # direction A->B is scored on B, B->A on A
    out = held.to_json()
    assert out["baseline"] == pytest.approx(want, abs=1e-9)
    assert out["score"] - out["baseline"] == pytest.approx(out["delta"], abs=1e-9)
    assert [c["baseline"] for c in out["choices"]] == pytest.approx([base[1], base[0]], abs=1e-9)
    result = sweep(stats, task="multi_label", fixed_lam=0.2, lams=(0.0, 0.1, 0.5), temps=(), heads=())
    result.held_out = held
    console = Console(record=True, width=200)
    print_table(console, result, stats)
    line = next(x for x in console.export_text().splitlines() if "baseline (same halves)" in x)
    assert f"{want:.2f}" in line


def test_apply_copies_the_picked_rows_thresholds_into_the_config(tmp_path: Path, monkeypatch) -> None:
    from csra_posthoc.data.fixtures import random_voc_annotations, write_voc
    from csra_posthoc.patched.export import exported_config
    from csra_posthoc.patched.model import load_patched

    monkeypatch.setenv("CSRA_POSTHOC_CACHE", str(tmp_path / "cache"))
    data, results = tmp_path / "data", tmp_path / "r.json"
    write_voc(data, random_voc_annotations(12))
    common = ["--model", "test_resnet", "--random-init", "--img-size", "64"]
    res = runner.invoke(
        app,
        sweep_argv(data_dir=data, lams="0,0.3", temps="", heads="", out=results, bootstrap=False),
    )
    assert res.exit_code == 0, res.output
    saved = json.loads(results.read_text())
    out = tmp_path / "p.safetensors"
    res = runner.invoke(
        app, ["apply", *common[:3], "--from-results", str(results), "--pick", "fixed", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    config = exported_config(out)
    assert config.thresholds == pytest.approx(saved["thresholds"]["fixed"]["values"])
    assert "fixed" in config.threshold_source and "\n" not in config.threshold_source
    assert load_patched(out).config.thresholds == pytest.approx(saved["thresholds"]["fixed"]["values"])
    plain = tmp_path / "q.safetensors"
    res = runner.invoke(app, ["apply", *common, "--num-classes", "3", "--lam", "0.2", "--out", str(plain)])
    assert res.exit_code == 0, res.output
    assert exported_config(plain).thresholds is None and exported_config(plain).threshold_source is None


def test_patch_keyword_stores_and_checks_thresholds() -> None:
    import timm

    from csra_posthoc.errors import CSRAError
    from csra_posthoc.patched.model import patch

    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    patched = patch(model, 0.2, thresholds=[0.1, -0.2, 0.3], threshold_source="given")
    assert patched.config.thresholds == [0.1, -0.2, 0.3] and patched.config.threshold_source == "given"
    with pytest.raises(CSRAError, match="thresholds"):
        patch(model, 0.2, thresholds=[0.1, 0.2])


@pytest.mark.slow
def test_demo_stores_brute_force_thresholds_for_its_rows(tmp_path: Path) -> None:
    """Real images and weights (efficientnet_lite0 --pretrained probe on the demo's mosaics)."""
    out, npz = tmp_path / "demo.json", tmp_path / "s.npz"
    res = runner.invoke(
        app,
        [
            "demo",
            "--num-train",
            "120",
            "--num-test",
            "80",
            "--cache-dir",
            str(tmp_path / "c"),
            "--out",
            str(out),
            "--save-scores",
            str(npz),
        ],
    )
    assert res.exit_code == 0, res.output
    data, arrays = json.loads(out.read_text()), np.load(npz)
    assert (
        data["weights"] == "pretrained:packaged" and "thresholds (per-class F1, chosen on one seeded half" in res.output
    )
    for key in ("baseline", "best", "fixed"):
        entry = data["thresholds"][key]
        want = brute_thresholds(arrays[key].astype(np.float64), arrays["labels"].astype(np.int64), "exclude")
        np.testing.assert_allclose(entry["values"], want, rtol=1e-6, atol=1e-6)
        assert entry["cf1"] is not None and entry["of1_at_0.5"] is not None
    assert data["held_out"]["score"] - data["held_out"]["baseline"] == pytest.approx(
        data["held_out"]["delta"], abs=1e-9
    )
