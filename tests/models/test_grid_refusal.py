"""Issue #22's bad input: a model whose forward_features output cannot be put on a grid is refused in
one line naming the model and the shapes (not an einsum or reshape error)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from csra_posthoc import CSRAError
from csra_posthoc.models.timm_models import build_timm_adapter


class Bands(nn.Module):
    """timm's contract with features of shape (B, 5 bands, 6 positions) and a head that averages the
    positions: 5-wide pooled vectors, but no (H, W) or token axis of 5-wide locations to score."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 5, 8, 8)
        self.fc = nn.Linear(5, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x).flatten(2)[:, :, :6]

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.fc(feats.mean(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def test_features_that_cannot_be_put_on_a_grid_are_one_line() -> None:
    with pytest.raises(CSRAError) as info:
        build_timm_adapter(Bands().eval(), "bands", "random-init")
    msg = str(info.value)
    assert msg == (
        "model bands: forward_features' output of shape (5, 6) cannot be put on a grid of 5-wide locations "
        "(the pooled vector's width)"
    )
