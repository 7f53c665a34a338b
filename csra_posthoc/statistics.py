"""Per-image, per-class statistics: everything the sweep and a patched model's scoring need."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .scoring import attention_pool


@dataclass
class ClassStatistics:
    """Sufficient statistics of the per-location scores for one model on one split.

    ``avg`` and ``max`` ``(N, C)``; ``attn`` ``(N, C, T)`` softmax-weighted averages at
    ``temperatures``; ``logits`` the model's own output (equal to ``avg`` where the identity
    holds); ``maps`` the full per-location scores ``(N, C, K)`` when kept.
    """

    ids: list[str]
    classes: list[str]
    labels: torch.Tensor
    avg: torch.Tensor
    max: torch.Tensor
    attn: torch.Tensor
    temperatures: tuple[float, ...]
    logits: torch.Tensor
    maps: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return len(self.ids)

    def attended(self, temperature: float) -> torch.Tensor:
        """``a_T`` per image and class: the max for T = inf, else the cached softmax average."""
        if math.isinf(temperature):
            return self.max
        if temperature in self.temperatures:
            return self.attn[..., self.temperatures.index(temperature)]
        if self.maps is not None:
            return attention_pool(self.maps.float(), temperature)
        cached = ", ".join(f"{t:g}" for t in self.temperatures)
        raise KeyError(f"temperature {temperature:g} is not cached (cached: {cached}, inf); extract with keep_maps=True")
