"""Which classes gained? Per-class deltas with paired-bootstrap 95 % intervals (docs/method.md §8).

For the best, fixed and held-out rows of a sweep: per-class ΔAP (multi-label) or Δ per-class
top-1 (single-label: the fraction of a class's images whose top-1 is that class), in percent
points, with the 2.5 / 97.5 percentiles of the paired bootstrap over images.

One resampling serves every class and the sweep's mAP / top-1 intervals:
:func:`csra_posthoc.evaluation.resampling.resampled_deltas` draws the resamples of
:func:`csra_posthoc.evaluation.bootstrap.bootstrap_deltas` (same seed, same chunks, so the same
multiplicities), computes each chunk's per-class AP matrices once
(:class:`~csra_posthoc.evaluation.bootstrap.WeightedAP`) and reads both the mean deltas (equal to
``bootstrap_deltas``'s) and the per-class deltas from them. This module reports them.

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
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CSRAError
from ..report.plots import plot_class_deltas
from ..text import plain, safe
from .results import ROW_NAMES, ClassDeltas, SweepResult, ranked

if TYPE_CHECKING:
    from rich.console import Console


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
