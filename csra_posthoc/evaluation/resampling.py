"""One resampling for everything a sweep reports with an interval (docs/uncertainty.md, docs/method.md §8, §11).

The sweep's mAP / top-1 intervals (:func:`csra_posthoc.evaluation.bootstrap.bootstrap_deltas`), every
class's Δ (:mod:`csra_posthoc.evaluation.per_class`) and the object-size / clutter splits
(:mod:`csra_posthoc.evaluation.object_size`) all come from the same resamples (same seed, same
multiplicities) and, per chunk of resamples, from the same weighted counts: each row's per-class AP
matrix is computed once and read for the mean and the per-class deltas, and with splits the AP
comes from :class:`~csra_posthoc.evaluation.object_size.SplitAP`, whose one product also gives
every split's AP. So the splits add only their own positives' work to the sweep's bootstrap.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .bootstrap import (
    Part,
    WeightedAP,
    WeightedClassTop1,
    WeightedTop1,
    check_resamples,
    nanmean_quiet,
    resample_weights,
    resamples_per_chunk,
)
from .object_size import split_ap, split_means, split_result
from .results import ClassDeltas, Interval, SplitResult, Splits
from .split_ap import SPLIT_CHUNKS


@dataclass
class Resampled:
    """Each row's interval of its mean Δ, its per-class Δ and, with splits, its Δ by split."""

    intervals: dict[str, Interval]  # empty without resamples
    per_class: dict[str, ClassDeltas]
    splits: SplitResult | None = None


def resampled_deltas(
    baseline: torch.Tensor,
    variants: Mapping[str, torch.Tensor | Sequence[Part]],
    labels: torch.Tensor,
    classes: Sequence[str],
    *,
    single_label: bool = False,
    n: int | None = 1000,
    seed: int = 0,
    splits: Splits | None = None,
    progress: Callable[[int], None] | None = None,
) -> Resampled:
    """Paired-bootstrap deltas (variant minus baseline, percent points) of every named variant: the
    mean (:func:`~csra_posthoc.evaluation.bootstrap.bootstrap_deltas`'s numbers), per class and, given
    ``splits`` (multi-label only), by object size and clutter. Variants as ``bootstrap_deltas``:
    a score matrix or held-out parts ``(mask, scores)`` whose deltas are averaged.
    ``n`` None: point estimates only (no intervals)."""
    resamples = None if n is None else check_resamples(n)
    if splits is not None and single_label:
        raise ValueError("the size / clutter splits are multi-label only")
    parts = {name: [(None, v)] if isinstance(v, torch.Tensor) else list(v) for name, v in variants.items()}
    num_images = baseline.shape[0]
    with_splits = splits is not None
    if single_label:
        base_mean: Any = WeightedTop1(baseline, labels)
        base_cls: Any = WeightedClassTop1(baseline, labels)
        metrics: dict[str, list[tuple[torch.Tensor | None, Any, Any]]] = {
            name: [(mask, WeightedTop1(s, labels), WeightedClassTop1(s, labels)) for mask, s in p]
            for name, p in parts.items()
        }
        runs = 1
    else:

        def make(scores: torch.Tensor, masks: Sequence[torch.Tensor | None]) -> WeightedAP:
            if splits is None:
                return WeightedAP(scores, labels)
            return split_ap(scores, labels, splits, {id(mask): mask for mask in masks})  # a row set per mask

        base_cls = base_mean = make(baseline, [mask for p in parts.values() for mask, _ in p])
        metrics = {name: [(mask, m, m) for mask, s in p for m in [make(s, [mask])]] for name, p in parts.items()}
        runs = max([m.num_runs for ps in metrics.values() for _, m, _ in ps] + [base_mean.num_runs, 1])
    masks = {id(mask): mask for ps in metrics.values() for mask, _, _ in ps}

    def evaluate(m: Any, w: torch.Tensor, key: int) -> tuple[torch.Tensor, Any]:
        return m.evaluate(w, key) if with_splits else (m(w), None)

    def deltas(w: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
        weighted = {key: w if mask is None else w * mask for key, mask in masks.items()}
        base = {key: evaluate(base_cls, ww, key) for key, ww in weighted.items()}  # (B, C) and splits, once per mask
        if single_label:
            base_m = {key: base_mean.mean(ww) for key, ww in weighted.items()}
        else:
            base_m = {key: torch.nanmean(ap, dim=1) * 100.0 for key, (ap, _) in base.items()}
        means, per_class, by_split = {}, {}, {}
        for name, ps in metrics.items():
            mean_parts, class_parts, split_pairs = [], [], []
            for mask, m_mean, m_cls in ps:
                key = id(mask)
                c, found = evaluate(m_cls, weighted[key], key)
                mean = m_mean.mean(weighted[key]) if single_label else torch.nanmean(c, dim=1) * 100.0
                mean_parts.append(mean - base_m[key])
                class_parts.append((c - base[key][0]) * 100.0)
                split_pairs.append((found, base[key][1]))
            means[name] = torch.stack(mean_parts).mean(dim=0)
            stacked = torch.stack(class_parts)
            per_class[name] = stacked[0] if len(class_parts) == 1 else nanmean_quiet(stacked, dim=0)
            if with_splits:
                by_split[name] = split_means(split_pairs)
        return means, per_class, by_split

    point_mean, point_cls, point_split = deltas(torch.ones(1, num_images))
    nan = np.full(len(classes), np.nan)
    if resamples is None:
        return Resampled(
            {},
            {name: ClassDeltas(list(classes), point_cls[name][0].numpy(), nan.copy(), nan.copy()) for name in metrics},
            split_result(splits, classes, point_split, None) if splits is not None else None,
        )
    chunk = resamples_per_chunk(runs, num_images)  # as bootstrap_deltas
    if with_splits:
        chunk *= SPLIT_CHUNKS  # SplitAP takes the plain counts in the chunks above, its splits in one pass
    chunk = min(resamples, chunk)
    draws_mean: dict[str, list[torch.Tensor]] = {name: [] for name in metrics}
    draws_cls: dict[str, list[torch.Tensor]] = {name: [] for name in metrics}
    draws_split: dict[str, dict[str, list[torch.Tensor]]] = {name: {} for name in metrics}
    for w in resample_weights(num_images, resamples, seed, chunk):
        means, per_class, by_split = deltas(w)
        for name in metrics:
            draws_mean[name].append(means[name])
            draws_cls[name].append(per_class[name])
            for split, value in by_split.get(name, ({}, None))[0].items():
                draws_split[name].setdefault(split, []).append(value)
        if progress is not None:
            progress(w.shape[0])
    intervals: dict[str, Interval] = {}
    out: dict[str, ClassDeltas] = {}
    for name in metrics:
        values = torch.cat(draws_mean[name]).numpy()
        values = values[~np.isnan(values)]
        low, high = (np.percentile(values, [2.5, 97.5]).tolist()) if values.size else (float("nan"), float("nan"))
        intervals[name] = Interval(float(point_mean[name][0]), float(low), float(high))
        matrix = torch.cat(draws_cls[name]).numpy()  # (n, C)
        with warnings.catch_warnings():  # a class without a positive in every resample: NaN, said in the JSON as null
            warnings.simplefilter("ignore", RuntimeWarning)
            lows, highs = np.nanpercentile(matrix, [2.5, 97.5], axis=0)
        out[name] = ClassDeltas(list(classes), point_cls[name][0].numpy(), lows, highs)
    found = split_result(splits, classes, point_split, draws_split) if splits is not None else None
    return Resampled(intervals, out, found)


def bootstrap_with_classes(
    baseline: torch.Tensor,
    variants: Mapping[str, torch.Tensor | Sequence[Part]],
    labels: torch.Tensor,
    classes: Sequence[str],
    *,
    single_label: bool = False,
    n: int | None = 1000,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Interval], dict[str, ClassDeltas]]:
    """:func:`csra_posthoc.evaluation.bootstrap.bootstrap_deltas`'s intervals (same resamples, same numbers)
    and, from the same resamples, each variant's per-class deltas with their intervals
    (:func:`resampled_deltas` without splits)."""
    found = resampled_deltas(
        baseline, variants, labels, classes, single_label=single_label, n=n, seed=seed, progress=progress
    )
    return found.intervals, found.per_class


def split_deltas(
    baseline: torch.Tensor,
    variants: Mapping[str, torch.Tensor | Sequence[Part]],
    labels: torch.Tensor,
    classes: Sequence[str],
    splits: Splits,
    *,
    n: int | None = 1000,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> SplitResult:
    """Δ of every object-size / clutter split for every named variant with the 95 % interval of the
    sweep's paired bootstrap (:func:`resampled_deltas` with ``splits``; ``n`` None: point estimates)."""
    found = resampled_deltas(baseline, variants, labels, classes, n=n, seed=seed, splits=splits, progress=progress)
    assert found.splits is not None
    return found.splits
