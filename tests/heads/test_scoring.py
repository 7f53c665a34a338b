"""The one scoring function: statistics-based (sweep) and location-based (patched model) agree."""

from __future__ import annotations

import math

import pytest
import torch

from csra_posthoc.heads.scoring import (
    CACHED_TEMPERATURES,
    HEAD_TEMPERATURES,
    attention_pool,
    csra_score,
    location_statistics,
    multihead_attended,
    score_from_locations,
)


def test_attention_pool_limits() -> None:
    s = torch.randn(3, 4, 10)
    assert torch.allclose(attention_pool(s, math.inf), s.amax(-1))
    assert torch.allclose(attention_pool(s, 1e-9), s.mean(-1), atol=1e-6)  # T -> 0: plain average
    assert torch.allclose(attention_pool(s, 500.0), s.amax(-1), atol=1e-3)  # T -> inf: max
    # hand-computed: two locations 0 and 1, T = 1 -> weights (1, e) / (1 + e)
    two = torch.tensor([[[0.0, 1.0]]])
    assert float(attention_pool(two, 1.0)) == pytest.approx(math.e / (1 + math.e))


def test_sweep_scoring_equals_location_scoring_for_every_variant() -> None:
    s = torch.randn(5, 6, 49) * 3
    stats = location_statistics(s)
    assert stats["attn"].shape == (5, 6, len(CACHED_TEMPERATURES))
    for lam in (0.0, 0.1, 0.7):
        # max variant
        assert torch.allclose(csra_score(stats["avg"], stats["max"], lam), score_from_locations(s, lam), atol=1e-6)
        # multi-head variants from cached columns
        for h, temps in HEAD_TEMPERATURES.items():
            cols = [stats["max"] if math.isinf(t) else stats["attn"][..., CACHED_TEMPERATURES.index(t)] for t in temps]
            cached = csra_score(stats["avg"], multihead_attended(cols), lam)
            assert torch.allclose(cached, score_from_locations(s, lam, temps), atol=1e-5), h


def test_lam_zero_is_the_average() -> None:
    s = torch.randn(2, 3, 7)
    assert torch.equal(score_from_locations(s, 0.0), s.mean(-1))


def test_head_sets_follow_the_paper() -> None:
    assert HEAD_TEMPERATURES[1] == (1.0,)
    for h, temps in HEAD_TEMPERATURES.items():
        assert len(temps) == h
        if h > 1:
            assert math.isinf(temps[-1])
