"""Metrics against scikit-learn (to 1e-6) and the official CSRA evaluation's edge conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_score, recall_score, top_k_accuracy_score

from csra_posthoc.metrics import average_precision, mean_average_precision, thresholded_metrics, topk_accuracy


def tied_scores(n: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(-20, 20, (n, c), generator=g).double() / 4  # many ties
    labels = (torch.rand(n, c, generator=g) < 0.3).long()
    labels[torch.rand(n, c, generator=g) < 0.1] = -1
    return scores, labels


def sklearn_ap(scores: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    out = []
    for c in range(scores.shape[1]):
        keep = labels[:, c] != -1
        y = labels[keep, c].numpy()
        out.append(average_precision_score(y, scores[keep, c].numpy()) if y.sum() else np.nan)
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_sklearn_with_ties_and_unknowns(seed: int) -> None:
    scores, labels = tied_scores(300, 12, seed)
    ours = average_precision(scores, labels).numpy()
    np.testing.assert_allclose(ours, sklearn_ap(scores, labels), atol=1e-6, rtol=0)


def test_average_precision_continuous_scores_equal_official_definition() -> None:
    """Without ties, AP is the mean precision at each positive (the official CSRA evaluation)."""
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(200, 5, generator=g)
    labels = (torch.rand(200, 5, generator=g) < 0.4).long()
    ours = average_precision(scores, labels)
    for c in range(5):
        order = torch.argsort(-scores[:, c])
        hits = labels[order, c].double()
        ranks = torch.arange(1, 201).double()
        official = float((hits.cumsum(0) / ranks)[hits == 1].mean())
        assert abs(float(ours[c]) - official) < 1e-9


def test_class_without_positive_is_left_out_of_map() -> None:
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.3]])
    labels = torch.tensor([[1, 0], [0, 0], [1, -1]])
    mAP, ap = mean_average_precision(scores, labels)
    assert torch.isnan(ap[1])
    assert mAP == pytest.approx(100.0)


def test_thresholded_metrics_match_sklearn_per_class_and_pooled() -> None:
    scores, labels = tied_scores(400, 8, seed=5)
    labels = labels.clamp_min(0)  # no unknowns: sklearn has no notion of them
    ours = thresholded_metrics(scores, labels)
    pred = (torch.sigmoid(scores) >= 0.5).numpy().astype(int)
    y = labels.numpy()
    cp = precision_score(y, pred, average="macro", zero_division=0) * 100
    cr = recall_score(y, pred, average="macro", zero_division=0) * 100
    op = precision_score(y, pred, average="micro", zero_division=0) * 100
    or_ = recall_score(y, pred, average="micro", zero_division=0) * 100
    assert ours["CP"] == pytest.approx(cp, abs=1e-6)
    assert ours["CR"] == pytest.approx(cr, abs=1e-6)
    assert ours["OP"] == pytest.approx(op, abs=1e-6)
    assert ours["OR"] == pytest.approx(or_, abs=1e-6)
    assert ours["CF1"] == pytest.approx(2 * cp * cr / (cp + cr), abs=1e-6)  # F1 of the means, not mean of F1s


def test_threshold_is_inclusive_and_no_prediction_means_precision_zero() -> None:
    # score 0 -> sigmoid 0.5 -> positive (>= 0.5); class 1 is never predicted -> precision 0, recall 0
    scores = torch.tensor([[0.0, -5.0], [-5.0, -5.0]])
    labels = torch.tensor([[1, 1], [0, 1]])
    m = thresholded_metrics(scores, labels)
    assert m["CP"] == pytest.approx(50.0)  # (1/1 + 0) / 2
    assert m["CR"] == pytest.approx(50.0)  # (1/1 + 0/2) / 2
    assert m["OP"] == pytest.approx(100.0) and m["OR"] == pytest.approx(100 / 3)


def test_top3_keeps_only_three_highest_scores_per_image() -> None:
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.5]])  # all above threshold
    labels = torch.tensor([[0, 0, 0, 1, 1]])
    assert thresholded_metrics(scores, labels)["OR"] == pytest.approx(100.0)
    top3 = thresholded_metrics(scores, labels, top_k=3)
    assert top3["OR"] == pytest.approx(0.0) and top3["OP"] == pytest.approx(0.0)


def test_unknown_labels_excluded_or_counted_negative() -> None:
    scores = torch.tensor([[3.0], [3.0], [-3.0]])
    labels = torch.tensor([[1], [-1], [0]])
    assert thresholded_metrics(scores, labels, unknown="exclude")["OP"] == pytest.approx(100.0)
    assert thresholded_metrics(scores, labels, unknown="negative")["OP"] == pytest.approx(50.0)


def test_topk_accuracy_matches_sklearn() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(300, 10, generator=g)
    targets = torch.randint(0, 10, (300,), generator=g)
    ours = topk_accuracy(scores, targets, (1, 5))
    for k in (1, 5):
        ref = top_k_accuracy_score(targets.numpy(), scores.numpy(), k=k, labels=list(range(10))) * 100
        assert ours[f"top{k}"] == pytest.approx(ref, abs=1e-6)


def test_metrics_refuse_nan_scores() -> None:
    with pytest.raises(ValueError, match="NaN"):
        average_precision(torch.tensor([[float("nan")], [0.0]]), torch.tensor([[1], [0]]))


def test_tie_run_ends_match_a_brute_force_scan() -> None:
    from csra_posthoc.metrics.average_precision import tie_run_ends

    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 7, 50):
        rows = torch.sort(torch.randint(0, 4, (5, n), generator=g).double(), dim=1, descending=True).values
        expected = [[max(j for j in range(n) if row[j] == row[i]) for i in range(n)] for row in rows.tolist()]
        assert tie_run_ends(rows).tolist() == expected
