"""Per-class average precision in torch ops, vectorised over classes (the GPU path and the reference;
on CPU :func:`csra_posthoc.metrics.average_precision` runs the numpy evaluation of ``batched.py``).

Matches scikit-learn's ``average_precision_score`` (non-interpolated area under the
precision-recall curve, tied scores forming one threshold) to float64 rounding. On tie-free
scores this is also what the official CSRA evaluation computes (mean precision at each positive).
Labels: 1 positive, 0 negative, -1 unknown (left out of that class, docs/method.md §4).
"""

from __future__ import annotations

import torch


def tie_run_ends(sorted_rows: torch.Tensor) -> torch.Tensor:
    """For rows sorted in descending order, the index of the last element of each element's run of
    equal values. A reverse running minimum over the run ends: unlike ``searchsorted``, no
    parallel region, which on a busy 2-core machine cost ~8 ms per call however small the input."""
    n = sorted_rows.shape[1]
    is_end = torch.ones_like(sorted_rows, dtype=torch.bool)
    is_end[:, :-1] = sorted_rows[:, :-1] != sorted_rows[:, 1:]
    index = torch.arange(n, device=sorted_rows.device).expand_as(sorted_rows)
    ends = torch.where(is_end, index, torch.full_like(index, n))
    return ends.flip(1).cummin(dim=1).values.flip(1)


def average_precision_torch(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`average_precision` in torch ops (any device): the reference and the GPU path.

    AP per class of ``scores`` ``(N, C)`` against ``labels`` ``(N, C)`` in {1, 0, -1}.

    Returns a float64 tensor ``(C,)``; classes with no positive get NaN (undefined, left out of
    the mean by :func:`mean_average_precision`).
    """
    if scores.shape != labels.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must both be (N, C)")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    if not scores.is_floating_point():
        scores = scores.double()
    # (C, N) rows: one contiguous sort per class. The order inside a run of tied scores does not
    # matter: every member of a run is credited with the precision at the run's end.
    sorted_scores, order = torch.sort(scores.t().contiguous(), dim=1, descending=True)
    sorted_labels = labels.t().contiguous().gather(1, order)
    tp = sorted_labels == 1
    cum_tp = torch.cumsum(tp, dim=1, dtype=torch.float64)
    cum_fp = torch.cumsum(sorted_labels == 0, dim=1, dtype=torch.float64)
    precision = cum_tp / (cum_tp + cum_fp).clamp_min(1.0)
    run_end = tie_run_ends(sorted_scores)
    num_pos = tp.sum(dim=1, dtype=torch.float64)
    ap = (precision.gather(1, run_end) * tp).sum(dim=1) / num_pos
    return torch.where(num_pos > 0, ap, torch.full_like(ap, float("nan")))
