"""Thresholded multi-label metrics: CP, CR, CF1, OP, OR, OF1 (and their top-k versions).

Conventions follow the official CSRA evaluation (docs/method.md §4): a label is predicted positive
when ``sigmoid(score) >= threshold``; top-k keeps only each image's k highest scores; a class
with no positive prediction has precision 0. Our choices where the official code is undefined:
class averages run over classes with at least one positive (as mAP does); overall counts pool
every class. Unknown labels (-1) are left out (``unknown="exclude"``, VOC) or count as
negatives (``unknown="negative"``, WIDER-Attribute). This module is the torch engine; on CPU
:func:`csra_posthoc.metrics.thresholded_metrics` runs the numpy evaluation of ``batched.py``.
"""

from __future__ import annotations

import torch

from ..defaults import UnknownPolicy


def _f1(p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    denom = p + r
    return torch.where(denom > 0, 2 * p * r / denom.clamp_min(1e-300), torch.zeros_like(denom))


def predicted_positive(scores: torch.Tensor, threshold: float = 0.5, top_k: int | None = None) -> torch.Tensor:
    """Boolean ``(N, C)``: sigmoid(score) >= threshold, restricted to each row's top-k if given."""
    pred = torch.sigmoid(scores.double()) >= threshold
    if top_k is not None and top_k < scores.shape[1]:
        keep = torch.zeros_like(pred)
        keep.scatter_(1, scores.topk(top_k, dim=1).indices, True)
        pred &= keep
    return pred


def metrics_from_counts(tp: torch.Tensor, n_pred: torch.Tensor, n_gt: torch.Tensor) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 in percent from per-class counts ``(C,)`` (float64): the one formula
    both the torch and the numpy evaluation use."""
    classes = n_gt > 0
    if not classes.any():
        raise ValueError("no class has a positive label: CP/CR are undefined")
    class_p = tp / n_pred.clamp_min(1.0)
    class_r = tp / n_gt.clamp_min(1.0)
    cp, cr = class_p[classes].mean(), class_r[classes].mean()
    op = tp.sum() / n_pred.sum().clamp_min(1.0)
    or_ = tp.sum() / n_gt.sum()
    out = {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": or_, "OF1": _f1(op, or_)}
    return {k: float(v) * 100.0 for k, v in out.items()}


def thresholded_metrics_torch(
    scores: torch.Tensor,
    labels: torch.Tensor,
    threshold: float = 0.5,
    top_k: int | None = None,
    unknown: UnknownPolicy = "exclude",
) -> dict[str, float]:
    """:func:`thresholded_metrics` in torch ops (any device): the reference and the GPU path."""
    pred = predicted_positive(scores, threshold, top_k)
    positive = labels == 1
    counted = labels != -1 if unknown == "exclude" else torch.ones_like(positive)
    tp = (pred & positive).sum(0).double()
    n_pred = (pred & counted).sum(0).double()
    n_gt = positive.sum(0).double()
    return metrics_from_counts(tp, n_pred, n_gt)
