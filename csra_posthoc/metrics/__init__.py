"""Pure tensor metrics (tested against scikit-learn).

The public functions here dispatch by device: on CPU the numpy evaluation of ``batched.py``, elsewhere
the torch engines of ``average_precision.py`` / ``thresholded.py`` (``torch_reference.py`` composes them).
"""

from __future__ import annotations

import torch

from .accuracy import topk_accuracy
from .average_precision import average_precision_torch
from .batched import Evaluator, MultilabelEvaluator, SinglelabelEvaluator, check_finite, evaluator
from .thresholded import UnknownPolicy, predicted_positive, thresholded_metrics_torch

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


def multilabel_metrics(
    scores: torch.Tensor, labels: torch.Tensor, unknown: UnknownPolicy = "exclude"
) -> tuple[dict[str, float], torch.Tensor]:
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


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AP per class of ``scores`` ``(N, C)`` against ``labels`` ``(N, C)`` in {1, 0, -1}.

    Returns a float64 tensor ``(C,)``; classes with no positive get NaN (undefined, left out of
    the mean by :func:`mean_average_precision`). On CPU: one numpy sort per class
    (:class:`~csra_posthoc.metrics.batched.MultilabelEvaluator`); elsewhere torch ops.
    """
    if scores.shape != labels.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must both be (N, C)")
    if scores.device.type != "cpu":
        return average_precision_torch(scores, labels)
    ev = MultilabelEvaluator(labels)
    prepared = ev.prepare(scores)
    check_finite(prepared)
    return torch.from_numpy(ev.average_precision(prepared))


def mean_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
    """mAP in percent over classes that have a positive, and the per-class AP (NaN = left out)."""
    ap = average_precision(scores, labels)
    valid = ~torch.isnan(ap)
    if not valid.any():
        raise ValueError("no class has a positive label: mAP is undefined")
    return float(ap[valid].mean() * 100.0), ap


def thresholded_metrics(
    scores: torch.Tensor,
    labels: torch.Tensor,
    threshold: float = 0.5,
    top_k: int | None = None,
    unknown: UnknownPolicy = "exclude",
) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 in percent for ``scores`` and ``labels`` ``(N, C)`` (numpy on CPU)."""
    if scores.device.type != "cpu":
        return thresholded_metrics_torch(scores, labels, threshold, top_k, unknown)
    ev = MultilabelEvaluator(labels, unknown=unknown, threshold=threshold, threads=1)
    return ev.thresholded(ev.prepare(scores), top_k)
