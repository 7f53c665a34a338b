"""Pure tensor metrics (tested against scikit-learn)."""

from __future__ import annotations

import torch

from .accuracy import topk_accuracy
from .average_precision import average_precision, mean_average_precision
from .thresholded import UnknownPolicy, predicted_positive, thresholded_metrics

__all__ = [
    "average_precision",
    "mean_average_precision",
    "thresholded_metrics",
    "predicted_positive",
    "topk_accuracy",
    "multilabel_metrics",
    "singlelabel_metrics",
    "UnknownPolicy",
]


def multilabel_metrics(
    scores: torch.Tensor, labels: torch.Tensor, unknown: UnknownPolicy = "exclude"
) -> tuple[dict[str, float], torch.Tensor]:
    """mAP, CP..OF1 and their top-3 versions (percent), plus per-class AP (NaN = no positive)."""
    mAP, ap = mean_average_precision(scores, labels)
    out = {"mAP": mAP}
    out.update(thresholded_metrics(scores, labels, unknown=unknown))
    out.update({f"{k}_top3": v for k, v in thresholded_metrics(scores, labels, top_k=3, unknown=unknown).items()})
    return out, ap


def singlelabel_metrics(scores: torch.Tensor, labels: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """Top-1 / top-5 accuracy for one-hot ``labels`` (N, C), plus per-class top-1 accuracy (recall,
    in [0, 1]; NaN for classes with no sample): cheap at ImageNet scale, unlike per-class AP."""
    targets = labels.argmax(dim=1)
    out = topk_accuracy(scores, targets, (1, 5))
    correct = (scores.argmax(dim=1) == targets).double()
    num_classes = labels.shape[1]
    hits = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, targets, correct)
    counts = torch.bincount(targets, minlength=num_classes).double()
    per_class = torch.where(counts > 0, hits / counts.clamp_min(1), torch.full_like(hits, float("nan")))
    return out, per_class
