"""Many score matrices against one label matrix: the metric evaluation behind a sweep.

What depends only on the labels (each class's positive / negative / unknown index sets, counts,
masks) is computed once per evaluator; each score matrix then costs one sort per class, in the
scores' own dtype with numpy's SIMD sort, and a few linear passes: per block of classes (AP,
the prediction at the threshold, the block's top-k per image), then the top-k counts. A sweep
evaluates several score matrices side by side instead (:func:`parallel_map`, each on one
block), which kept 2 cores busier than splitting one matrix. CPU work is numpy, which on a
2-core machine was 10-30x faster than the same elementwise torch ops (torch's allocator faults
in fresh pages for every temporary; numpy's large arrays get huge pages). On CUDA the torch
implementations run unchanged (:class:`TorchEvaluator`).

Results equal the straightforward definitions in ``average_precision.py`` / ``thresholded.py`` /
``accuracy.py`` exactly (same predicates, same tie rules; rows whose top-k is decided by a tie
fall back to ``torch.topk``), which ``tests/metrics/test_metrics_property.py`` checks.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from typing import Any, Protocol

import numpy as np
import torch

from . import torch_reference
from .thresholded import UnknownPolicy, metrics_from_counts

Array = np.ndarray


def check_finite(scores: Array) -> None:
    """One pass over the matrix (about 1 ms for 40,137 x 80 in numpy; torch's isfinite was 16-40 ms)."""
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")


def at_least_threshold(scores: Array, threshold: float) -> Array:
    """``sigmoid(float64(score)) >= threshold`` exactly, for the price of two comparisons.

    Far from ``logit(threshold)`` the answer is the comparison; only the few scores within a
    relative 1e-6 of it get the float64 sigmoid (which, e.g., sends -1e-20 to exactly 0.5).
    """
    if not 1e-6 < threshold < 1.0 - 1e-6:
        return torch.sigmoid(torch.from_numpy(np.ascontiguousarray(scores)).double()).numpy() >= threshold
    cut = math.log(threshold / (1.0 - threshold))
    margin = 1e-6 * (1.0 + abs(cut))
    pred = scores >= cut + margin
    maybe = scores >= cut - margin
    if np.count_nonzero(maybe) != np.count_nonzero(pred):  # pred is within maybe: some score is near the cut
        near = np.flatnonzero(maybe & ~pred)
        flat = pred.reshape(-1)
        values = torch.from_numpy(np.ascontiguousarray(scores.reshape(-1)[near])).double()
        flat[near] = (torch.sigmoid(values) >= threshold).numpy()
    return pred


def transposed(a: Array, dtype: Any = None) -> Array:
    """``a.T`` as a new C-contiguous array (cast to ``dtype`` on the way), copied in blocks of 256
    rows: 2-3x faster than ``np.ascontiguousarray(a.T)``'s strided copy at (40,137, 80)."""
    out = np.empty(a.shape[::-1], dtype=a.dtype if dtype is None else dtype)
    for start in range(0, a.shape[0], 256):
        out[:, start : start + 256] = a[start : start + 256].T
    return out


def row_counts(mask: Array) -> Array:
    """``count_nonzero(mask, axis=1)`` as float64: one whole-row count per row, which was 8x faster
    than numpy's axis reduction (a sum of bools) here."""
    return np.array([np.count_nonzero(row) for row in mask], dtype=np.float64)


def column_counts(mask: Array) -> Array:
    """``count_nonzero(mask, axis=0)``: a uint8 view summed down the rows (5x numpy's axis count)."""
    return mask.view(np.uint8).sum(axis=0, dtype=np.int64)


def top_k_values(rows: Array, k: int) -> list[Array]:
    """The ``k`` largest values of each column of ``rows`` ``(R, N)``, counted with multiplicity,
    largest first (``-inf`` where a column has fewer than k).

    An insertion network over the rows: 2k - 1 elementwise ops per row on one cache-resident
    N-vector, about 4x cheaper than k masked maxima over the whole matrix.
    """
    top = [np.full(rows.shape[1], -np.inf, dtype=rows.dtype) for _ in range(k)]
    spare = np.empty(rows.shape[1], dtype=rows.dtype)
    for row in rows:
        insert_value(top, row, spare)
    return top


def insert_value(top: list[Array], values: Array, spare: Array) -> None:
    """Insert ``values`` (one per column) into the descending per-column lists ``top``, in place;
    also merges two blocks' top-k lists (insert the other's k values)."""
    for j in range(len(top) - 1, 0, -1):
        np.minimum(top[j - 1], values, out=spare)
        np.maximum(top[j], spare, out=top[j])
    np.maximum(top[0], values, out=top[0])


def torch_top_k_mask(scores_cn: Array, k: int) -> Array:
    """``torch.topk``'s choice of each column's k highest (the reference's order on ties)."""
    sub = torch.from_numpy(np.ascontiguousarray(scores_cn.T))
    keep = torch.zeros(sub.shape, dtype=torch.bool).scatter_(1, sub.topk(k, dim=1).indices, True)
    return keep.numpy().T


def tie_run_starts(ascending: Array) -> Array:
    """For a sorted array, the index of the first element of each element's run of equal values:
    one linear pass (``searchsorted`` of the array into itself cost ~15x more here)."""
    start = np.ones(ascending.size, dtype=bool)
    start[1:] = ascending[1:] != ascending[:-1]
    if start.all():  # no ties (continuous scores): each element starts its own run
        return np.arange(ascending.size)
    return np.maximum.accumulate(np.where(start, np.arange(ascending.size), 0))


POOL_PREFIX = "csra-metrics"


@cache
def _pool(threads: int) -> ThreadPoolExecutor:
    """One pool per thread count for the process (numpy's sorts and loops release the GIL)."""
    return ThreadPoolExecutor(threads, thread_name_prefix=POOL_PREFIX)


def parallel_map(work: Callable[[Any], Any], items: Sequence[Any], threads: int) -> list[Any]:
    """``[work(item) for item in items]`` on ``threads`` threads (in order; the first error raises).

    A sweep's rows are independent score matrices: evaluating whole rows side by side (each on a
    one-thread evaluator) kept both cores busier than splitting each row's classes (31 vs 36 ms a
    row on 2 cores, COCO size), as there is no barrier inside a row."""
    nested = threading.current_thread().name.startswith(
        POOL_PREFIX
    )  # a pool task waiting on its own pool could deadlock
    if threads <= 1 or len(items) <= 1 or nested:
        return [work(item) for item in items]
    return list(_pool(threads).map(work, items))


class MultilabelEvaluator:
    """AP per class, mAP, CP..OF1 and their top-k versions for score matrices against fixed labels.

    Scores are passed in this evaluator's layout (:meth:`prepare`: classes x images, contiguous),
    so a sweep converts ``avg`` and each attended term once and combines them per lam.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        unknown: UnknownPolicy = "exclude",
        threshold: float = 0.5,
        top_k: int = 3,
        threads: int | None = None,
    ) -> None:
        if labels.dim() != 2:
            raise ValueError(f"labels {tuple(labels.shape)} must be (N, C)")
        lab = transposed(labels.cpu().numpy(), np.int8)  # {1, 0, -1}: int8 moves 8x less than int64
        self.shape = tuple(labels.shape)
        self.threshold, self.top_k, self.unknown = threshold, top_k, unknown
        self.positive = lab == 1
        self.counted = lab != -1 if unknown == "exclude" else np.ones_like(self.positive)
        self.all_counted = bool(self.counted.all())
        n_pos = np.count_nonzero(self.positive, axis=1)
        self.n_gt = n_pos.astype(np.float64)
        # per class, the images of its positives; the unknowns' flat (class, image) positions and
        # per-class counts (AP sorts them below every score: see _block_ap)
        unknown_mask = lab == -1
        n = lab.shape[1]
        pos = np.flatnonzero(self.positive)
        self.pos_index = np.split(pos - np.repeat(np.arange(lab.shape[0]) * n, n_pos), np.cumsum(n_pos)[:-1])
        self.n_unknown = row_counts(unknown_mask).astype(np.intp)
        self.unknown_flat = np.flatnonzero(unknown_mask) if self.n_unknown.any() else None
        threads = torch.get_num_threads() if threads is None else threads
        classes = lab.shape[0]
        edges = np.linspace(0, classes, min(max(1, threads), max(classes, 1)) + 1).astype(int)
        self.chunks = [range(a, b) for a, b in pairwise(edges.tolist()) if b > a]

    def prepare(self, scores: torch.Tensor) -> Array:
        """``(N, C)`` scores as this evaluator's ``(C, N)`` contiguous array (float kept, ints to float64)."""
        if tuple(scores.shape) != self.shape:
            raise ValueError(f"scores {tuple(scores.shape)} and labels {self.shape} must both be (N, C)")
        array = scores.detach().cpu().numpy()
        if not np.issubdtype(array.dtype, np.floating):
            return transposed(array, np.float64)
        return transposed(array, np.float32 if array.dtype == np.float16 else None)

    def pair(self, avg: Array, attended: Array, lams: Sequence[float], score: ScoreFn) -> Pair:
        """``score(avg, attended, lam)`` per lam (every row needs its full sort)."""
        return DensePair(avg, attended, score)

    def average_precision(self, scores_cn: Array) -> Array:
        """Per-class AP (float64, NaN for a class without a positive)."""
        ap, _, _ = self._passes(scores_cn, want_ap=True, want_counts=False, top_k=None, check=False)
        assert ap is not None
        return ap

    def thresholded(self, scores_cn: Array, top_k: int | None = None) -> dict[str, float]:
        """CP..OF1 (percent) at the threshold, restricted to each image's top-k when given."""
        use_top = top_k is not None and top_k < scores_cn.shape[0]
        _, at_cut, in_top = self._passes(
            scores_cn, want_ap=False, want_counts=not use_top, top_k=top_k if use_top else None, check=True
        )
        counts = in_top if use_top else at_cut
        assert counts is not None
        return self._metrics(counts)

    def evaluate(self, scores_cn: Array, check: bool = True) -> tuple[dict[str, float], torch.Tensor]:
        """What :func:`csra_posthoc.metrics.multilabel_metrics` returns, for prepared scores."""
        ap, at_cut, in_top = self._passes(scores_cn, want_ap=True, want_counts=True, top_k=self.top_k, check=check)
        assert ap is not None and at_cut is not None
        valid = ~np.isnan(ap)
        if not valid.any():
            raise ValueError("no class has a positive label: mAP is undefined")
        out = {"mAP": float(ap[valid].mean() * 100.0)}
        out.update(self._metrics(at_cut))
        in_top = at_cut if in_top is None else in_top  # k >= C: the top-k keeps every label
        out.update({f"{k}_top{self.top_k}": v for k, v in self._metrics(in_top).items()})
        return out, torch.from_numpy(ap)

    def primary(self, scores_cn: Array) -> float:
        """mAP in percent alone (what a held-out choice compares): AP without the thresholded counts."""
        ap, _, _ = self._passes(scores_cn, want_ap=True, want_counts=False, top_k=None, check=True)
        assert ap is not None
        valid = ~np.isnan(ap)
        if not valid.any():
            raise ValueError("no class has a positive label: mAP is undefined")
        return float(ap[valid].mean() * 100.0)  # as evaluate() computes it

    def _metrics(self, counts: Counts) -> dict[str, float]:
        tp, n_pred = counts
        return metrics_from_counts(torch.from_numpy(tp), torch.from_numpy(n_pred), torch.from_numpy(self.n_gt))

    def _passes(
        self, scores_cn: Array, *, want_ap: bool, want_counts: bool, top_k: int | None, check: bool
    ) -> tuple[Array | None, Counts | None, Counts | None]:
        """Everything a score matrix needs, in two passes over blocks of classes on the pool.

        Pass 1, per block: finiteness, AP, the prediction at the threshold and its counts, and
        the block's top-k values per image. The blocks' top-k lists merge into each image's k-th
        score; pass 2 counts, per block, the predictions at or above it. Columns where a tie
        decides the top-k are recounted with ``torch.topk``'s choice (the reference's).
        Returns AP, (tp, n_pred) at the threshold, (tp, n_pred) within the top-k (None where not
        asked for, or where k >= C)."""
        top_k = top_k if top_k is not None and top_k < scores_cn.shape[0] else None
        blocks = self._map(
            lambda classes: self._block_pass(scores_cn, classes, want_ap, want_counts, top_k, check), self.chunks
        )
        ap = np.concatenate([b.ap for b in blocks]) if want_ap else None
        at_cut = (
            (np.concatenate([b.tp for b in blocks]), np.concatenate([b.n_pred for b in blocks]))
            if want_counts
            else None
        )
        if top_k is None:
            return ap, at_cut, None
        top = blocks[0].top
        assert top is not None
        spare = np.empty_like(top[0])
        for other in blocks[1:]:
            assert other.top is not None
            for values in other.top:
                insert_value(top, values, spare)
        kth = top[-1]
        parts = self._map(
            lambda pair: self._top_k_counts(scores_cn, pair[0], pair[1].pred, kth),
            list(zip(self.chunks, blocks, strict=True)),
        )
        tp = np.concatenate([p[0] for p in parts])
        n_pred = np.concatenate([p[1] for p in parts])
        tied = np.flatnonzero(sum(p[2] for p in parts) != top_k)
        if tied.size:  # recount those columns with torch.topk's choice
            sub = scores_cn[:, tied]
            pred = np.concatenate([b.pred[:, tied] for b in blocks])
            ours, theirs = (sub >= kth[tied]) & pred, torch_top_k_mask(sub, top_k) & pred
            for counts, labels in ((tp, self.positive), (n_pred, self.counted)):
                counts += np.count_nonzero(theirs & labels[:, tied], axis=1) - np.count_nonzero(
                    ours & labels[:, tied], axis=1
                )
        return ap, at_cut, (tp, n_pred)

    def _map(self, work: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return parallel_map(work, items, len(self.chunks))

    def _block_pass(
        self, scores_cn: Array, classes: range, want_ap: bool, want_counts: bool, top_k: int | None, check: bool
    ) -> Block:
        block = scores_cn[classes.start : classes.stop]
        if check and not want_ap:  # with AP: checked on the sorted rows' ends, for free
            check_finite(block)
        ap = self._block_ap(block, classes, check) if want_ap else None
        if not (want_counts or top_k):
            return Block(ap, None, None, None, None)
        pred = at_least_threshold(block, self.threshold)
        tp, n_pred = (
            self._counts(pred, slice(classes.start, classes.stop)) if want_counts else (None, None)
        )  # top-k alone: pred only
        return Block(ap, pred, tp, n_pred, top_k_values(block, top_k) if top_k else None)

    def _counts(self, pred: Array, rows: slice) -> Counts:
        """Per class of ``rows``: true positives and predicted positives (unknowns left out or not)."""
        counted = pred if self.all_counted else pred & self.counted[rows]
        return row_counts(pred & self.positive[rows]), row_counts(counted)

    def _top_k_counts(self, scores_cn: Array, classes: range, pred: Array, kth: Array) -> tuple[Array, Array, Array]:
        """Per class of the block: tp and n_pred among predictions at or above each image's k-th
        score; per image: how many of the block's scores are at or above it (ties show there)."""
        rows = slice(classes.start, classes.stop)
        in_top = scores_cn[rows] >= kth
        per_image = column_counts(in_top)
        in_top &= pred
        return *self._counts(in_top, rows), per_image

    def _block_ap(self, block: Array, classes: range, check: bool) -> Array:
        """AP of a block of class rows: each row sorted whole (numpy's SIMD sort, the scores' own
        dtype, no argsort) with its unknowns set to -inf first, so that they sort below every
        (finite) score and drop out of every count; its positives sorted apart (small). The known
        scores at or above a positive are then all those from its ``searchsorted`` place up, and
        the positives at or above it come from their own tie runs."""
        ap = np.full(len(classes), np.nan)
        n = block.shape[1]
        rows = block.copy()
        n_unknown = self.n_unknown[classes.start : classes.stop]
        if self.unknown_flat is not None:
            first, last = np.searchsorted(self.unknown_flat, [classes.start * n, classes.stop * n])
            unknown = self.unknown_flat[first:last] - classes.start * n
            if check:  # a NaN where the label is unknown is still a broken score
                check_finite(block.reshape(-1)[unknown])
            rows.reshape(-1)[unknown] = -np.inf
        rows.sort(axis=1)
        if check:  # NaN and +inf sort last; a known -inf would come right after the unknowns
            known = np.flatnonzero(n_unknown < n)  # rows with a known label (all-unknown: all -inf)
            check_finite(rows[known, -1])
            check_finite(rows[known, n_unknown[known]])
        for i, k in enumerate(classes):
            if not self.pos_index[k].size:
                continue
            pos = np.sort(block[i].take(self.pos_index[k]))
            known_ge = n - np.searchsorted(rows[i], pos, side="left")
            pos_ge = pos.size - tie_run_starts(pos)
            ap[i] = float(np.sum(pos_ge / known_ge.astype(np.float64)) / pos.size)
        return ap


Counts = tuple[Array, Array]  # per class: true positives, predicted positives (float64)


@dataclass
class Block:
    """Pass 1's results for one block of classes (see :meth:`MultilabelEvaluator._passes`)."""

    ap: Array | None
    pred: Array | None  # (classes of the block, N) bool: predicted at the threshold
    tp: Array | None
    n_pred: Array | None
    top: list[Array] | None  # the block's k largest scores per image


class SinglelabelEvaluator:
    """Top-1 / top-5 accuracy and per-class top-1 accuracy for score matrices against fixed one-hot labels.

    A target is in the top k when fewer than k scores beat it and its ties fit; only rows where a
    tie decides go through ``torch.topk`` / ``argmax`` (whose order then applies).
    """

    def __init__(self, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> None:
        self.shape = tuple(labels.shape)
        self.targets = labels.argmax(dim=1).cpu().numpy()
        self.ks = ks
        self.num_classes = labels.shape[1]
        self.class_counts = np.bincount(self.targets, minlength=self.num_classes).astype(np.float64)

    def prepare(self, scores: torch.Tensor) -> Array:
        if tuple(scores.shape) != self.shape:
            raise ValueError(f"scores {tuple(scores.shape)} must be (N, C) like the labels {self.shape}")
        array = scores.detach().cpu().numpy()
        if not np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float64)
        return np.ascontiguousarray(array)

    def evaluate(self, scores: Array | CandidateScores, check: bool = True) -> tuple[dict[str, float], torch.Tensor]:
        if isinstance(scores, CandidateScores):
            return self._from_counts(scores.beaten, scores.tied, scores.dense_rows)
        if check:
            check_finite(scores)
        n = scores.shape[0]
        target_score = scores[np.arange(n), self.targets][:, None]
        beaten = np.count_nonzero(scores > target_score, axis=1)
        tied = np.count_nonzero(scores == target_score, axis=1)  # the target itself included
        return self._from_counts(beaten, tied, lambda rows: scores[rows])

    def primary(self, scores: Array | CandidateScores) -> float:
        """Top-1 in percent (what a held-out choice compares)."""
        return self.evaluate(scores)[0]["top1"]

    def _from_counts(
        self, beaten: Array, tied: Array, dense_rows: Callable[[Array], Array]
    ) -> tuple[dict[str, float], torch.Tensor]:
        """Metrics from, per image, how many classes beat the target and how many tie it (itself included)."""
        kmax = min(max(self.ks), self.num_classes)
        hits = {}
        for k in self.ks:
            k = min(k, kmax)
            hits[k] = beaten + tied <= k
        correct = (beaten == 0) & (tied == 1)
        unsure_mask = (beaten == 0) & (tied > 1)  # argmax's first index decides
        for k in hits:
            unsure_mask |= (beaten < k) & (beaten + tied > k)  # the target's tie run straddles the k-th place
        unsure = np.flatnonzero(unsure_mask)
        if unsure.size:  # a tie decides: the reference definition's own order on those rows
            sub = torch.from_numpy(np.ascontiguousarray(dense_rows(unsure)))
            sub_targets = torch.from_numpy(self.targets[unsure])
            top = sub.topk(kmax, dim=1).indices == sub_targets[:, None]
            for k in self.ks:
                hits[min(k, kmax)][unsure] = top[:, : min(k, kmax)].any(dim=1).numpy()
            correct[unsure] = (sub.argmax(dim=1) == sub_targets).numpy()
        out = {f"top{k}": float(hits[min(k, kmax)].mean() * 100.0) for k in self.ks}
        per_hits = np.bincount(self.targets, weights=correct.astype(np.float64), minlength=self.num_classes)
        per_class = np.where(self.class_counts > 0, per_hits / np.maximum(self.class_counts, 1), np.nan)
        return out, torch.from_numpy(per_class)

    def pair(self, avg: Array, attended: Array, lams: Sequence[float], score: ScoreFn) -> Pair:
        """``avg + lam * attended`` for every lam of a sweep, evaluated on candidates only.

        ``score(avg, attended, lam)`` is linear in lam, so a class can beat or tie the target at
        some lam in [0, max(lams)] only if it does (up to rounding, which a margin covers) at one of
        the two ends. The other classes are left out once per variant; each row then compares the
        few candidates (gathered once; elementwise scoring gives the same numbers on any subset).
        """
        check_finite(avg)
        check_finite(attended)
        top = max(lams, default=0.0)
        scale = float(np.abs(avg).max(initial=0.0)) + top * float(np.abs(attended).max(initial=0.0))
        if not math.isfinite(top) or scale > 1e30:
            return DensePair(avg, attended, score)
        margin = 1e-5 * scale + 1e-30
        n = avg.shape[0]
        rows = np.arange(n)
        a_t, b_t = avg[rows, self.targets], attended[rows, self.targets]
        d0 = avg - a_t[:, None]
        near = d0 >= -margin
        near |= d0 + top * (attended - b_t[:, None]) >= -margin
        near[rows, self.targets] = False
        image, klass = np.nonzero(near)
        return CandidatePair(avg, attended, score, image, klass, a_t, b_t)


ScoreFn = Callable[[Any, Any, float], Any]


class Pair(Protocol):
    def at(self, lam: float) -> Any: ...


class DensePair:
    """``score(avg, attended, lam)`` as a full matrix, in the evaluator's layout."""

    def __init__(self, avg: Any, attended: Any, score: ScoreFn) -> None:
        self.avg, self.attended, self.score = avg, attended, score

    def at(self, lam: float) -> Any:
        return self.score(self.avg, self.attended, lam)


@dataclass
class CandidateScores:
    """Per image, classes beating / tying the target at one lam, and the way to any full row."""

    beaten: Array
    tied: Array
    dense_rows: Callable[[Array], Array]


class CandidatePair:
    """See :meth:`SinglelabelEvaluator.pair`: per lam, only the candidate entries are scored."""

    def __init__(
        self, avg: Array, attended: Array, score: ScoreFn, image: Array, klass: Array, a_t: Array, b_t: Array
    ) -> None:
        self.avg, self.attended, self.score = avg, attended, score
        self.image, self.n = image, avg.shape[0]
        self.a_c, self.b_c = avg[image, klass], attended[image, klass]
        self.a_t, self.b_t = a_t, b_t

    def at(self, lam: float) -> CandidateScores:
        s_t = self.score(self.a_t, self.b_t, lam)
        s_c = self.score(self.a_c, self.b_c, lam)
        if not (np.isfinite(s_t).all() and np.isfinite(s_c).all()):
            raise ValueError("scores contain NaN or inf")
        target = s_t[self.image]
        beaten = np.bincount(self.image[s_c > target], minlength=self.n)
        tied = np.bincount(self.image[s_c == target], minlength=self.n) + 1
        return CandidateScores(beaten, tied, lambda rows: self.score(self.avg[rows], self.attended[rows], lam))


class Evaluator(Protocol):
    def prepare(self, scores: torch.Tensor) -> Any: ...
    def evaluate(self, prepared: Any, check: bool = True) -> tuple[dict[str, float], torch.Tensor]: ...
    def primary(self, prepared: Any) -> float: ...
    def pair(self, avg: Any, attended: Any, lams: Sequence[float], score: ScoreFn) -> Pair: ...


class TorchEvaluator:
    """The torch implementations, for statistics on a GPU: prepare is the identity."""

    def __init__(self, labels: torch.Tensor, single_label: bool, unknown: UnknownPolicy = "exclude") -> None:
        self.labels, self.single_label, self.unknown = labels, single_label, unknown

    def prepare(self, scores: torch.Tensor) -> torch.Tensor:
        return scores

    def pair(self, avg: torch.Tensor, attended: torch.Tensor, lams: Sequence[float], score: ScoreFn) -> Pair:
        return DensePair(avg, attended, score)

    def evaluate(self, scores: torch.Tensor, check: bool = True) -> tuple[dict[str, float], torch.Tensor]:
        if self.single_label:
            return torch_reference.singlelabel_metrics(scores, self.labels.to(scores.device))
        return torch_reference.multilabel_metrics(scores, self.labels.to(scores.device), unknown=self.unknown)

    def primary(self, scores: torch.Tensor) -> float:
        return self.evaluate(scores)[0]["top1" if self.single_label else "mAP"]


def evaluator(
    labels: torch.Tensor,
    single_label: bool,
    unknown: UnknownPolicy = "exclude",
    device: torch.device | str = "cpu",
    threads: int | None = None,
) -> Evaluator:
    """The evaluator for a sweep: numpy on CPU, torch ops where the statistics live on a GPU.
    ``threads``: how many blocks of classes one multi-label evaluation splits into (default: torch's
    thread count; 1 where the caller runs several evaluations side by side)."""
    if torch.device(device).type != "cpu":
        return TorchEvaluator(labels, single_label, unknown)
    if single_label:
        return SinglelabelEvaluator(labels)
    return MultilabelEvaluator(labels, unknown, threads=threads)
