"""Results for people (a rich table in the spirit of the paper's Table 1) and for scripts (JSON, NPZ)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from ..atomic import atomic_write
from ..data.transforms import describe_transform
from ..evaluation.bootstrap import bootstrap_json
from ..evaluation.grid import row_scores
from ..evaluation.per_class import per_class_json
from ..evaluation.results import HeldOut, SweepResult, SweepRow
from ..extraction.statistics import ClassStatistics
from ..text import safe
from .results_file import SCHEMA


def report_console() -> Console:
    """Stdout console; 120 columns when not a terminal so piped or logged tables are not squeezed."""
    return Console(width=None if Console().is_terminal else 120)


def _per_class(stats: ClassStatistics, row: SweepRow) -> dict[str, float | None]:
    return {
        c: (None if math.isnan(v) else v * 100.0) for c, v in zip(stats.classes, row.per_class_ap.tolist(), strict=True)
    }


def results_dict(result: SweepResult, stats: ClassStatistics, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a paper table or a script needs (mAP and accuracies in percent)."""
    info = stats.info
    out: dict[str, Any] = {
        "schema": SCHEMA,  # results_file.ResultsFile reads it back (the one reader)
        "model": info.model,
        "dataset": info.dataset,
        "split": info.split,
        "num_images": stats.num_images,
        "num_classes": len(stats.classes),
        "classes": stats.classes,
        "primary_metric": result.primary,
        "baseline_source": info.baseline_source,
        "location_head": info.location_head,
        "identity_max_abs_diff": info.identity_max_abs_diff,
        "identity_max_rel_diff": info.identity_max_rel_diff,
        "weights": info.weights,
        "weights_fingerprint": info.weights_fingerprint,
        "head_fingerprint": info.head_fingerprint,
        "head": info.head,
        "transform": info.transform,
        "transform_description": describe_transform(info.transform),
        "data_options": info.data_options,
        "data_notes": info.data_notes,
        "notes": info.notes,
        "baseline": result.baseline.metrics,
        "rows": [r.to_json() for r in result.rows]
        + ([{**result.test_pool.to_json(), "lam": None, **(info.test_pool or {})}] if result.test_pool else []),
        "best": result.best.to_json(),
        "fixed": result.fixed.to_json(),
        "best_variant": result.best_variant.to_json(),
        "classes_left_out_of_mAP": result.excluded_classes,
        "classes_all_positive": result.all_positive_classes,
        "mAP_without_all_positive": result.mAP_without_all_positive,
        "cache_key_images": info.cache.images_key,
        "per_class_metric": "top1" if result.primary == "top1" else "AP",
        "per_class": {
            "baseline": _per_class(stats, result.baseline),
            "best": _per_class(stats, result.best),
            "fixed": _per_class(stats, result.fixed),
        },
    }
    if result.model_logits is not None:
        out["model_logits"] = result.model_logits
    # docs/uncertainty.md: lam chosen where it is not scored, and 95 % intervals of the deltas (null when off)
    out["held_out"] = result.held_out.to_json() if result.held_out is not None else None
    out["bootstrap"] = None
    if result.uncertainty_notes:
        out["uncertainty_notes"] = result.uncertainty_notes
    if result.bootstrap is not None:
        out["bootstrap"] = bootstrap_json(result.bootstrap, result.bootstrap_n or 0, result.bootstrap_seed or 0)
    if (
        result.thresholds is not None
    ):  # per-class F1 thresholds by row (multi-label only; single-label predicts by rank)
        out["thresholds"] = result.thresholds
    out["per_class_delta"] = per_class_json(
        result.per_class_delta
    )  # per-class Δ with intervals (null without the bootstrap)
    out.update(extra or {})
    return out


def write_json(path: str | Path, data: dict[str, Any] | list[Any]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=2, allow_nan=False)

    atomic_write(Path(path), write)


def save_scores(path: str | Path, result: SweepResult, stats: ClassStatistics) -> None:
    """NPZ of plain arrays (``numpy.load`` needs no ``allow_pickle``): ids, labels, classes, scores."""
    arrays = {
        "ids": np.array(stats.ids, dtype=str),
        "labels": stats.labels.numpy().astype(np.int8),
        "classes": np.array(stats.classes, dtype=str),
        "baseline": stats.avg.numpy().astype(np.float32),
        "best": row_scores(stats, result.best).numpy().astype(np.float32),
        "fixed": row_scores(stats, result.fixed).numpy().astype(np.float32),
    }

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub reads **kwds as allow_pickle

    atomic_write(Path(path), write)


def _print_honesty_notes(console: Console, result: SweepResult) -> None:
    """What "optimistic", "held-out" and the interval mean, in one or two lines under the table."""
    held = result.held_out
    if held is not None:
        if held.select_on == "half":
            how = (
                f"chosen on one random half of the images and scored on the other, both ways, averaged (seed {held.seed}; "
                "its score and the 'baseline (same halves)' row are means over the halves; its Δ is against that baseline)"
            )
        else:
            how = f"chosen on split {safe(held.select_on)} and scored on this one"
        console.print(
            f"optimistic: λ chosen on the scored images themselves (the paper's 'varying λ'); held-out: {how}",
            soft_wrap=True,
        )
    for note in result.uncertainty_notes:
        console.print(f"note: {safe(note)}", soft_wrap=True)
    if result.bootstrap is not None:
        console.print(
            f"95 % CI: paired bootstrap over images ({result.bootstrap_n} resamples, seed {result.bootstrap_seed}); n.s.: the interval contains 0",
            soft_wrap=True,
        )


def _print_thresholds(console: Console, result: SweepResult) -> None:
    """One line per row: held-out CF1 / OF1 at sigmoid 0.5 -> at the calibrated per-class thresholds."""
    found = result.thresholds or {}
    scored = {k: v for k, v in found.items() if v.get("cf1") is not None}
    if not scored:
        if found:
            console.print(
                "thresholds: per-class F1 thresholds stored; too few images to score them on halves", soft_wrap=True
            )
        return
    labels = {"baseline": "baseline", "best": "best λ", "fixed": "fixed λ", "best_variant": "best variant"}
    seed = next(iter(scored.values())).get("seed")
    parts = [
        f"{labels.get(k, k)} CF1 {v['cf1_at_0.5']:.2f} -> {v['cf1']:.2f}, OF1 {v['of1_at_0.5']:.2f} -> {v['of1']:.2f}"
        for k, v in scored.items()
    ]
    console.print(
        f"thresholds (per-class F1, chosen on one seeded half, scored on the other, both ways; seed {seed}; sigmoid 0.5 -> calibrated): "
        + "; ".join(parts),
        soft_wrap=True,
    )


def _delta(value: float, base: float) -> str:
    d = value - base
    colour = "green" if d > 0 else ("red" if d < 0 else "white")
    return f"[{colour}]{d:+.2f}[/]"


def _interval(result: SweepResult, name: str) -> str:
    """``[low, high]`` of the delta's 95 % bootstrap interval, ``n.s.`` when it holds 0."""
    iv = (result.bootstrap or {}).get(name)
    if iv is None:
        return ""
    return f"[{iv.low:+.2f}, {iv.high:+.2f}]" + ("" if iv.significant else " [yellow]n.s.[/]")


def _held_out_setting(held: HeldOut) -> tuple[str, str]:
    """Variant and lam of the held-out row; ``a/b`` (half A's choice / half B's) when they differ."""
    variants = list(dict.fromkeys(c.variant.label for c in held.choices))
    lams = list(dict.fromkeys(f"{c.lam:g}" for c in held.choices))
    if held.agreed is not None:
        return variants[0], lams[0]
    return " / ".join(c.variant.label for c in held.choices) if len(variants) > 1 else variants[0], "/".join(
        f"{c.lam:g}" for c in held.choices
    )


def _test_pool_label(setting: dict[str, Any] | None) -> str:
    """The test-pool row's variant cell: its window and rule (docs/method.md §12)."""
    window = (setting or {}).get("window") or ["?", "?"]
    return f"avg-pool {window[0]}x{window[1]}, ½(mean+max)"


def print_table(
    console: Console, result: SweepResult, stats: ClassStatistics, metrics: list[str] | None = None
) -> None:
    """The paper's Table 1 for this run, one row per setting.

    Rows: the baseline (lam = 0), the best lam of avg + lam * max ("Varying lam", chosen on the
    scored images: labelled optimistic), the held-out lam (chosen where it is not scored) when the
    result has one, the paper's fixed lam, and the best softmax / multi-head variant (optimistic
    too); extra ``metrics`` become columns. With bootstrap intervals, a "95 % CI" column gives the
    interval of each delta and marks ``n.s.`` where it contains 0.
    """
    info, p = stats.info, result.primary
    metrics = list(metrics or (["top5"] if p == "top1" else []))
    metrics = [m for m in dict.fromkeys(metrics) if m != p]
    base = result.baseline.metrics[p]
    table = Table(
        title=f"{safe(info.model)} on {safe(info.dataset)} {safe(info.split)} ({stats.num_images} images)",
        title_justify="left",
    )
    table.add_column("setting")
    table.add_column("variant")
    table.add_column("λ", justify="right")
    table.add_column(f"{p} %", justify="right", no_wrap=True)
    table.add_column("Δ", justify="right", no_wrap=True)
    intervals = result.bootstrap is not None
    if intervals:
        table.add_column("95 % CI of Δ", justify="right", no_wrap=True)
    for m in metrics:
        table.add_column(m, justify="right", no_wrap=True)
    rows = (
        ("baseline", result.baseline, "-", ""),
        ("best λ (optimistic)", result.best, None, "best"),
        ("fixed λ (paper)", result.fixed, None, "fixed"),
        *(
            [("test-pool (timm)", result.test_pool, _test_pool_label(info.test_pool), "test_pool")]
            if result.test_pool is not None
            else []
        ),
        ("best variant (optimistic)", result.best_variant, None, ""),
    )
    for label, row, variant, name in rows:
        table.add_row(
            label,
            safe(variant or row.variant.label),
            "-" if row.variant.kind == "test-pool" else f"{row.lam:g}",
            f"{row.metrics[p]:.2f}",
            "" if row is result.baseline else _delta(row.metrics[p], base),
            *([_interval(result, name)] if intervals else []),
            *[f"{row.metrics[m]:.2f}" if m in row.metrics else "-" for m in metrics],
        )
        held = result.held_out
        if name == "best" and held is not None:  # the honest figure right under the optimistic one
            held_variant, held_lam = _held_out_setting(held)
            if held.select_on == "half":  # the halves' own baseline: the held-out Δ is measured against it
                table.add_row(
                    "baseline (same halves)",
                    "-",
                    "0",
                    f"{held.baseline:.2f}",
                    "",
                    *([""] if intervals else []),
                    *["" for _ in metrics],
                )
            table.add_row(
                f"held-out λ ({safe(held.select_on)})",
                safe(held_variant),
                held_lam,
                f"{held.score:.2f}",
                _delta(held.score, held.baseline),
                *([_interval(result, "held_out")] if intervals else []),
                *["" for _ in metrics],
            )
    console.print(table)
    _print_honesty_notes(console, result)
    _print_thresholds(console, result)
    source = info.baseline_source
    diff = info.identity_max_abs_diff
    rel = info.identity_max_rel_diff
    if info.location_head == "nonlinear":
        relative = f", {rel:.2e} of the logits' scale" if rel is not None else ""
        console.print(
            "baseline = the model's own logits; non-linear head: the attended term applies the whole head at each location "
            f"(self-check head(pooled features) vs logits: max abs diff {diff:.2e}{relative})"
        )
    elif source == "model_logits":
        relative = f", {rel:.2e} of the logits' scale" if rel is not None else ""
        console.print(f"baseline = the model's own logits (identity checked: max abs diff {diff:.2e}{relative})")
    else:
        own = result.model_logits or {}
        console.print(
            f"baseline = average of per-patch logits (class-token model); the model's own logits score "
            f"{own.get(p, float('nan')):.2f} {p} (max abs diff to patch average {diff:.2e})"
        )
    if result.excluded_classes:
        console.print(f"[yellow]left out of mAP (no positive):[/] {safe(', '.join(result.excluded_classes))}")
    if result.all_positive_classes:
        without = result.mAP_without_all_positive or {}
        figures = ", ".join(
            f"{label} {without[k]:.2f}"
            for k, label in (("baseline", "baseline"), ("best", "best λ"), ("fixed", "fixed λ"))
            if without.get(k) is not None
        )
        console.print(
            f"[yellow]positive in every image (AP is 100 whatever the scores):[/] {safe(', '.join(result.all_positive_classes))}; "
            f"mAP without them: {figures or 'no class left'}",
            soft_wrap=True,
        )
    console.print(f"head: {safe(info.head)}; weights: {safe(info.weights)}", soft_wrap=True)
    console.print(f"transform: {safe(describe_transform(info.transform))}", soft_wrap=True)
    images_key = info.cache.images_key
    if images_key == "size+mtime":
        console.print("cache key: image files by size+mtime (--verify-images hashes their contents)")
    elif images_key:
        console.print(f"cache key: image files by {safe(images_key)}")
    for note in [*info.data_notes, *info.notes]:
        console.print(f"note: {safe(note)}", soft_wrap=True)
