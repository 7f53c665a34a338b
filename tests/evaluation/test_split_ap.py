"""SplitAP inside the sweep's bootstrap (issue #23's speed): its plain AP is WeightedAP's bit for bit,
a mask's own row set gives the numbers the full row set gives under the same masked weights, and
the CSR matrices behind every product count what a dense matrix counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csra_posthoc.evaluation.bootstrap import WeightedAP, _csr, resample_weights
from csra_posthoc.evaluation.split_ap import SplitAP
from tests.helpers import random_split_problem


def _split_ap(seed: int, masks: dict[int, torch.Tensor | None]) -> tuple[SplitAP, torch.Tensor, torch.Tensor]:
    scores, labels, size, inst, group = random_split_problem(seed, n=60, c=5)
    ap = SplitAP(scores, labels, group, 3, {"size": (size, 3), "instances": (inst, 2)}, masks)
    return ap, scores, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plain_ap_is_weighted_ap_bit_for_bit(seed: int) -> None:
    ap, scores, labels = _split_ap(seed, {0: None})
    weights = next(resample_weights(60, 7, seed, 7))
    plain, _ = ap.evaluate(weights, 0)
    expected = WeightedAP(scores, labels)(weights)
    assert torch.equal(torch.nan_to_num(plain, -1.0), torch.nan_to_num(expected, -1.0))


@pytest.mark.parametrize("seed", [0, 3])
def test_a_masks_row_set_gives_the_full_row_sets_numbers(seed: int) -> None:
    half = torch.zeros(60, dtype=torch.bool)
    half[torch.randperm(60, generator=torch.Generator().manual_seed(seed))[:30]] = True
    ap, _, _ = _split_ap(seed, {0: None, 1: half})
    weights = next(resample_weights(60, 5, seed, 5)) * half
    restricted, full = ap.split_ap(weights, 1), ap.split_ap(weights, 0)
    assert restricted.keys() == full.keys() == {"groups", "size", "instances"}
    for name in full:
        assert torch.allclose(restricted[name], full[name], rtol=0, atol=1e-12, equal_nan=True), name
    assert torch.isfinite(full["size"]).any()  # the comparison is not NaN against NaN only


def test_csr_counts_repeated_and_unsorted_entries() -> None:
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 7, 200), rng.integers(0, 11, 200)  # unsorted rows, repeated pairs
    dense = np.zeros((7, 11), dtype=np.float32)
    np.add.at(dense, (rows, cols), 1.0)
    weights = torch.from_numpy(rng.integers(0, 4, (11, 3)).astype(np.float32))
    assert torch.equal(_csr(rows, cols, 7, 11) @ weights, torch.from_numpy(dense) @ weights)
    empty = _csr(np.zeros(0, np.int64), np.zeros(0, np.int64), 7, 11)
    assert torch.equal(empty @ weights, torch.zeros(7, 3))
