"""Per-class average precision, vectorised over classes.

Matches scikit-learn's ``average_precision_score`` (non-interpolated area under the
precision-recall curve, tied scores forming one threshold) to float64 rounding. On tie-free
scores this is also what the official CSRA evaluation computes (mean precision at each positive).
Labels: 1 positive, 0 negative, -1 unknown (left out of that class, METHOD.md §4).
"""

from __future__ import annotations

import torch


def _fill_backward(values: torch.Tensor, is_end: torch.Tensor) -> torch.Tensor:
    """For each row i, ``values`` at the first row j >= i where ``is_end`` holds (per column)."""
    n = values.shape[0]
    flipped = is_end.flip(0)
    index = torch.arange(n, device=values.device)[:, None].expand_as(values)
    last = torch.where(flipped, index, torch.zeros_like(index)).cummax(dim=0).values
    return values.flip(0).gather(0, last).flip(0)


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AP per class of ``scores`` ``(N, C)`` against ``labels`` ``(N, C)`` in {1, 0, -1}.

    Returns a float64 tensor ``(C,)``; classes with no positive get NaN (undefined, left out of
    the mean by :func:`mean_average_precision`).
    """
    if scores.shape != labels.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must both be (N, C)")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    scores = scores.double()
    order = torch.argsort(scores, dim=0, descending=True, stable=True)
    sorted_scores = scores.gather(0, order)
    sorted_labels = labels.gather(0, order)
    tp = (sorted_labels == 1).double()
    fp = (sorted_labels == 0).double()
    cum_tp = tp.cumsum(0)
    cum_fp = fp.cumsum(0)
    # The last row of each run of tied scores is where the PR curve takes a point.
    is_end = torch.ones_like(sorted_scores, dtype=torch.bool)
    is_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    precision = cum_tp / (cum_tp + cum_fp).clamp_min(1.0)
    precision_at_threshold = _fill_backward(precision, is_end)
    num_pos = tp.sum(0)
    ap = (tp * precision_at_threshold).sum(0) / num_pos
    return torch.where(num_pos > 0, ap, torch.full_like(ap, float("nan")))


def mean_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
    """mAP in percent over classes that have a positive, and the per-class AP (NaN = left out)."""
    ap = average_precision(scores, labels)
    valid = ~torch.isnan(ap)
    if not valid.any():
        raise ValueError("no class has a positive label: mAP is undefined")
    return float(ap[valid].mean() * 100.0), ap
