"""Pure tensor metrics (tested against scikit-learn)."""

from __future__ import annotations

import torch

from .accuracy import topk_accuracy
from .average_precision import average_precision, mean_average_precision
from .batched import Evaluator, MultilabelEvaluator, SinglelabelEvaluator, evaluator
from .thresholded import UnknownPolicy, predicted_positive, thresholded_metrics

__all__ = [
    "Evaluator",
    "MultilabelEvaluator",
    "SinglelabelEvaluator",
    "UnknownPolicy",
    "average_precision",
    "evaluator",
    "mean_average_precision",
    "multilabel_metrics",
    "predicted_positive",
    "singlelabel_metrics",
    "thresholded_metrics",
    "topk_accuracy",
]


def multilabel_metrics(scores: torch.Tensor, labels: torch.Tensor, unknown: UnknownPolicy = "exclude") -> tuple[dict[str, float], torch.Tensor]:
    """mAP, CP..OF1 and their top-3 versions (percent), plus per-class AP (NaN = no positive)."""
    if scores.shape != labels.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must both be (N, C)")
    ev = evaluator(labels, single_label=False, unknown=unknown, device=scores.device)
    return ev.evaluate(ev.prepare(scores))


def singlelabel_metrics(scores: torch.Tensor, labels: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """Top-1 / top-5 accuracy for one-hot ``labels`` (N, C), plus per-class top-1 accuracy (recall,
    in [0, 1]; NaN for classes with no sample): cheap at ImageNet scale, unlike per-class AP."""
    if scores.dim() != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} must be (N, C) and labels {tuple(labels.shape)} too")
    ev = evaluator(labels, single_label=True, device=scores.device)
    return ev.evaluate(ev.prepare(scores))
