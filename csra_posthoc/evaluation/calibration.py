"""Per-class decision thresholds chosen to maximise each class's F1 (docs/method.md, "Calibrated thresholds").

``mean + lam * max`` shifts every score up, so the fixed rule ``sigmoid(score) >= 0.5`` predicts
more classes after patching. Multi-label practitioners instead tune one threshold per class on
labelled data; here on the sweep's own images:

* :func:`f1_thresholds`: for each class, the threshold ``t`` on the raw score scale (class ``c``
  is predicted when ``score_c >= t_c``) that maximises that class's F1 on the given images.
  Candidates are the class's own score values. Ties in F1: the **highest** such threshold (the
  fewest predicted positives). A class with no positive label (F1 is 0 whatever the threshold)
  keeps the fixed rule's threshold, score 0 (sigmoid 0.5). Unknown labels (-1) are left out
  (``unknown="exclude"``) or count as negatives (``"negative"``), as in the thresholded metrics.
* :func:`held_out_f1`: CF1 / OF1 (the metrics module's definitions) at thresholds chosen on one
  seeded half of the images and applied to the other, both ways, averaged; next to the fixed
  ``sigmoid(score) >= 0.5`` on the same halves.

One sort of the (C, N) score matrix does all classes at once (as metrics/batched.py). Measured at
COCO size (40,000 x 80) on a loaded 2-core machine: 0.9 s to choose a row's thresholds, 1.3-1.6 s for
its held-out halves; rows with the same setting (best_variant is often best) are scored once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..extraction.statistics import ClassStatistics
from ..metrics.thresholded import UnknownPolicy, metrics_from_counts, thresholded_metrics_torch
from .grid import row_scores
from .results import SweepResult
from .selection import half_masks

NO_POSITIVE_THRESHOLD = 0.0  # sigmoid(0) = 0.5: a class with no positive keeps the fixed rule
METHOD = "per-class threshold maximising the class's F1 on all evaluated images (highest on ties; score 0 for a class with no positive)"


def _known(labels: torch.Tensor, unknown: UnknownPolicy) -> tuple[torch.Tensor, torch.Tensor]:
    positive = labels == 1
    counted = labels != -1 if unknown == "exclude" else torch.ones_like(positive)
    return positive, counted


def f1_thresholds(scores: torch.Tensor, labels: torch.Tensor, unknown: UnknownPolicy = "exclude") -> torch.Tensor:
    """Per-class thresholds ``(C,)`` (float64, raw score scale) maximising each class's F1.

    ``scores`` and ``labels`` are ``(N, C)``; labels 1 positive, 0 negative, -1 unknown.
    F1 at ``t`` is ``2 TP / (predicted + positives)`` with predicted = counted images with
    ``score >= t``. The threshold is one of the class's scores: the highest one reaching the
    maximal F1; a class with no positive gets :data:`NO_POSITIVE_THRESHOLD`.
    """
    if scores.shape != labels.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must both be (N, C)")
    n, c = scores.shape
    out = torch.full((c,), NO_POSITIVE_THRESHOLD, dtype=torch.float64)
    if n == 0:
        return out
    s = scores.detach().cpu().t().double().contiguous()  # (C, N): each class's scores contiguous for the sort
    positive, counted = _known(labels.cpu().t(), unknown)
    s_sorted, order = s.sort(dim=1, descending=True, stable=True)  # the one sort
    tp = positive.gather(1, order).cumsum(1)  # (C, N) int64: TP when the top k+1 are predicted
    n_pred = counted.gather(1, order).cumsum(1)
    n_gt = positive.sum(1)
    f1 = (2 * tp).double() / (n_pred + n_gt.unsqueeze(1)).clamp_min(1).double()  # exact ratios: equal F1s compare equal
    # a threshold equal to s_sorted[k] predicts every tied score too: only the last of a tie group is reachable
    last_of_group = torch.ones_like(s_sorted, dtype=torch.bool)
    last_of_group[:, :-1] = s_sorted[:, :-1] != s_sorted[:, 1:]
    f1.masked_fill_(~last_of_group, -1.0)
    best = f1.argmax(dim=1)  # first maximum in descending order: the highest threshold on ties
    chosen = s_sorted.gather(1, best.unsqueeze(1)).squeeze(1)
    return torch.where(n_gt > 0, chosen, out)


def f1_at(
    scores: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor, unknown: UnknownPolicy = "exclude"
) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 in percent predicting ``score_c >= thresholds[c]`` (the metrics module's formulas)."""
    pred = scores.double().cpu() >= thresholds.double().cpu().unsqueeze(0)
    positive, counted = _known(labels.cpu(), unknown)
    tp = (pred & positive).sum(0).double()
    n_pred = (pred & counted).sum(0).double()
    return metrics_from_counts(tp, n_pred, positive.sum(0).double())


@dataclass
class HeldOutF1:
    """CF1 / OF1 in percent on held-out halves: calibrated thresholds vs sigmoid(score) >= 0.5."""

    cf1: float
    of1: float
    cf1_at_half: float
    of1_at_half: float


def held_out_f1(
    scores: torch.Tensor,
    labels: torch.Tensor,
    masks: tuple[torch.Tensor, torch.Tensor],
    unknown: UnknownPolicy = "exclude",
) -> HeldOutF1 | None:
    """Thresholds chosen on each half, CF1 / OF1 on the other, both directions averaged; the fixed
    0.5 rule on the same halves. None when a half has no positive label (nothing to score)."""
    got: list[tuple[float, float, float, float]] = []
    for choose, score in ((masks[0], masks[1]), (masks[1], masks[0])):
        t = f1_thresholds(scores[choose], labels[choose], unknown)
        try:
            cal = f1_at(scores[score], labels[score], t, unknown)
            fixed = thresholded_metrics_torch(scores[score], labels[score], 0.5, None, unknown)
        except ValueError:
            return None
        got.append((cal["CF1"], cal["OF1"], fixed["CF1"], fixed["OF1"]))
    return HeldOutF1(*(sum(v) / len(got) for v in zip(*got, strict=True)))


def row_thresholds_json(
    scores: torch.Tensor,
    labels: torch.Tensor,
    masks: tuple[torch.Tensor, torch.Tensor] | None,
    unknown: UnknownPolicy,
    seed: int,
) -> dict[str, Any]:
    """One row's entry of the results JSON's ``thresholds`` (contract C1): ``values`` chosen on all
    images, ``cf1`` / ``of1`` / ``cf1_at_0.5`` / ``of1_at_0.5`` held-out (None when not scorable)."""
    values = f1_thresholds(scores, labels, unknown)
    held = held_out_f1(scores, labels, masks, unknown) if masks is not None else None
    return {
        "values": [float(v) for v in values.tolist()],
        "scale": "score",
        "method": METHOD,
        "held_out": "halves" if held is not None else None,
        "seed": seed,
        "cf1": held.cf1 if held else None,
        "of1": held.of1 if held else None,
        "cf1_at_0.5": held.cf1_at_half if held else None,
        "of1_at_0.5": held.of1_at_half if held else None,
    }


def sweep_thresholds(result: SweepResult, stats: ClassStatistics, seed: int = 0) -> dict[str, dict[str, Any]] | None:
    """The ``thresholds`` field for a multi-label sweep (None for single-label tasks: they predict by
    rank): rows ``baseline``, ``best``, ``fixed``, ``best_variant``, scored as the sweep scores them
    (:func:`csra_posthoc.evaluation.grid.row_scores`); held-out on the halves of ``select_on half`` (``seed``)."""

    if result.primary != "mAP":
        return None
    masks = half_masks(stats.num_images, seed) if stats.num_images >= 4 else None
    unknown = stats.info.unknown
    rows = {
        "baseline": result.baseline,
        "best": result.best,
        "fixed": result.fixed,
        "best_variant": result.best_variant,
    }
    out: dict[str, dict[str, Any]] = {}
    done: dict[tuple[Any, float], dict[str, Any]] = {}  # best_variant is often best itself: scored once
    for key, row in rows.items():
        setting = ("baseline", 0.0) if row.lam == 0.0 else (row.variant, row.lam)
        if setting not in done:
            scores = stats.avg if row.lam == 0.0 else row_scores(stats, row)
            done[setting] = row_thresholds_json(scores, stats.labels, masks, unknown, seed)
        out[key] = dict(done[setting])
    return out
