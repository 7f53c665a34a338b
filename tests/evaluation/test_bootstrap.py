"""Paired bootstrap: the weighted AP over the once-sorted order equals AP on the resampled matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from csra_posthoc.errors import CSRAError
from csra_posthoc.evaluation.bootstrap import (
    WeightedAP,
    WeightedTop1,
    bootstrap_deltas,
    bootstrap_json,
    lam_band,
    resample_weights,
)
from csra_posthoc.metrics import mean_average_precision


def _data(n: int = 120, c: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, c, generator=g) < 0.25).long()
    labels[torch.rand(n, c, generator=g) < 0.1] = -1  # unknowns, left out
    labels[:, -1] = 0
    labels[5, -1] = 1  # a rare class: often absent from a resample
    scores = (torch.randn(n, c, generator=g) + labels.clamp_min(0)).round(decimals=1)  # many ties
    return scores, labels


def test_weighted_ap_equals_ap_of_the_resampled_matrix() -> None:
    scores, labels = _data()
    n, c = scores.shape
    wap = WeightedAP(scores, labels)
    checked = 0
    for w in resample_weights(n, 12, seed=3, chunk=5):
        ap, mean = wap(w), wap.mean(w)
        for b in range(w.shape[0]):
            idx = torch.repeat_interleave(torch.arange(n), w[b].long())
            ref_map, ref_ap = mean_average_precision(scores[idx], labels[idx])
            assert torch.equal(torch.isnan(ap[b]), torch.isnan(ref_ap))  # same classes left out
            assert abs(float(mean[b]) - ref_map) < 1e-9
            for k in range(c):
                keep = labels[idx, k] != -1
                y = labels[idx, k][keep].numpy()
                if y.sum():
                    assert abs(average_precision_score(y, scores[idx, k][keep].numpy()) - float(ap[b, k])) < 1e-9
                    checked += 1
    assert checked > 50


def test_unit_weights_give_the_full_data_metrics() -> None:
    scores, labels = _data(seed=1)
    assert (
        abs(
            float(WeightedAP(scores, labels).mean(torch.ones(1, len(scores)))[0])
            - mean_average_precision(scores, labels)[0]
        )
        < 1e-9
    )
    single = torch.nn.functional.one_hot(torch.arange(len(scores)) % 6, 6)
    top1 = float((scores.argmax(1) == single.argmax(1)).double().mean() * 100)
    assert abs(float(WeightedTop1(scores, single).mean(torch.ones(1, len(scores)))[0]) - top1) < 1e-9


def test_resample_weights_are_seeded_multinomial_counts() -> None:
    a = torch.cat(list(resample_weights(50, 7, seed=4, chunk=3)))
    b = torch.cat(list(resample_weights(50, 7, seed=4, chunk=3)))
    assert a.shape == (7, 50) and torch.equal(a, b) and torch.all(a.sum(1) == 50)
    assert not torch.equal(a, torch.cat(list(resample_weights(50, 7, seed=5, chunk=3))))


def test_intervals_separate_a_real_gain_from_noise() -> None:
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(600, 5, generator=g) < 0.3).long()
    base = torch.randn(600, 5, generator=g) + labels
    better = base + 1.5 * labels  # positives pushed up: a real gain
    noise = base + 0.01 * torch.randn(600, 5, generator=g)
    found = bootstrap_deltas(base, {"better": better, "noise": noise, "same": base}, labels, n=200, seed=0)
    assert (
        found["better"].significant
        and found["better"].low > 0
        and found["better"].low <= found["better"].delta <= found["better"].high
    )
    assert not found["noise"].significant
    assert found["same"].delta == found["same"].low == found["same"].high == 0.0
    again = bootstrap_deltas(base, {"better": better}, labels, n=200, seed=0)
    assert again["better"] == found["better"]
    js = bootstrap_json(found, 200, 0)
    assert js["n"] == 200 and js["seed"] == 0 and set(js["better"]) == {"delta", "low", "high"}


def test_single_label_top1_delta() -> None:
    g = torch.Generator().manual_seed(1)
    targets = torch.randint(0, 4, (300,), generator=g)
    labels = torch.nn.functional.one_hot(targets, 4)
    base = torch.randn(300, 4, generator=g)
    fixed = base.clone()
    fixed[:100] = labels[:100] * 10.0  # the first 100 images all correct now
    found = bootstrap_deltas(base, {"fixed": fixed}, labels, single_label=True, n=300, seed=0)
    exact = float(((fixed.argmax(1) == targets).double().mean() - (base.argmax(1) == targets).double().mean()) * 100)
    assert abs(found["fixed"].delta - exact) < 1e-9 and found["fixed"].significant


def test_parts_average_the_delta_of_each_masked_half() -> None:
    scores, labels = _data(n=200, seed=2)
    variant = scores + 0.5 * torch.randn(scores.shape, generator=torch.Generator().manual_seed(9))
    mask = torch.arange(200) < 100
    got = bootstrap_deltas(scores, {"h": [(mask, variant), (~mask, scores)]}, labels, n=20, seed=0)["h"]
    exact = (
        mean_average_precision(variant[mask], labels[mask])[0] - mean_average_precision(scores[mask], labels[mask])[0]
    ) / 2
    assert abs(got.delta - exact) < 1e-9


@pytest.mark.parametrize("n", [0, -5, 2.5, True])
def test_bad_resample_counts_are_refused(n) -> None:
    scores, labels = _data()
    with pytest.raises(CSRAError, match="must be an integer >= 1") as info:
        bootstrap_deltas(scores, {"x": scores}, labels, n=n)
    assert info.value.param == "n"


def test_lam_band_is_zero_at_lam_zero() -> None:
    scores, labels = _data(seed=4)
    attended = scores + torch.randn(scores.shape, generator=torch.Generator().manual_seed(1))
    band = lam_band(scores, attended, labels, [0, 0.1, 0.5], n=30)
    assert list(band) == [0.0, 0.1, 0.5] and band[0.0].low == band[0.0].high == 0.0
    assert np.isfinite([band[0.5].low, band[0.5].high]).all()
