"""Held-out lam selection (docs/uncertainty.md): a setting chosen without looking at the images it is scored on.

The paper's "varying lam" picks lam on the evaluated images themselves, which flatters the gain.
Here the (variant, lam) with the best primary metric is chosen on one set of images and scored
on another:

* ``half``: a seeded split of the evaluated images into two halves; choose on one half, score on
  the other, in both directions; score and delta are the mean of the two directions.
* another split (``select_stats``): choose on all of its images, score on the evaluated split.

Candidates and scores come from :mod:`csra_posthoc.evaluation.grid` (``variants``, ``attended_scores``)
and :func:`csra_posthoc.heads.scoring.csra_score`, so a chosen setting scores exactly as in the sweep.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from ..defaults import DEFAULT_HEADS, DEFAULT_LAMS, DEFAULT_TEMPS
from ..errors import CSRAError
from ..extraction.statistics import ClassStatistics
from ..heads.scoring import csra_score
from ..metrics import Evaluator, mean_average_precision, topk_accuracy
from .grid import attended_scores, score_grid
from .results import Choice, HeldOut, Variant


def primary_metric(scores: torch.Tensor, labels: torch.Tensor, single_label: bool) -> float:
    """mAP (multi-label) or top-1 (single-label) in percent: the metric lam is chosen by."""
    try:
        if single_label:
            return topk_accuracy(scores, labels.argmax(dim=1), (1,))["top1"]
        return mean_average_precision(scores, labels)[0]
    except ValueError as exc:
        raise CSRAError(
            f"held-out selection: cannot score a part of the images ({exc}); use more images or another split"
        ) from None


def scored_candidates(
    stats: ClassStatistics,
    single_label: bool,
    lams: Sequence[float],
    temps: Sequence[float],
    heads: Sequence[int],
    progress: Callable[[int], None] | None = None,
) -> list[tuple[Variant, float, float]]:
    """``(variant, lam, primary metric)`` for every setting the sweep scores (lam = 0 first, once),
    scored as the sweep scores them (:func:`csra_posthoc.evaluation.grid.score_grid`), primary metric only."""

    def primary(stats: ClassStatistics, scorer: Evaluator, prepared: Any) -> float:
        try:
            return scorer.primary(prepared)
        except ValueError as exc:
            raise CSRAError(
                f"held-out selection: cannot score a part of the images ({exc}); use more images or another split"
            ) from None

    found = score_grid(stats, "single_label" if single_label else "multi_label", lams, temps, heads, primary, progress)
    return [found[0], *(row for row in found[1:] if row[1] != 0.0)]


def half_masks(num_images: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint boolean masks ``(N,)`` covering the images: a seeded random half and the rest."""
    if num_images < 4:
        raise CSRAError(f"held-out selection on halves needs at least 4 images, not {num_images}", param="select_on")
    perm = torch.randperm(num_images, generator=torch.Generator().manual_seed(int(seed)))
    first = torch.zeros(num_images, dtype=torch.bool)
    first[perm[: num_images // 2]] = True
    return first, ~first


def take_images(stats: ClassStatistics, mask: torch.Tensor) -> ClassStatistics:
    """The statistics of the images in ``mask`` (one gather per tensor, instead of one per scored setting:
    on a busy machine each small indexing op costs milliseconds)."""
    idx = mask.nonzero().flatten()
    return replace(
        stats,
        ids=[stats.ids[i] for i in idx.tolist()],
        labels=stats.labels[idx],
        avg=stats.avg[idx],
        max=stats.max[idx],
        attn=stats.attn[idx],
        logits=stats.logits[idx],
        maps=None if stats.maps is None else stats.maps[idx],
    )


def _best(scored: list[tuple[Variant, float, float]]) -> tuple[Variant, float]:
    """The sweep's rule: highest metric, the smaller lam on a tie, the first variant after that."""
    variant, lam, _ = max(scored, key=lambda r: (r[2], -r[1]))
    return variant, lam


def select_half(
    stats: ClassStatistics,
    *,
    single_label: bool,
    lams: Sequence[float] = DEFAULT_LAMS,
    temps: Sequence[float] = DEFAULT_TEMPS,
    heads: Sequence[int] = DEFAULT_HEADS,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> HeldOut:
    """Choose (variant, lam) on one seeded half of the evaluated images, score on the other, both ways."""
    masks = half_masks(stats.num_images, seed)
    on_half: list[list[tuple[Variant, float, float]]] = [[], []]
    for h, mask in enumerate(masks):  # each half's statistics taken once: scoring is per image, so this is exact
        on_half[h] = scored_candidates(take_images(stats, mask), single_label, lams, temps, heads, progress)
    base = [next(m for v, lam, m in on_half[h] if lam == 0.0) for h in range(2)]
    choices: list[Choice] = []
    parts: list[tuple[torch.Tensor | None, torch.Tensor]] = []
    for chosen, scored in ((0, 1), (1, 0)):
        variant, lam = _best(on_half[chosen])
        score = next(m for v, l2, m in on_half[scored] if v == variant and l2 == lam)
        choices.append(Choice(f"half {'AB'[chosen]}", variant, lam, score, score - base[scored], base[scored]))
        parts.append((masks[scored], _scores(stats, variant, lam)))
    return HeldOut("half", choices, parts, seed=int(seed))


def select_on_split(
    select_stats: ClassStatistics,
    eval_stats: ClassStatistics,
    select_name: str,
    *,
    single_label: bool,
    lams: Sequence[float] = DEFAULT_LAMS,
    temps: Sequence[float] = DEFAULT_TEMPS,
    heads: Sequence[int] = DEFAULT_HEADS,
    progress: Callable[[int], None] | None = None,
) -> HeldOut:
    """Choose (variant, lam) on all images of another split (``select_name``), score on the evaluated one."""
    if list(select_stats.classes) != list(eval_stats.classes):
        raise CSRAError(
            f"select_on {select_name}: its classes differ from the evaluated split's; choose on a split of the same dataset",
            param="select_on",
        )
    scored = scored_candidates(select_stats, single_label, lams, temps, heads, progress)
    variant, lam = _best(scored)
    scores = _scores(eval_stats, variant, lam)
    score = primary_metric(scores, eval_stats.labels, single_label)
    base = primary_metric(eval_stats.avg, eval_stats.labels, single_label)
    return HeldOut(select_name, [Choice(select_name, variant, lam, score, score - base, base)], [(None, scores)])


def _scores(stats: ClassStatistics, variant: Variant, lam: float) -> torch.Tensor:
    return stats.avg if lam == 0.0 else csra_score(stats.avg, attended_scores(stats, variant), lam)
