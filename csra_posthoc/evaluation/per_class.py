"""Which classes gained? Per-class deltas with paired-bootstrap 95 % intervals (docs/method.md §8).

For the best, fixed and held-out rows of a sweep: per-class ΔAP (multi-label) or Δ per-class
top-1 (single-label: the fraction of a class's images whose top-1 is that class), in percent
points, with the 2.5 / 97.5 percentiles of the paired bootstrap over images.

One resampling serves every class and the sweep's mAP / top-1 intervals: :func:`bootstrap_with_classes`
draws the resamples of :func:`csra_posthoc.evaluation.bootstrap.bootstrap_deltas` (same seed, same chunks,
so the same multiplicities), computes each chunk's per-class AP matrices once
(:class:`~csra_posthoc.evaluation.bootstrap.WeightedAP`) and reads both the mean deltas (equal to
``bootstrap_deltas``'s) and the per-class deltas from them.

Conventions, as the sweep's bootstrap:

* a class with no positive in a resample (or, single-label, no image of it) has no delta in that
  resample; its interval is the percentiles of the resamples where it has one (NaN / null when
  none has; its point estimate is NaN / null when the full data has no positive of it);
* held-out row (``select_on`` half): the per-class delta is the mean, over the two directions, of
  the class's delta on the half it is scored on (the chosen setting's AP minus the baseline's on
  that half), as the held-out Δ is the mean of the halves' mAP deltas; a class with a positive in
  one half only takes that half's delta. ``select_on`` another split: its one direction.
* significant: the interval excludes 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import CSRAError
from ..report.plots import plot_class_deltas
from ..text import plain, safe
from .bootstrap import CHUNK_CELLS, Part, WeightedAP, WeightedTop1, _csr, check_resamples, resample_weights
from .results import ROW_NAMES, ClassDeltas, Interval, SweepResult, ranked

if TYPE_CHECKING:
    from rich.console import Console


class WeightedClassTop1:
    """Per-class top-1 accuracy (recall) of fixed ``scores`` under image multiplicities ``w``."""

    def __init__(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        n, c = labels.shape
        self.num_classes = c
        target = labels.argmax(dim=1).numpy()
        right = scores.argmax(dim=1).numpy() == target
        images = np.arange(n)
        self.labelled = _csr(target, images, c, n)  # (C, N): an image under its class
        self.correct = _csr(target[right], images[right], c, n)

    def __call__(self, weights: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` float64 accuracy in [0, 1], NaN for a class without an image of weight > 0."""
        wt = weights.t().to(torch.float32).contiguous()
        total = (self.labelled @ wt).double()
        hit = (self.correct @ wt).double()
        return torch.where(total > 0, hit / total.clamp_min(1.0), torch.full_like(total, float("nan"))).t()


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
    """:func:`csra_posthoc.evaluation.bootstrap.bootstrap_deltas`'s intervals (same resamples, same numbers) and,
    from the same resamples, each variant's per-class deltas with their intervals.

    ``n`` None: point estimates only (no resampling; intervals NaN, the first dict empty)."""
    resamples = None if n is None else check_resamples(n)
    parts = {name: [(None, v)] if isinstance(v, torch.Tensor) else list(v) for name, v in variants.items()}
    num_images = baseline.shape[0]
    if single_label:
        base_mean: Any = WeightedTop1(baseline, labels)
        base_cls: Any = WeightedClassTop1(baseline, labels)
        metrics: dict[str, list[tuple[torch.Tensor | None, Any, Any]]] = {
            name: [(mask, WeightedTop1(s, labels), WeightedClassTop1(s, labels)) for mask, s in p]
            for name, p in parts.items()
        }
        runs = 1
    else:
        base_cls = base_mean = WeightedAP(baseline, labels)
        metrics = {name: [(mask, m, m) for mask, s in p for m in [WeightedAP(s, labels)]] for name, p in parts.items()}
        runs = max([m.num_runs for ps in metrics.values() for _, m, _ in ps] + [base_mean.num_runs, 1])
    masks = {id(mask): mask for ps in metrics.values() for mask, _, _ in ps}

    def deltas(w: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        weighted = {key: w if mask is None else w * mask for key, mask in masks.items()}
        base_c = {key: base_cls(ww) for key, ww in weighted.items()}  # (B, C), once per mask
        if single_label:
            base_m = {key: base_mean.mean(ww) for key, ww in weighted.items()}
        else:
            base_m = {key: torch.nanmean(ap, dim=1) * 100.0 for key, ap in base_c.items()}
        means, per_class = {}, {}
        for name, ps in metrics.items():
            mean_parts, class_parts = [], []
            for mask, m_mean, m_cls in ps:
                key = id(mask)
                c = m_cls(weighted[key])
                mean = m_mean.mean(weighted[key]) if single_label else torch.nanmean(c, dim=1) * 100.0
                mean_parts.append(mean - base_m[key])
                class_parts.append((c - base_c[key]) * 100.0)
            means[name] = torch.stack(mean_parts).mean(dim=0)
            stacked = torch.stack(class_parts)
            per_class[name] = stacked[0] if len(class_parts) == 1 else _nanmean0(stacked)
        return means, per_class

    point_mean, point_cls = deltas(torch.ones(1, num_images))
    intervals: dict[str, Interval] = {}
    out: dict[str, ClassDeltas] = {}
    nan = np.full(len(classes), np.nan)
    if resamples is None:
        return intervals, {
            name: ClassDeltas(list(classes), point_cls[name][0].numpy(), nan.copy(), nan.copy()) for name in metrics
        }
    chunk = max(1, min(resamples, CHUNK_CELLS // max(runs, num_images)))  # as bootstrap_deltas: the same draws
    draws_mean: dict[str, list[torch.Tensor]] = {name: [] for name in metrics}
    draws_cls: dict[str, list[torch.Tensor]] = {name: [] for name in metrics}
    for w in resample_weights(num_images, resamples, seed, chunk):
        means, per_class = deltas(w)
        for name in metrics:
            draws_mean[name].append(means[name])
            draws_cls[name].append(per_class[name])
        if progress is not None:
            progress(w.shape[0])
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
    return intervals, out


def _nanmean0(x: torch.Tensor) -> torch.Tensor:
    """Mean over dim 0 of the defined values (NaN where none is), without nanmean's all-NaN warning."""
    defined = ~torch.isnan(x)
    total = torch.where(defined, x, torch.zeros_like(x)).sum(dim=0)
    count = defined.sum(dim=0)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def per_class_json(found: Mapping[str, ClassDeltas] | None) -> dict[str, Any] | None:
    """The results-JSON ``"per_class_delta"``: ``{"best" | "fixed" | "held_out": {class: {"delta", "low", "high"}}}``."""
    if found is None:
        return None
    return {name: found[name].to_json() for name in ROW_NAMES if name in found}


ROW_LABELS = {"best": "best λ", "fixed": "fixed λ", "held_out": "held-out λ"}


def print_per_class_table(console: Console, result: SweepResult, limit: int | None = 15) -> None:
    """Per-class Δ of the best, fixed and held-out rows with their 95 % intervals, one line per
    class sorted by the best row's Δ (largest gain first), ``*`` where an interval excludes 0.
    ``limit``: with more than ``2 * limit + 10`` classes, only the ``limit`` largest gains and losses."""
    from rich.table import Table
    from rich.text import Text

    found = result.per_class_delta
    if not found:
        console.print("per-class Δ: needs the bootstrap intervals (drop --no-bootstrap)")
        return
    names = [name for name in ROW_NAMES if name in found]
    metric = "top-1" if result.primary == "top1" else "AP"
    total = len(found["best"].classes)
    undefined = np.all([np.isnan(found[name].delta) for name in names], axis=0)  # no positive (no image) of the class
    order = [k for k in ranked(found["best"]) if not undefined[k]]
    shown = len(order)
    if limit is not None and shown > 2 * limit + 10:
        order = [*order[:limit], -1, *order[-limit:]]
    table = Table(
        title=f"per-class Δ{metric} (percent points), sorted by the best λ's; * : its 95 % CI excludes 0",
        title_justify="left",
    )
    table.add_column("class")
    for name in names:
        table.add_column(f"Δ {ROW_LABELS[name]}", justify="right", no_wrap=True)
        table.add_column("95 % CI", justify="right", no_wrap=True)
    for k in order:
        if k < 0:
            table.add_row(Text(f"… {shown - 2 * (limit or 0)} classes"), *["" for _ in range(2 * len(names))])
            continue
        cells: list[Any] = [Text(plain(found["best"].classes[k]))]
        for name in names:
            d, lo, hi, sig = found[name].delta[k], found[name].low[k], found[name].high[k], found[name].significant[k]
            colour = "green" if d > 0 else ("red" if d < 0 else "white")
            cells.append("-" if math.isnan(d) else f"[{colour}]{d:+.2f}[/]" + ("*" if sig else " "))
            cells.append("" if math.isnan(lo) else f"[{lo:+.2f}, {hi:+.2f}]")
        table.add_row(*cells)
    console.print(table)
    counts = []
    for name in names:
        deltas = found[name]
        sig = deltas.significant
        gains = [
            safe(c) for c, s, d in zip(deltas.classes, sig.tolist(), deltas.delta.tolist(), strict=True) if s and d > 0
        ]
        losses = [
            safe(c) for c, s, d in zip(deltas.classes, sig.tolist(), deltas.delta.tolist(), strict=True) if s and d < 0
        ]
        counts.append(f"{ROW_LABELS[name]}: {len(gains)} up, {len(losses)} down")
    unit = "an image" if result.primary == "top1" else "a positive"
    left_out = f"; {total - shown} classes without {unit} have no Δ" if shown < total else ""
    console.print(
        f"classes whose 95 % CI excludes 0, of {total}: "
        + "; ".join(counts)
        + f"{left_out} (all classes: per_class_delta in --out)",
        soft_wrap=True,
    )


def plot_per_class(result: SweepResult, path: str | Path, title: str | None = None) -> Path:
    """The per-class deltas as sorted bars with interval whiskers, one panel per row
    (:func:`csra_posthoc.report.plots.plot_class_deltas`)."""
    found = result.per_class_delta
    if not found:
        raise CSRAError(
            "plot_classes: the per-class intervals need the bootstrap (bootstrap resamples, not None)",
            param="plot_classes",
        )
    metric = "top-1" if result.primary == "top1" else "AP"
    panels = {ROW_LABELS[name]: found[name] for name in ROW_NAMES if name in found}
    return plot_class_deltas(panels, path, ylabel=f"Δ{metric} (pp)", title=title)
