"""Many score matrices against one label matrix: the metric evaluation behind a sweep.

What depends only on the labels (each class's positive / negative / unknown index sets, counts,
masks) is computed once per evaluator; each score matrix then costs one sort per class, in the
scores' own dtype with numpy's SIMD sort, and a few linear passes. CPU work is numpy, which on a
2-core machine was 10-30x faster than the same elementwise torch ops (torch's allocator faults
in fresh pages for every temporary; numpy's large arrays get huge pages). On CUDA the torch
implementations run unchanged (:class:`TorchEvaluator`).

Results equal the straightforward definitions in ``average_precision.py`` / ``thresholded.py`` /
``accuracy.py`` exactly (same predicates, same tie rules; rows whose top-k is decided by a tie
fall back to ``torch.topk``), which ``tests/test_metrics_property.py`` checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from typing import Any, Protocol

import numpy as np
import torch

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
    near = np.flatnonzero((scores >= cut - margin) & ~pred)
    if near.size:
        flat = pred.reshape(-1)
        values = torch.from_numpy(np.ascontiguousarray(scores.reshape(-1)[near])).double()
        flat[near] = (torch.sigmoid(values) >= threshold).numpy()
    return pred


def top_k_mask(scores_cn: Array, k: int) -> Array:
    """Boolean ``(C, N)``: the ``k`` highest scores of each image (column) of ``scores_cn``.

    The k-th distinct maximum per column, found by k masked maxima over the contiguous class
    rows; a column with exactly k scores at or above it has its top-k decided without ties. The
    other columns (ties at the k-th place, or fewer than k distinct scores) take ``torch.topk``'s
    choice, as :func:`csra_posthoc.metrics.thresholded.predicted_positive` does.
    """
    work, floor = scores_cn, scores_cn.dtype.type(-np.inf)
    kth = scores_cn.max(axis=0)
    for _ in range(k - 1):
        work = np.where(work < kth, work, floor)
        kth = work.max(axis=0)
    mask = scores_cn >= kth
    tied = np.flatnonzero(np.count_nonzero(mask, axis=0) != k)
    if tied.size:
        sub = torch.from_numpy(np.ascontiguousarray(scores_cn[:, tied].T))
        keep = torch.zeros(sub.shape, dtype=torch.bool).scatter_(1, sub.topk(k, dim=1).indices, True)
        mask[:, tied] = keep.numpy().T
    return mask


def tie_run_starts(ascending: Array) -> Array:
    """For a sorted array, the index of the first element of each element's run of equal values:
    one linear pass (``searchsorted`` of the array into itself cost ~15x more here)."""
    start = np.ones(ascending.size, dtype=bool)
    start[1:] = ascending[1:] != ascending[:-1]
    return np.maximum.accumulate(np.where(start, np.arange(ascending.size), 0))


@cache
def _pool(threads: int) -> ThreadPoolExecutor:
    """One pool per thread count for the process (numpy's sort releases the GIL)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="csra-ap")


class MultilabelEvaluator:
    """AP per class, mAP, CP..OF1 and their top-k versions for score matrices against fixed labels.

    Scores are passed in this evaluator's layout (:meth:`prepare`: classes x images, contiguous),
    so a sweep converts ``avg`` and each attended term once and combines them per lam.
    """

    def __init__(self, labels: torch.Tensor, unknown: UnknownPolicy = "exclude", threshold: float = 0.5, top_k: int = 3, threads: int | None = None) -> None:
        if labels.dim() != 2:
            raise ValueError(f"labels {tuple(labels.shape)} must be (N, C)")
        lab = labels.cpu().numpy()
        lab = np.ascontiguousarray((lab if lab.dtype == np.int8 else lab.astype(np.int8)).T)  # {1, 0, -1}: int8 moves 8x less than int64
        self.shape = tuple(labels.shape)
        self.threshold, self.top_k, self.unknown = threshold, top_k, unknown
        self.positive = lab == 1
        self.counted = lab != -1 if unknown == "exclude" else np.ones_like(self.positive)
        n_pos = np.count_nonzero(self.positive, axis=1)
        self.n_gt = n_pos.astype(np.float64)
        # per class, the images of its positives and of its unknowns (each row is sorted whole)
        unknown_mask = lab == -1
        pos, unk = np.flatnonzero(self.positive), np.flatnonzero(unknown_mask)
        n_unk = np.count_nonzero(unknown_mask, axis=1)
        n = lab.shape[1]
        self.pos_index = np.split(pos - np.repeat(np.arange(lab.shape[0]) * n, n_pos), np.cumsum(n_pos)[:-1])
        self.unk_index = np.split(unk - np.repeat(np.arange(lab.shape[0]) * n, n_unk), np.cumsum(n_unk)[:-1])
        threads = torch.get_num_threads() if threads is None else threads
        classes = lab.shape[0]
        edges = np.linspace(0, classes, min(max(1, threads), max(classes, 1)) + 1).astype(int)
        self.chunks = [range(a, b) for a, b in pairwise(edges.tolist()) if b > a]
        self.pool = _pool(len(self.chunks)) if len(self.chunks) > 1 else None

    def prepare(self, scores: torch.Tensor) -> Array:
        """``(N, C)`` scores as this evaluator's ``(C, N)`` contiguous array (float kept, ints to float64)."""
        if tuple(scores.shape) != self.shape:
            raise ValueError(f"scores {tuple(scores.shape)} and labels {self.shape} must both be (N, C)")
        array = scores.detach().cpu().numpy()
        if not np.issubdtype(array.dtype, np.floating) or array.dtype == np.float16:
            array = array.astype(np.float64 if not np.issubdtype(array.dtype, np.floating) else np.float32)
        return np.ascontiguousarray(array.T)

    def pair(self, avg: Array, attended: Array, lams: Sequence[float], score: ScoreFn) -> Pair:
        """``score(avg, attended, lam)`` per lam (every row needs its full sort)."""
        return DensePair(avg, attended, score)

    def average_precision(self, scores_cn: Array) -> Array:
        """Per-class AP (float64, NaN for a class without a positive).

        Each class row is sorted whole (numpy's SIMD sort, the scores' own dtype, no argsort),
        its positives and unknowns apart (small); negatives at or above a score are then all
        minus positives minus unknowns there, each count one ``searchsorted``.
        """
        ap = np.full(scores_cn.shape[0], np.nan)
        n = scores_cn.shape[1]

        def run(classes: range) -> None:
            rows = np.sort(scores_cn[classes.start : classes.stop], axis=1)
            for k in classes:
                if not self.pos_index[k].size:
                    continue
                pos = np.sort(scores_cn[k].take(self.pos_index[k]))
                known_ge = n - np.searchsorted(rows[k - classes.start], pos, side="left")
                if self.unk_index[k].size:
                    known_ge = known_ge - (self.unk_index[k].size - np.searchsorted(np.sort(scores_cn[k].take(self.unk_index[k])), pos, side="left"))
                pos_ge = pos.size - tie_run_starts(pos)
                ap[k] = float(np.sum(pos_ge / known_ge.astype(np.float64)) / pos.size)

        if self.pool is None:
            for chunk in self.chunks:
                run(chunk)
        else:
            list(self.pool.map(run, self.chunks))
        return ap

    def counts(self, pred: Array) -> dict[str, Array]:
        return {
            "tp": np.count_nonzero(pred & self.positive, axis=1).astype(np.float64),
            "n_pred": np.count_nonzero(pred & self.counted, axis=1).astype(np.float64),
            "n_gt": self.n_gt,
        }

    def thresholded(self, scores_cn: Array, top_k: int | None = None, pred: Array | None = None) -> dict[str, float]:
        """CP..OF1 (percent), restricted to each image's top-k when given; ``pred`` is
        :func:`at_least_threshold` of the scores when already computed."""
        pred = at_least_threshold(scores_cn, self.threshold) if pred is None else pred
        if top_k is not None and top_k < scores_cn.shape[0]:
            # only images with more than k predicted labels lose some to the top-k cut
            crowded = np.flatnonzero(np.count_nonzero(pred, axis=0) > top_k)
            if crowded.size > scores_cn.shape[1] // 4:  # column gathers cost more than they save
                pred = pred & top_k_mask(scores_cn, top_k)
            elif crowded.size:
                pred = pred.copy()
                pred[:, crowded] &= top_k_mask(np.ascontiguousarray(scores_cn[:, crowded]), top_k)
        return metrics_from_counts(**{k: torch.from_numpy(v) for k, v in self.counts(pred).items()})

    def evaluate(self, scores_cn: Array, check: bool = True) -> tuple[dict[str, float], torch.Tensor]:
        """What :func:`csra_posthoc.metrics.multilabel_metrics` returns, for prepared scores."""
        if check:
            check_finite(scores_cn)
        ap = self.average_precision(scores_cn)
        valid = ~np.isnan(ap)
        if not valid.any():
            raise ValueError("no class has a positive label: mAP is undefined")
        out = {"mAP": float(ap[valid].mean() * 100.0)}
        pred = at_least_threshold(scores_cn, self.threshold)
        out.update(self.thresholded(scores_cn, pred=pred))
        out.update({f"{k}_top{self.top_k}": v for k, v in self.thresholded(scores_cn, self.top_k, pred).items()})
        return out, torch.from_numpy(ap)


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

    def _from_counts(self, beaten: Array, tied: Array, dense_rows: Callable[[Array], Array]) -> tuple[dict[str, float], torch.Tensor]:
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

    def __init__(self, avg: Array, attended: Array, score: ScoreFn, image: Array, klass: Array, a_t: Array, b_t: Array) -> None:
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
        from . import torch_reference

        if self.single_label:
            return torch_reference.singlelabel_metrics(scores, self.labels.to(scores.device))
        return torch_reference.multilabel_metrics(scores, self.labels.to(scores.device), unknown=self.unknown)


def evaluator(labels: torch.Tensor, single_label: bool, unknown: UnknownPolicy = "exclude", device: torch.device | str = "cpu") -> Evaluator:
    """The evaluator for a sweep: numpy on CPU, torch ops where the statistics live on a GPU."""
    if torch.device(device).type != "cpu":
        return TorchEvaluator(labels, single_label, unknown)
    if single_label:
        return SinglelabelEvaluator(labels)
    return MultilabelEvaluator(labels, unknown)
