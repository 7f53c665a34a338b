"""Single-label top-k accuracy."""

from __future__ import annotations

import torch


def topk_accuracy(scores: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent; ``targets`` are class indices ``(N,)``. k > C is clamped to C."""
    if scores.dim() != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(f"scores {tuple(scores.shape)} must be (N, C) and targets {tuple(targets.shape)} (N,)")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices
    hit = top == targets[:, None]
    return {f"top{k}": float(hit[:, : min(k, kmax)].any(dim=1).double().mean() * 100.0) for k in ks}
