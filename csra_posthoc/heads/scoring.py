"""The CSRA score, in one place.

Both the sweep (which works on cached per-class statistics) and a patched model (which works
on per-location class scores) go through :func:`attention_pool` and :func:`csra_score`, so the
numbers a sweep reports are the numbers an exported model produces.

Shapes: per-location scores ``s`` are ``(B, C, K)`` with ``K = H * W`` locations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..defaults import CACHED_TEMPERATURES, HEAD_TEMPERATURES  # re-exported; defined torch-free for the flag checks

INF = math.inf


def attention_pool(s: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax(T * s)-weighted average of ``s`` over locations (last dim); T = inf is the max."""
    if math.isinf(temperature):
        return s.amax(dim=-1)
    weights = torch.softmax(s * temperature, dim=-1)
    return (weights * s).sum(dim=-1)


def location_statistics(
    s: torch.Tensor, temperatures: Sequence[float] = CACHED_TEMPERATURES
) -> dict[str, torch.Tensor]:
    """Per-class sufficient statistics of per-location scores ``(B, C, K)``.

    Returns ``avg`` and ``max`` of shape ``(B, C)`` and ``attn`` of shape ``(B, C, len(T))``:
    enough to score every lam / temperature / head variant without another forward pass.
    """
    s = s.float()
    attn = torch.stack([attention_pool(s, t) for t in temperatures], dim=-1)
    return {"avg": s.mean(dim=-1), "max": s.amax(dim=-1), "attn": attn}


def csra_score(avg: torch.Tensor, attended: torch.Tensor, lam: float) -> torch.Tensor:
    """``avg + lam * attended``: the training-free CSRA score (lam = 0 is the baseline)."""
    return avg + lam * attended


def head_temperatures(heads: int) -> tuple[float, ...]:
    """The paper's temperature set for ``heads`` heads; raises ``ValueError`` for other counts."""
    try:
        return HEAD_TEMPERATURES[heads]
    except KeyError:
        raise ValueError(f"{heads} heads is not one of the paper's sets {sorted(HEAD_TEMPERATURES)}") from None


def multihead_attended(per_temperature: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over heads of the attended scores (docs/method.md §2: same ranking as the paper's sum)."""
    per_temperature = list(per_temperature)
    if len(per_temperature) == 1:  # one head: the term itself (no stack / mean in an exported graph)
        return per_temperature[0]
    return torch.stack(per_temperature, dim=0).mean(dim=0)


def score_from_locations(
    s: torch.Tensor, lam: float, temperatures: Sequence[float] = (INF,), baseline: torch.Tensor | None = None
) -> torch.Tensor:
    """CSRA logits straight from per-location scores ``(B, C, K)``: what a patched model computes.

    One temperature is the single-head variant (``(inf,)``: avg + lam * max); several are the
    multi-head variant. ``baseline`` ``(B, C)``: the lam = 0 term when it is not the mean of ``s``
    (a non-linear head: the model's own logits, :mod:`csra_posthoc.models.nonlinear`).
    """
    attended = multihead_attended([attention_pool(s, t) for t in temperatures])
    return csra_score(s.mean(dim=-1) if baseline is None else baseline, attended, lam)
