"""ImageNet-ReaL: the reassessed multi-label view of the ImageNet validation set (docs/method.md §9).

``real.json`` (Beyer et al. 2020, "Are we done with ImageNet?") is a JSON list with one entry per
validation image, in file-name order: entry ``i`` (from 0) is the list of valid class indices of
``ILSVRC2012_val_{i + 1:08d}.JPEG``; an empty list means no label was agreed on.

As timm's ``RealLabelsImagenet`` (``validate.py --real-labels``): an image is matched to its entry
by its file name; it counts only when its set is non-empty; top-k is correct when any of
``scores.topk(k)``'s classes is in the set. timm keys the entries by the full name ``...JPEG``;
here by the stem ``ILSVRC2012_val_NNNNNNNN`` (any extension), the ids our ImageNet loader gives.
Multi-label mAP over the ReaL sets: the sets as a 0/1 label matrix over the images with a
non-empty set, scored by the sweep's mAP code (a class no kept image holds is left out).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import CSRAError
from ..evaluation.grid import row_scores, score_grid, stats_evaluator
from ..evaluation.results import SweepResult, Variant
from ..evaluation.selection import take_images
from ..text import safe

if TYPE_CHECKING:
    from rich.console import Console

    from ..extraction.statistics import ClassStatistics

NUM_CLASSES = 1000
_NAME = re.compile(r"ILSVRC2012_val_(\d{8})")


def read_real_labels(path: str | Path, num_classes: int = NUM_CLASSES) -> list[list[int]]:
    """The entries of ``real.json``; one line naming ``real_labels`` for a file that is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CSRAError(f"real_labels {path}: not a readable JSON file ({exc})", param="real_labels") from None
    if not isinstance(data, list) or not all(isinstance(e, list) for e in data):
        raise CSRAError(
            f"real_labels {path}: must be a JSON list with one list of class indices per validation image (real.json)",
            param="real_labels",
        )
    for i, entry in enumerate(data):
        for k in entry:
            if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < num_classes:
                raise CSRAError(
                    f"real_labels {path}: entry {i} (ILSVRC2012_val_{i + 1:08d}) holds {k!r}, not a class index 0..{num_classes - 1}",
                    param="real_labels",
                )
    return [sorted(set(e)) for e in data]


def image_number(image_id: str) -> int | None:
    """``ILSVRC2012_val_00000042`` (any folder, any extension) -> 42; None for another name."""
    stem = Path(image_id).name.split(".")[0]
    match = _NAME.fullmatch(stem)
    return int(match.group(1)) if match else None


def match_entries(
    ids: Sequence[str], entries: Sequence[list[int]], path: str | Path, whole_split: bool
) -> list[list[int]]:
    """Each image's ReaL set, matched by file name. ``whole_split``: the images are the whole split (no
    subset, none skipped), so the file must have exactly one entry per image, as timm asserts."""
    found = [image_number(i) for i in ids]
    bad = next((i for i, num in zip(ids, found, strict=True) if num is None), None)
    numbers = [num for num in found if num is not None]
    if bad is not None or not numbers:
        raise CSRAError(
            f"real_labels {path}: image {bad} is not named ILSVRC2012_val_NNNNNNNN; ReaL labels the ImageNet validation images",
            param="real_labels",
        )
    if whole_split and len(entries) != len(ids):
        raise CSRAError(
            f"real_labels {path}: has {len(entries)} entries, the validation set here has {len(ids)} images (one entry per image, in file-name order)",
            param="real_labels",
        )
    top = max(numbers)
    if top > len(entries):
        raise CSRAError(
            f"real_labels {path}: has {len(entries)} entries, but image ILSVRC2012_val_{top:08d} is evaluated",
            param="real_labels",
        )
    return [list(entries[num - 1]) for num in numbers]


@dataclass
class RealLabels:
    """The evaluated images' ReaL sets: ``keep`` the images with a non-empty set, ``labels`` their 0/1 matrix."""

    file: str
    ids: list[str]  # the evaluated images, in order
    sets: list[list[int]]  # one per evaluated image
    keep: torch.Tensor  # (N,) bool
    labels: torch.Tensor  # (kept, C) long

    @classmethod
    def for_images(
        cls, path: str | Path, ids: Sequence[str], num_classes: int = NUM_CLASSES, whole_split: bool = False
    ) -> RealLabels:
        sets = match_entries(ids, read_real_labels(path, num_classes), path, whole_split)
        keep = torch.tensor([bool(s) for s in sets], dtype=torch.bool)
        if not keep.any():
            raise CSRAError(
                f"real_labels {path}: every evaluated image has an empty ReaL set; nothing to score",
                param="real_labels",
            )
        kept = [s for s in sets if s]
        labels = torch.zeros(len(kept), num_classes, dtype=torch.long)
        rows = np.repeat(np.arange(len(kept)), [len(s) for s in kept])
        labels[torch.from_numpy(rows), torch.tensor([k for s in kept for k in s])] = 1
        return cls(str(path), list(ids), sets, keep, labels)

    def topk(self, scores: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
        """ReaL top-k in percent of ``scores`` ``(N, C)`` over the images with a non-empty set (timm's ``RealLabelsImagenet``)."""
        return real_topk(scores[self.keep], self.labels, ks)


def real_topk(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k in percent: ``scores.topk(k)`` (timm's call: largest, sorted) holds a class of the image's set (``labels`` 0/1)."""
    pred = scores.topk(min(max(ks), scores.shape[1]), 1, True, True).indices
    hit = labels.to(pred.device).gather(1, pred) == 1  # (N, k): is each predicted class in the set
    return {f"top{k}": float(hit[:, :k].any(dim=1).double().mean() * 100.0) for k in ks}


def real_metrics(
    stats: ClassStatistics,
    result: SweepResult,
    real: RealLabels,
    lams: Sequence[float],
    temps: Sequence[float],
    heads: Sequence[int],
) -> dict[str, Any]:
    """ReaL top-1 / top-5 (percent) of the baseline and every row of the sweep, and ReaL mAP of the
    baseline, best, fixed and best-variant rows, from the cached statistics: the results-JSON
    ``"real_labels"`` object (docs/method.md §9). mAP over 1000 classes costs about 100x a row's
    top-k at ImageNet size (3 s vs 0.04 s), so it is not computed for every row."""
    sub = replace(
        take_images(stats, real.keep.to(stats.avg.device)), labels=real.labels.to(stats.labels.device)
    )  # the kept images, ReaL sets as labels

    def topk(_: ClassStatistics, scorer: Any, prepared: Any) -> dict[str, float]:
        scores = (
            torch.from_numpy(np.ascontiguousarray(prepared.T)) if isinstance(prepared, np.ndarray) else prepared
        )  # numpy (C, N); torch (N, C)
        return real_topk(scores, real.labels, (1, 5))

    grid = sorted({float(lam) for lam in lams} | {0.0, result.fixed.lam})
    scored = score_grid(sub, "multi_label", grid, temps, heads, topk)
    by_setting = {(v, lam): m for v, lam, m in scored[1:]}
    scorer = stats_evaluator(sub, "multi_label")

    def with_map(metrics: dict[str, float], scores: torch.Tensor) -> dict[str, float]:
        try:
            return {**metrics, "mAP": scorer.primary(scorer.prepare(scores))}
        except ValueError as exc:
            raise CSRAError(
                f"real_labels {real.file}: cannot score the ReaL sets ({exc})", param="real_labels"
            ) from None

    base = with_map(scored[0][2], sub.avg)

    def entry(variant: Variant, lam: float, metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "variant": variant.kind,
            "temperature": variant.temperature,
            "heads": variant.heads,
            "lam": lam,
            "metrics": metrics,
        }

    def headline(row: Any) -> dict[str, Any]:
        metrics = base if row.lam == 0.0 else with_map(by_setting[(row.variant, row.lam)], row_scores(sub, row))
        return entry(row.variant, row.lam, metrics)

    return {
        "file": real.file,
        "images": int(real.keep.sum()),
        "images_without_labels": int((~real.keep).sum()),
        "baseline": base,
        "best": headline(result.best),
        "fixed": headline(result.fixed),
        "best_variant": headline(result.best_variant),
        "rows": [
            entry(v, lam, m) for v, lam, m in scored[1:]
        ],  # as the results' "rows" (lam 0 included): top-1 / top-5
    }


def print_real_table(console: Console, found: dict[str, Any]) -> None:
    """ReaL top-1 / top-5 / mAP of the sweep's baseline, best, fixed and best-variant rows, with Δ."""
    from rich.table import Table

    base = found["baseline"]
    table = Table(
        title=f"ImageNet-ReaL ({found['images']} images with a ReaL set; {found['images_without_labels']} without, left out)",
        title_justify="left",
    )
    for name in ("setting", "variant", "λ", "ReaL top-1 %", "Δ", "ReaL top-5 %", "Δ", "ReaL mAP %", "Δ"):
        table.add_column(name, justify="left" if name in ("setting", "variant") else "right", no_wrap=True)

    def cells(m: dict[str, float], show_delta: bool) -> list[str]:
        out = []
        for key in ("top1", "top5", "mAP"):
            d = m[key] - base[key]
            colour = "green" if d > 0 else ("red" if d < 0 else "white")
            out += [f"{m[key]:.2f}", f"[{colour}]{d:+.2f}[/]" if show_delta else ""]
        return out

    table.add_row("baseline", "-", "0", *cells(base, False))
    for label, key in (
        ("best λ (optimistic)", "best"),
        ("fixed λ (paper)", "fixed"),
        ("best variant (optimistic)", "best_variant"),
    ):
        row = found[key]
        variant = (
            row["variant"]
            if row["variant"] == "max"
            else (f"softmax T={row['temperature']:g}" if row["variant"] == "softmax" else f"heads H={row['heads']}")
        )
        table.add_row(label, variant, f"{row['lam']:g}", *cells(row["metrics"], True))
    console.print(table)
    console.print(
        f"ReaL labels: {safe(found['file'])}; rows chosen on the original labels; top-k as timm's RealLabelsImagenet",
        soft_wrap=True,
    )
