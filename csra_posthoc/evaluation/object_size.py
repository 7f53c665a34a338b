"""Does CSRA help small objects and cluttered images? Splits of the evaluation by object size and
by clutter, from the loader's boxes (docs/method.md §11).

* size: each positive (image, class) pair gets the relative area of its LARGEST instance of the
  class (box area / image area). The bins are the tertiles of those areas over every positive pair
  with a box (:data:`SIZE_BINS`: small below the first tertile, large at or above the second; the
  edges are in the JSON). Per class, AP is computed on the positives of one bin and ALL the
  class's negatives (other positives and positives without a box are left out, as unknown labels
  are); ΔAP per class, and the mean over the classes with a positive in that bin.
* clutter: mAP over the images with 1, 2 or 3+ positive classes (:data:`LABEL_GROUPS`: each image in
  one group, its labels as they are); and, per class, AP on the positives with one instance or with
  several (:data:`INSTANCE_BINS`), all negatives kept.

Every split is variant minus baseline in percent points, with the paired-bootstrap 95 % interval
from the sweep's own resamples: :func:`csra_posthoc.evaluation.resampling.resampled_deltas` computes
them in the sweep's bootstrap, from the same weighted counts as its intervals. Held-out rows average
their parts as :mod:`csra_posthoc.evaluation.per_class` does.

Every split's AP under a resample comes from the sweep's sorted orders and counts
(:class:`~csra_posthoc.evaluation.split_ap.SplitAP`): each split's positives are gathered,
accumulated per (class, bin) and credited with the precision at their run. Cost at COCO size: benchmarks/size_splits.py (issue #23 asks for at most
half the sweep's time; see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import CSRAError
from ..text import safe
from .bootstrap import nanmean_quiet
from .results import SplitResult, Splits
from .split_ap import SplitAP

if TYPE_CHECKING:
    from rich.console import Console

    from ..data import LabelledImages

SIZE_BINS = ("small", "medium", "large")
LABEL_GROUPS = ("1", "2", "3+")
INSTANCE_BINS = ("1 instance", "2+ instances")
ROW_NAMES = ("best", "fixed", "held_out", "test_pool")

DEFINITION_SIZE = (
    "size of a positive (image, class) pair: area of its largest box of the class / image area; bins: tertiles of those "
    "relative areas over all positive pairs with a box (small < edges[0] <= medium < edges[1] <= large); per class, AP on "
    "the bin's positives and all the class's negatives (other positives left out); mean: over classes with a positive in the bin"
)
DEFINITION_CLUTTER = (
    "labels: mAP over the images with 1, 2 or 3+ positive classes; instances: per class, AP on the positives with 1 box "
    "(or 2+ boxes) of the class and all the class's negatives; mean over classes with such a positive"
)


def relative_areas(
    labels: np.ndarray,
    object_boxes: Sequence[Mapping[int, Sequence[Sequence[float]]]],
    image_sizes: Sequence[tuple[int, int]],
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C)`` relative area of the largest box of each positive pair (NaN: not positive, or no
    box) and ``(N, C)`` its number of boxes."""
    n, c = labels.shape
    area = np.full((n, c), np.nan)
    count = np.zeros((n, c), dtype=np.int64)
    for i, (boxes, (width, height)) in enumerate(zip(object_boxes, image_sizes, strict=True)):
        whole = float(width) * float(height)
        for k, kboxes in boxes.items():
            if not kboxes or labels[i, k] != 1 or whole <= 0:
                continue
            largest = max(max(0.0, x1 - x0) * max(0.0, y1 - y0) for x0, y0, x1, y1 in kboxes)
            area[i, k] = min(1.0, largest / whole)
            count[i, k] = len(kboxes)
    return area, count


def assign_splits(
    labels: torch.Tensor | np.ndarray,
    object_boxes: Sequence[Mapping[int, Sequence[Sequence[float]]]],
    image_sizes: Sequence[tuple[int, int]],
) -> Splits:
    """The size bins (tertiles of the positives' relative areas), instance bins and label-count groups."""
    lab = np.asarray(labels)
    area, count = relative_areas(lab, object_boxes, image_sizes)
    boxed = ~np.isnan(area)
    if not boxed.any():
        raise CSRAError("no positive (image, class) pair has a box: no size split", param="images")
    e1, e2 = (float(v) for v in np.quantile(area[boxed], [1.0 / 3.0, 2.0 / 3.0]))
    size_bin = np.full(lab.shape, -1, dtype=np.int64)
    size_bin[boxed] = np.where(area[boxed] < e1, 0, np.where(area[boxed] < e2, 1, 2))
    instance_bin = np.full(lab.shape, -1, dtype=np.int64)
    instance_bin[boxed] = np.where(count[boxed] >= 2, 1, 0)
    positives = (lab == 1).sum(axis=1)
    label_group = np.where(positives == 0, -1, np.minimum(positives, 3) - 1)
    without = int(((lab == 1) & ~boxed).sum())
    return Splits(size_bin, instance_bin, label_group.astype(np.int64), (e1, e2), without)


SPLIT_BINS = {"size": SIZE_BINS, "labels": LABEL_GROUPS, "instances": INSTANCE_BINS}


def split_means(
    pairs: Sequence[tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One row's Δ from its parts' ``(variant, baseline)`` split APs (:meth:`SplitAP.evaluate`, same weights):
    per split the mean over classes ``(B, bins)`` averaged over the parts (NaN if a part has none), and
    the size split's per-class Δ ``(B, bins, C)`` (the mean of the parts' defined values, as per-class Δ)."""
    per_split: dict[str, list[torch.Tensor]] = {split: [] for split in SPLIT_BINS}
    cls_parts = []
    for ap, ref in pairs:
        for split, field in (("size", "size"), ("labels", "groups"), ("instances", "instances")):
            per_split[split].append(nanmean_quiet((ap[field] - ref[field]) * 100.0, dim=2))  # (B, bins)
        cls_parts.append((ap["size"] - ref["size"]) * 100.0)
    means = {split: torch.stack(v).mean(dim=0) for split, v in per_split.items()}
    return means, cls_parts[0] if len(cls_parts) == 1 else nanmean_quiet(torch.stack(cls_parts), dim=0)


def split_result(
    splits: Splits,
    classes: Sequence[str],
    point: Mapping[str, tuple[Mapping[str, torch.Tensor], torch.Tensor]],
    draws: Mapping[str, Mapping[str, Sequence[torch.Tensor]]] | None,
) -> SplitResult:
    """The :class:`SplitResult` from each row's point estimate (:func:`split_means` at unit weights) and,
    with a bootstrap, its resamples' means per split (the 95 % interval: their 2.5 / 97.5 percentiles)."""
    mean: dict[str, dict[str, dict[str, tuple[float, float, float]]]] = {}
    for name, (point_mean, _) in point.items():
        mean[name] = {}
        for split, bins in SPLIT_BINS.items():
            value = point_mean[split][0].tolist()
            if draws is None:
                lows = highs = [math.nan] * len(bins)
            else:
                matrix = torch.cat(list(draws[name][split])).numpy()
                with warnings.catch_warnings():  # a bin without a positive in some resample
                    warnings.simplefilter("ignore", RuntimeWarning)
                    lows, highs = (v.tolist() for v in np.nanpercentile(matrix, [2.5, 97.5], axis=0))
            mean[name][split] = {bin_: (value[j], lows[j], highs[j]) for j, bin_ in enumerate(bins)}
    per_class = {
        name: {bin_: cls[0, j].numpy() for j, bin_ in enumerate(SIZE_BINS)} for name, (_, cls) in point.items()
    }
    counts = {
        "size": {bin_: int((splits.size_bin == j).sum()) for j, bin_ in enumerate(SIZE_BINS)},
        "instances": {bin_: int((splits.instance_bin == j).sum()) for j, bin_ in enumerate(INSTANCE_BINS)},
        "labels": {bin_: int((splits.label_group == j).sum()) for j, bin_ in enumerate(LABEL_GROUPS)},
    }
    return SplitResult(splits, list(classes), mean, per_class, counts)


def split_ap(
    scores: torch.Tensor,
    labels: torch.Tensor,
    splits: Splits,
    masks: Mapping[Hashable, torch.Tensor | None] | None = None,
) -> SplitAP:
    """The :class:`~csra_posthoc.evaluation.split_ap.SplitAP` of ``scores`` over ``splits``' bins and
    label-count groups, for weightings under ``masks`` (key -> image mask; None: all images)."""
    partitions = {"size": (splits.size_bin, len(SIZE_BINS)), "instances": (splits.instance_bin, len(INSTANCE_BINS))}
    return SplitAP(scores, labels, splits.label_group, len(LABEL_GROUPS), partitions, masks)


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _interval(value: tuple[float, float, float]) -> dict[str, float | None]:
    return {"delta": _num(value[0]), "low": _num(value[1]), "high": _num(value[2])}


def size_json(found: SplitResult) -> dict[str, Any]:
    """The results-JSON ``"by_object_size"``."""
    out: dict[str, Any] = {
        "definition": DEFINITION_SIZE,
        "edges": list(found.splits.edges),
        "positives": found.counts["size"],
        "positives_without_box": found.splits.without_box,
    }
    for name in ROW_NAMES:
        if name in found.mean:
            out[name] = {
                bin_: {
                    **_interval(found.mean[name]["size"][bin_]),
                    "per_class": {
                        c: _num(v) for c, v in zip(found.classes, found.per_class[name][bin_].tolist(), strict=True)
                    },
                }
                for bin_ in SIZE_BINS
            }
    return out


def label_count_json(found: SplitResult) -> dict[str, Any]:
    """The results-JSON ``"by_label_count"``: label-count groups and the instance bins."""
    out: dict[str, Any] = {
        "definition": DEFINITION_CLUTTER,
        "images": found.counts["labels"],
        "positives": found.counts["instances"],
    }
    for name in ROW_NAMES:
        if name in found.mean:
            out[name] = {
                "labels": {g: _interval(found.mean[name]["labels"][g]) for g in LABEL_GROUPS},
                "instances": {b: _interval(found.mean[name]["instances"][b]) for b in INSTANCE_BINS},
            }
    return out


ROW_LABELS = {"best": "best λ", "fixed": "fixed λ", "held_out": "held-out λ", "test_pool": "test-pool"}


def print_split_table(console: Console, found: SplitResult) -> None:
    """One short table: a line per bin (size, label count, instances), Δ and 95 % CI per row."""
    from rich.table import Table

    names = [name for name in ROW_NAMES if name in found.mean]
    e1, e2 = found.splits.edges
    table = Table(
        title=f"Δ by object size (largest box / image area, tertiles at {100 * e1:.1f} % and {100 * e2:.1f} %) and by clutter (mean ΔAP, pp)",
        title_justify="left",
    )
    table.add_column("split", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    for name in names:
        table.add_column(f"Δ {ROW_LABELS[name]} [95 % CI]", justify="right", no_wrap=True)
    labels = {"size": "size: {}", "labels": "labels: {}", "instances": "instances: {}"}
    for split, bins in SPLIT_BINS.items():
        for bin_ in bins:
            cells = [labels[split].format(bin_.split()[0]), f"{found.counts[split][bin_]:,}"]
            for name in names:
                d, lo, hi = found.mean[name][split][bin_]
                sig = not math.isnan(lo) and (lo > 0 or hi < 0)
                colour = "green" if d > 0 else ("red" if d < 0 else "white")
                interval = "" if math.isnan(lo) else f" [{lo:+.2f}, {hi:+.2f}]"
                cells.append("-" if math.isnan(d) else f"[{colour}]{d:+.2f}[/]" + ("*" if sig else " ") + interval)
            table.add_row(*cells)
    console.print(table)
    note = (
        f"; {found.splits.without_box} positive pairs without a box are in no size / instance bin"
        if found.splits.without_box
        else ""
    )
    console.print(
        f"n: positive (image, class) pairs (size, instances) or images (labels); * : 95 % CI excludes 0; "
        f"every size / instance bin keeps all negatives (docs/method.md §11){safe(note)}",
        soft_wrap=True,
    )


def splits_for(stats: Any, images: LabelledImages) -> tuple[Splits | None, str | None]:
    """The size / clutter splits of a multi-label sweep whose images have boxes (VOC layouts, the
    demo's mosaics, COCO), or None and, where boxes exist but give no split, why (a note for the report)."""
    if images.object_boxes is None or images.image_sizes is None or stats.info.task == "single_label":
        return None, None
    if list(stats.ids) != list(images.ids):
        raise CSRAError("statistics and images disagree on the image ids", param="images")
    try:
        return assign_splits(stats.labels, images.object_boxes, images.image_sizes), None
    except CSRAError as exc:
        return None, f"no size / clutter split: {exc}"


def report_splits(console: Console, found: SplitResult | None, note: str | None, data_json: dict[str, Any]) -> None:
    """The size / clutter table and ``data_json["by_object_size"]`` / ``["by_label_count"]`` (nothing
    without splits; the ``note`` saying why, where there is one)."""
    if note is not None:
        console.print(f"[yellow]note:[/] {safe(note)}", soft_wrap=True)
    if found is None:
        return
    data_json["by_object_size"] = size_json(found)
    data_json["by_label_count"] = label_count_json(found)
    print_split_table(console, found)
