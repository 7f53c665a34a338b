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
from the sweep's own resamples (:func:`csra_posthoc.evaluation.bootstrap.resample_weights`, same
seed: the same multiplicities as the sweep's intervals, drawn once for every split, row and class).
Held-out rows average their parts as :mod:`csra_posthoc.evaluation.per_class` does.

The AP of every split under a resample comes from one sorted order per class and sparse products
(:class:`SplitAP`): the negatives are counted once per (key run, image group) and shared by the
size and instance bins, each split's positives once per (key run, bin), all splits' entries in one
product. A held-out part is built on its own images only (the other half weighs 0 in every
resample), and a few resamples share a product (:data:`SPLIT_CHUNK_CELLS`). Cost at COCO size:
benchmarks/size_splits.py (issue #23 asks for at most half the sweep's time; see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import CSRAError
from ..text import safe
from .bootstrap import Part, _csr, _segment_cumsum, check_resamples, resample_weights

if TYPE_CHECKING:
    from rich.console import Console

    from ..data import LabelledImages

SIZE_BINS = ("small", "medium", "large")
LABEL_GROUPS = ("1", "2", "3+")
INSTANCE_BINS = ("1 instance", "2+ instances")
ROW_NAMES = ("best", "fixed", "held_out", "test_pool")
# resamples per chunk * SplitAP rows (key runs * image groups): a few resamples per product at COCO size,
# 1.5x faster per resample than one at a time (benchmarks/size_splits.py)
SPLIT_CHUNK_CELLS = 6_000_000

DEFINITION_SIZE = (
    "size of a positive (image, class) pair: area of its largest box of the class / image area; bins: tertiles of those "
    "relative areas over all positive pairs with a box (small < edges[0] <= medium < edges[1] <= large); per class, AP on "
    "the bin's positives and all the class's negatives (other positives left out); mean: over classes with a positive in the bin"
)
DEFINITION_CLUTTER = (
    "labels: mAP over the images with 1, 2 or 3+ positive classes; instances: per class, AP on the positives with 1 box "
    "(or 2+ boxes) of the class and all the class's negatives; mean over classes with such a positive"
)


@dataclass(frozen=True)
class Splits:
    """Per (image, class) bin indices (-1: in no bin) and per-image groups of one evaluated set."""

    size_bin: np.ndarray  # (N, C) int: index into SIZE_BINS for positives with a box, else -1
    instance_bin: np.ndarray  # (N, C) int: index into INSTANCE_BINS for positives with a box, else -1
    label_group: np.ndarray  # (N,) int: index into LABEL_GROUPS, -1 for an image without a positive
    edges: tuple[float, float]  # relative-area tertiles
    without_box: int  # positive pairs without a box (in no size or instance bin)


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


class SplitAP:
    """Per-class AP of fixed ``scores`` on every split at once, under image multiplicities ``w``.

    As :class:`~csra_posthoc.evaluation.bootstrap.WeightedAP`: scores sorted once per class, runs of
    tied scores holding a positive are the key runs, each known image is counted at the first key
    run at or after its place, each positive is credited with the precision at its run's end.
    Known images are counted per (key run, image group); a split's positives per *entry*, a
    (key run, bin) pair holding one of its positives (about one per positive), so every split costs
    about one pass over the positives. Precision at an entry: the bin's positives so far over those
    plus ALL negatives so far (size and instance bins), or over the group's known images so far
    (label-count groups, whose bins are the images' groups)."""

    def __init__(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor,
        groups: np.ndarray,
        num_groups: int,
        partitions: Mapping[str, tuple[np.ndarray, int]],
    ) -> None:
        n, c = scores.shape
        self.num_images, self.num_classes, self.num_groups = n, c, num_groups
        sorted_scores, order = torch.sort(scores.double().t().contiguous(), dim=1, descending=True)
        lab_t = labels.t().contiguous().gather(1, order).numpy()
        order_np, s_np = order.numpy(), sorted_scores.numpy()
        g = np.where(groups < 0, num_groups, groups).astype(
            np.int64
        )  # images with no positive: a group of their own (negatives only)
        ga = self.groups_all = num_groups + 1
        group_bins = np.where(
            labels.numpy() == 1, np.where(groups < 0, -1, groups)[:, None], -1
        )  # the "groups" split: a positive's bin is its image's group
        parts = {"groups": (group_bins, num_groups), **partitions}
        rows, cols, prow, pcol, run_class, run_first = [], [], [], [], [], []
        entries: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
            name: [] for name in parts
        }  # (image, run, bin) of positives
        runs = 0
        for k in range(c):
            s, lab, idx = s_np[k], lab_t[k], order_np[k]
            new_run = np.ones(n, dtype=bool)
            new_run[1:] = s[1:] != s[:-1]
            run_id = np.cumsum(new_run) - 1
            key_runs = np.unique(run_id[lab == 1])
            if key_runs.size == 0:
                continue
            at = np.searchsorted(key_runs, run_id) + runs  # global key run of each place
            keep = (at < runs + key_runs.size) & (lab != -1)
            rows.append(idx[keep])
            cols.append(at[keep] * ga + g[idx[keep]])
            pos = keep & (lab == 1)
            prow.append(idx[pos])
            pcol.append(at[pos])
            for name, (bins, _) in parts.items():
                b = bins[idx, k]
                inb = pos & (b >= 0)
                entries[name].append((idx[inb], at[inb], b[inb]))
            run_class.append(np.full(key_runs.size, k))
            run_first.append(np.array([runs, runs + key_runs.size]))
            runs += key_runs.size
        self.num_runs = runs

        def cat(items: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(items).astype(np.int64) if items else np.zeros(0, np.int64)

        self.labelled = _csr(cat(cols), cat(rows), runs * ga, n)  # (runs * groups, N)
        self.positive = _csr(cat(pcol), cat(prow), runs, n)
        self.class_bounds = [(int(a), int(b)) for a, b in run_first]  # each class's key runs
        self.run_class = cat(run_class)
        self.parts: dict[str, dict[str, Any]] = {}
        for name, (_, nb) in parts.items():
            image = cat([e[0] for e in entries[name]])
            run = cat([e[1] for e in entries[name]])
            bin_ = cat([e[2] for e in entries[name]])
            seg = self.run_class[run] * nb + bin_ if run.size else run  # (class, bin) of each positive
            keys, entry = (  # one int64 key per (class, bin, run): a 1-D unique, not a slower column-wise one
                np.unique(seg * max(runs, 1) + run, return_inverse=True) if run.size else (run, run)
            )
            entry = np.asarray(entry).reshape(-1)  # entries sorted by (class, bin, run): segments are contiguous
            e_seg, e_run = keys // max(runs, 1), keys % max(runs, 1)
            starts = np.flatnonzero(np.r_[True, e_seg[1:] != e_seg[:-1]]) if e_seg.size else np.zeros(0, np.int64)
            ends = np.r_[starts[1:], e_seg.size] if e_seg.size else starts
            self.parts[name] = {
                "bins": nb,
                "entry_rows": entry,
                "images": image,
                "run": torch.from_numpy(e_run.astype(np.int64)),
                "bin": torch.from_numpy((e_seg % nb).astype(np.int64))
                if e_seg.size
                else torch.zeros(0, dtype=torch.int64),
                "bounds": [(int(a), int(b)) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)],
                "starts": torch.from_numpy(starts.astype(np.int64)),
                "entry_segment": torch.from_numpy(np.cumsum(np.r_[True, e_seg[1:] != e_seg[:-1]]) - 1)
                if e_seg.size
                else torch.zeros(0, dtype=torch.int64),  # each entry's (class, bin) segment
                "ends": torch.from_numpy(ends.astype(np.int64)),
                "segments": torch.from_numpy(e_seg[starts].astype(np.int64))
                if e_seg.size
                else torch.zeros(0, dtype=torch.int64),
            }
        # every split's entries in one product, "groups" first: (entries, N), each entry's positives
        names = list(self.parts)
        first = np.cumsum([0] + [int(self.parts[k]["run"].numel()) for k in names])
        seg_first = np.cumsum([0] + [int(self.parts[k]["starts"].numel()) for k in names])
        self.num_entries, self.num_segments = int(first[-1]), int(seg_first[-1])
        self.entries = _csr(
            cat([self.parts[k].pop("entry_rows") + first[i] for i, k in enumerate(names)]),
            cat([self.parts[k].pop("images") for k in names]),
            self.num_entries,
            n,
        )
        self.bounds = [
            (a + int(first[i]), z + int(first[i])) for i, k in enumerate(names) for a, z in self.parts[k]["bounds"]
        ]
        self.entry_segment = torch.cat(
            [self.parts[k]["entry_segment"] + int(seg_first[i]) for i, k in enumerate(names)]
        )
        self.seg_last = torch.cat([self.parts[k]["ends"] - 1 + int(first[i]) for i, k in enumerate(names)])
        for j, key in enumerate(names):
            self.parts[key]["segment_slice"] = (int(seg_first[j]), int(seg_first[j + 1]))
        self.group_count = int(first[1])
        self.group_index = self.parts["groups"]["run"] * ga + self.parts["groups"]["bin"]  # into (runs * groups, B)
        self.other_run = torch.cat([self.parts[k]["run"] for k in names[1:]] + [torch.zeros(0, dtype=torch.int64)])

    def __call__(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"groups": (B, G, C), name: (B, bins, C)}`` float64 AP, NaN where a split has no positive of weight > 0."""
        b = weights.shape[0]
        wt = weights.t().to(torch.float32).contiguous()
        runs, ga = self.num_runs, self.groups_all
        ap_all = None
        if runs and self.num_entries:  # float32 counts: integer sums within a class stay below N (exact below 2**24)
            cum_group = _segment_cumsum(
                (self.labelled @ wt).reshape(runs, ga, b), self.class_bounds
            )  # known images so far, per group
            cum_pos = _segment_cumsum(self.positive @ wt, self.class_bounds)
            cum_neg = cum_group.sum(dim=1).sub_(cum_pos)  # (runs, B): negatives so far, every group
            tp = self.entries @ wt  # (entries, B): every split's entries at once
            cum_tp = _segment_cumsum(tp.clone(), self.bounds)  # the bin's positives so far, within its (class, bin)
            g = self.group_count
            seen = torch.empty_like(tp)
            seen[:g] = cum_group.reshape(runs * ga, b)[self.group_index]  # the image group's known images so far
            seen[g:] = cum_neg[self.other_run].add_(cum_tp[g:])  # the bin's positives and all negatives so far
            credit = tp.double().mul_(cum_tp).div_(seen.clamp_min_(1.0))
            num = torch.zeros(self.num_segments, b, dtype=torch.float64).index_add_(0, self.entry_segment, credit)
            den = cum_tp[self.seg_last].double()  # per (class, bin): its positives
            ap_all = torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))
        out: dict[str, torch.Tensor] = {}
        for name, part in self.parts.items():
            nb = part["bins"]
            ap = torch.full((self.num_classes * nb, b), float("nan"), dtype=torch.float64)
            if ap_all is not None and part["run"].numel():
                s0, s1 = part["segment_slice"]
                ap[part["segments"]] = ap_all[s0:s1]
            out[name] = ap.reshape(self.num_classes, nb, b).permute(2, 1, 0)
        return out


@dataclass
class SplitResult:
    """Per row: split name -> bin -> (mean Δ, low, high) and per-class Δ; plus the counts."""

    splits: Splits
    classes: list[str]
    mean: dict[str, dict[str, dict[str, tuple[float, float, float]]]]  # row -> split -> bin -> (delta, low, high)
    per_class: dict[str, dict[str, np.ndarray]]  # row -> bin of the size split -> (C,) Δ
    counts: dict[str, dict[str, int]]  # split -> bin -> positives (size, instances) or images (labels)


SPLIT_BINS = {"size": SIZE_BINS, "labels": LABEL_GROUPS, "instances": INSTANCE_BINS}


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
    """Δ (variant minus baseline, percent points) of every split for every named variant, with the
    95 % interval of the paired bootstrap (``n`` resamples of ``seed``: the sweep's own; None: point
    estimates only, intervals NaN). Variants as :func:`csra_posthoc.evaluation.bootstrap.bootstrap_deltas`."""
    resamples = None if n is None else check_resamples(n)
    partitions = {"size": (splits.size_bin, len(SIZE_BINS)), "instances": (splits.instance_bin, len(INSTANCE_BINS))}
    parts = {name: [(None, v)] if isinstance(v, torch.Tensor) else list(v) for name, v in variants.items()}
    lab = labels.to(torch.int8)
    num_images = baseline.shape[0]

    def restrict(mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The images a part is evaluated on and their mask values: an image of mask 0 weighs 0 in
        every resample, so leaving it out of the sorted orders changes no AP and halves a held-out part's work."""
        if mask is None:
            return None
        keep = torch.as_tensor(mask).reshape(-1).nonzero().reshape(-1)
        return keep, torch.as_tensor(mask).reshape(-1)[keep].to(torch.float32)

    def make(scores: torch.Tensor, keep: torch.Tensor | None) -> SplitAP:
        if keep is None:
            return SplitAP(scores, lab, splits.label_group, len(LABEL_GROUPS), partitions)
        k = keep.numpy()
        sub = {name: (bins[k], nb) for name, (bins, nb) in partitions.items()}
        return SplitAP(scores[keep], lab[keep], splits.label_group[k], len(LABEL_GROUPS), sub)

    kept = {id(mask): restrict(mask) for ps in parts.values() for mask, _ in ps}
    images = {key: None if k is None else k[0] for key, k in kept.items()}
    base = {key: make(baseline, keep) for key, keep in images.items()}
    metrics = {name: [(id(mask), make(s, images[id(mask)])) for mask, s in p] for name, p in parts.items()}
    cells = max([m.num_runs * m.groups_all for m in [*base.values(), *(m for ps in metrics.values() for _, m in ps)]])
    cells = max(cells, num_images, 1)

    def deltas(w: torch.Tensor) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        weighted = {key: w if k is None else w[:, k[0]] * k[1] for key, k in kept.items()}
        base_ap = {key: base[key](ww) for key, ww in weighted.items()}
        means: dict[str, dict[str, torch.Tensor]] = {}
        size_cls: dict[str, torch.Tensor] = {}
        for name, ps in metrics.items():
            per_split: dict[str, list[torch.Tensor]] = {"size": [], "labels": [], "instances": []}
            cls_parts = []
            for key, m in ps:
                ap, ref = m(weighted[key]), base_ap[key]
                for split, field in (("size", "size"), ("labels", "groups"), ("instances", "instances")):
                    d = (ap[field] - ref[field]) * 100.0  # (B, bins, C)
                    per_split[split].append(_nanmean(d, dim=2))
                cls_parts.append((ap["size"] - ref["size"]) * 100.0)
            means[name] = {split: torch.stack(v).mean(dim=0) for split, v in per_split.items()}  # (B, bins)
            size_cls[name] = cls_parts[0] if len(cls_parts) == 1 else _nanmean(torch.stack(cls_parts), dim=0)
        return means, size_cls

    point_mean, point_cls = deltas(torch.ones(1, num_images))
    draws: dict[str, dict[str, list[torch.Tensor]]] = {name: {s: [] for s in SPLIT_BINS} for name in metrics}
    if resamples is not None:
        chunk = max(1, min(resamples, SPLIT_CHUNK_CELLS // cells))
        for w in resample_weights(num_images, resamples, seed, chunk):  # chunking does not change the draws
            means, _ = deltas(w)
            for name in metrics:
                for split in SPLIT_BINS:
                    draws[name][split].append(means[name][split])
            if progress is not None:
                progress(w.shape[0])
    mean: dict[str, dict[str, dict[str, tuple[float, float, float]]]] = {}
    for name in metrics:
        mean[name] = {}
        for split, bins in SPLIT_BINS.items():
            point = point_mean[name][split][0].tolist()
            if resamples is None:
                lows = highs = [math.nan] * len(bins)
            else:
                matrix = torch.cat(draws[name][split]).numpy()
                with warnings.catch_warnings():  # a bin without a positive in some resample
                    warnings.simplefilter("ignore", RuntimeWarning)
                    lows, highs = (v.tolist() for v in np.nanpercentile(matrix, [2.5, 97.5], axis=0))
            mean[name][split] = {bin_: (point[j], lows[j], highs[j]) for j, bin_ in enumerate(bins)}
    per_class = {name: {bin_: point_cls[name][0, j].numpy() for j, bin_ in enumerate(SIZE_BINS)} for name in metrics}
    counts = {
        "size": {bin_: int((splits.size_bin == j).sum()) for j, bin_ in enumerate(SIZE_BINS)},
        "instances": {bin_: int((splits.instance_bin == j).sum()) for j, bin_ in enumerate(INSTANCE_BINS)},
        "labels": {bin_: int((splits.label_group == j).sum()) for j, bin_ in enumerate(LABEL_GROUPS)},
    }
    return SplitResult(splits, list(classes), mean, per_class, counts)


def _nanmean(x: torch.Tensor, dim: int) -> torch.Tensor:
    defined = ~torch.isnan(x)
    total = torch.where(defined, x, torch.zeros_like(x)).sum(dim=dim)
    count = defined.sum(dim=dim)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


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


def report_splits(
    console: Console,
    stats: Any,
    images: LabelledImages,
    variants: Mapping[str, torch.Tensor | Sequence[Part]],
    data_json: dict[str, Any],
    *,
    n: int | None,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> SplitResult | None:
    """The size / clutter table and ``data_json["by_object_size"]`` / ``["by_label_count"]`` for a
    multi-label sweep whose images have boxes (VOC layouts, the demo's mosaics, COCO); nothing otherwise."""
    if images.object_boxes is None or images.image_sizes is None or stats.info.task == "single_label":
        return None
    if list(stats.ids) != list(images.ids):
        raise CSRAError("statistics and images disagree on the image ids", param="images")
    try:
        splits = assign_splits(stats.labels, images.object_boxes, images.image_sizes)
    except CSRAError as exc:
        console.print(f"[yellow]note:[/] no size / clutter split: {safe(exc)}", soft_wrap=True)
        return None
    found = split_deltas(stats.avg, variants, stats.labels, stats.classes, splits, n=n, seed=seed, progress=progress)
    data_json["by_object_size"] = size_json(found)
    data_json["by_label_count"] = label_count_json(found)
    print_split_table(console, found)
    return found
