"""The metrics in torch ops: what runs where the scores live on a GPU, and the reference the
numpy evaluation (``batched.py``) is benchmarked and tested against."""

from __future__ import annotations

import torch

from .accuracy import topk_accuracy
from .average_precision import average_precision_torch
from .thresholded import UnknownPolicy, thresholded_metrics_torch


def multilabel_metrics(
    scores: torch.Tensor, labels: torch.Tensor, unknown: UnknownPolicy = "exclude"
) -> tuple[dict[str, float], torch.Tensor]:
    """mAP, CP..OF1 and their top-3 versions (percent), plus per-class AP (NaN = no positive)."""
    ap = average_precision_torch(scores, labels)
    valid = ~torch.isnan(ap)
    if not valid.any():
        raise ValueError("no class has a positive label: mAP is undefined")
    out = {"mAP": float(ap[valid].mean() * 100.0)}
    out.update(thresholded_metrics_torch(scores, labels, unknown=unknown))
    out.update({f"{k}_top3": v for k, v in thresholded_metrics_torch(scores, labels, top_k=3, unknown=unknown).items()})
    return out, ap


def singlelabel_metrics(scores: torch.Tensor, labels: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """Top-1 / top-5 accuracy for one-hot ``labels`` (N, C), plus per-class top-1 accuracy (NaN for
    classes with no sample)."""
    targets = labels.argmax(dim=1)
    out = topk_accuracy(scores, targets, (1, 5))
    correct = (scores.argmax(dim=1) == targets).double()
    num_classes = labels.shape[1]
    hits = torch.zeros(num_classes, dtype=torch.float64, device=scores.device).index_add_(0, targets, correct)
    counts = torch.bincount(targets, minlength=num_classes).double()
    per_class = torch.where(counts > 0, hits / counts.clamp_min(1), torch.full_like(hits, float("nan")))
    return out, per_class
