"""The size / clutter intervals of held-out rows (parts on masked images) and chunked resamples
against a straightforward recomputation: each resample materialised as a matrix of repeated
rows, every split's AP recomputed with the plain metric (issue #23's fast path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csra_posthoc.evaluation import bootstrap
from csra_posthoc.evaluation.bootstrap import resample_weights
from csra_posthoc.evaluation.object_size import INSTANCE_BINS, LABEL_GROUPS, SIZE_BINS
from csra_posthoc.evaluation.resampling import split_deltas
from csra_posthoc.evaluation.results import Splits
from csra_posthoc.metrics import average_precision
from tests.helpers import random_split_problem


def _problem(seed: int, n: int = 40, c: int = 3) -> tuple[torch.Tensor, torch.Tensor, Splits]:
    scores, labels, size, inst, group = random_split_problem(seed, n, c, positive_rate=0.4)
    return scores, labels, Splits(size, inst, group, (0.1, 0.2), 0)


def _plain_means(
    base: torch.Tensor, variant: torch.Tensor, labels: torch.Tensor, splits: Splits, rows: torch.Tensor
) -> dict[str, list[float]]:
    """Mean ΔAP (pp) of every bin, by the plain metric on the resampled matrix ``rows``."""
    pos = labels == 1
    out: dict[str, list[float]] = {}
    for split, bins in (("size", splits.size_bin), ("instances", splits.instance_bin)):
        names = SIZE_BINS if split == "size" else INSTANCE_BINS
        out[split] = []
        for j in range(len(names)):
            lab = labels.clone()
            lab[pos & ~torch.from_numpy(bins == j)] = -1  # other positives left out, all negatives kept
            d = (average_precision(variant[rows], lab[rows]) - average_precision(base[rows], lab[rows])) * 100
            out[split].append(float(np.nanmean(d.numpy())) if (~torch.isnan(d)).any() else float("nan"))
    out["labels"] = []
    for j in range(len(LABEL_GROUPS)):
        lab = labels.clone()
        lab[torch.from_numpy(splits.label_group != j)] = -1  # images of other groups left out
        d = (average_precision(variant[rows], lab[rows]) - average_precision(base[rows], lab[rows])) * 100
        out["labels"].append(float(np.nanmean(d.numpy())) if (~torch.isnan(d)).any() else float("nan"))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_held_out_parts_and_chunks_match_a_per_resample_recomputation(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    scores, labels, splits = _problem(seed)
    n = labels.shape[0]
    g = torch.Generator().manual_seed(seed + 10)
    variant = scores + 0.5 * torch.randn(scores.shape, generator=g)
    other = scores + 0.5 * torch.randn(scores.shape, generator=g)
    first = torch.zeros(n, dtype=torch.bool)
    first[torch.randperm(n, generator=g)[: n // 2]] = True
    variants = {"best": variant, "held_out": [(first, variant), (~first, other)]}
    resamples = 12
    monkeypatch.setattr(bootstrap, "CHUNK_CELLS", 5 * max(n, 1))  # several chunks of several resamples
    found = split_deltas(scores, variants, labels, ["a", "b", "c"], splits, n=resamples, seed=seed)
    draws: dict[str, dict[str, list[list[float]]]] = {
        name: {s: [] for s in ("size", "labels", "instances")} for name in variants
    }
    everyone = torch.ones(n)
    for w in resample_weights(n, resamples, seed, 1):
        for name, value in variants.items():
            parts = [(None, value)] if isinstance(value, torch.Tensor) else value
            per_part = []
            for mask, v in parts:
                ww = w[0] * (everyone if mask is None else mask.float())
                rows = torch.repeat_interleave(torch.arange(n), ww.long())
                per_part.append(_plain_means(scores, v, labels, splits, rows))
            for split in draws[name]:
                draws[name][split].append(np.mean([p[split] for p in per_part], axis=0).tolist())
    for name in variants:
        for split, bins in (("size", SIZE_BINS), ("labels", LABEL_GROUPS), ("instances", INSTANCE_BINS)):
            matrix = np.asarray(draws[name][split])
            with np.errstate(all="ignore"):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    low, high = np.nanpercentile(matrix, [2.5, 97.5], axis=0)
            for j, bin_ in enumerate(bins):
                _, lo, hi = found.mean[name][split][bin_]
                assert np.allclose([lo, hi], [low[j], high[j]], equal_nan=True), (name, split, bin_)
