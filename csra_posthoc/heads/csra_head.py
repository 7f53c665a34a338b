"""The CSRA head: a pooled-feature classifier applied per location, pooled as ``avg + lam * attended``.

One concept in two forms, as timm ships its pooling layers: :func:`csra_head` (a plain function)
and :class:`CSRAHead` (an ``nn.Module`` holding the classifier and the settings). Both score
through :func:`csra_posthoc.heads.scoring.score_from_locations`, the function the sweep uses on cached
statistics, so a patched model returns exactly the numbers a sweep reports (docs/method.md §2).

Settings: ``lam`` >= 0 and either one ``temperature`` (``inf``: the max, the paper's training-free
trick; finite T: the softmax(T * s)-weighted average) or ``heads`` H in {1, 2, 4, 6, 8} (the mean
of the attended terms over the paper's temperature set for H heads).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from ..defaults import HEAD_COUNTS
from ..errors import CSRAError
from .location import LocationHead
from .scoring import head_temperatures, score_from_locations


def resolve_temperatures(temperature: float = math.inf, heads: int | None = None) -> tuple[float, ...]:
    """The temperatures a head pools with: ``(temperature,)`` or the paper's set for ``heads`` heads."""
    if heads is not None:
        try:
            return head_temperatures(heads)
        except ValueError:
            raise CSRAError(
                f"heads {heads}: the paper's head counts are {', '.join(map(str, HEAD_COUNTS))}", param="heads"
            ) from None
    t = float(temperature)
    if math.isnan(t) or t <= 0:
        raise CSRAError(f"temperature {temperature}: must be > 0 (inf for the max)", param="temperature")
    return (t,)


def check_lam(lam: float) -> float:
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0:
        raise CSRAError(f"lam {lam}: must be a finite number >= 0", param="lam")
    return lam


def csra_head(
    fmap: torch.Tensor, classifier: LocationHead, lam: float, temperatures: Sequence[float] = (math.inf,)
) -> torch.Tensor:
    """``(B, d, H, W)`` feature map -> ``(B, C)`` CSRA scores: ``mean_k s + lam * attended(s)``."""
    return score_from_locations(classifier(fmap), lam, temperatures)


class CSRAHead(nn.Module):
    """Module form of :func:`csra_head`; ``lam = 0`` gives the classifier's own (average-pooled) logits."""

    def __init__(
        self, classifier: LocationHead, lam: float = 0.2, temperature: float = math.inf, heads: int | None = None
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.lam = check_lam(lam)
        self.heads = heads
        self.temperatures = resolve_temperatures(temperature, heads)

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    @property
    def variant(self) -> str:
        """``max``, ``softmax`` or ``heads``: the sweep's name for these settings."""
        if self.heads is not None:
            return "heads"
        return "max" if math.isinf(self.temperatures[0]) else "softmax"

    def location_scores(self, fmap: torch.Tensor) -> torch.Tensor:
        """Per-location class scores ``(B, C, H*W)``."""
        return self.classifier(fmap)

    def pool(self, s: torch.Tensor, baseline: torch.Tensor | None = None) -> torch.Tensor:
        """CSRA scores ``(B, C)`` from per-location scores (``baseline``: the lam = 0 term when it is
        not their mean, as for a non-linear head)."""
        return score_from_locations(s, self.lam, self.temperatures, baseline)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.pool(self.location_scores(fmap))

    def extra_repr(self) -> str:
        temps = ", ".join(f"{t:g}" for t in self.temperatures)
        return f"lam={self.lam:g}, temperatures=({temps}), variant={self.variant}"
