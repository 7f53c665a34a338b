"""Paired bootstrap over images: is a CSRA gain larger than the noise of the evaluated set? (docs/uncertainty.md)

A resample draws N images with replacement; it is a vector of multiplicities ``w`` (multinomial
counts, summing to N) over the evaluated images. The same ``w`` scores the variant and the
baseline (paired), and the interval is the 2.5 / 97.5 percentiles of
``metric(variant) - metric(baseline)`` over the resamples, in the metric's percent points.

No resample is re-sorted: each class's score order is fixed, so the AP of a resample is a
weighted AP over the once-sorted order. Only the runs of tied scores that contain a positive
matter (each positive is credited with the precision at its run's end, as in
:mod:`csra_posthoc.metrics.average_precision`), so every labelled image is assigned to the first
such run at or after its place and one sparse product per chunk of resamples gives the weighted
positive and labelled counts of every run of every class at once. Unknown labels (-1) are left
out; a class with no positive in a resample is left out of that resample's mean, as
:func:`csra_posthoc.metrics.mean_average_precision` does on the resampled matrix.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import CSRAError
from ..heads.scoring import csra_score
from .results import Interval

DEFAULT_RESAMPLES = 1000
CHUNK_CELLS = 2_000_000  # resamples per chunk * runs: (chunk, runs) float64 buffers of ~16 MB stay in a 32 MB L3 (1.6x faster than 128 MB ones on 2 cores)


def resamples_per_chunk(runs: int, num_images: int) -> int:
    """Resamples drawn and scored together: ``(chunk, runs)`` and ``(chunk, images)`` buffers of
    :data:`CHUNK_CELLS` cells. The draws do not depend on it; every resampling loop uses this one."""
    return max(1, CHUNK_CELLS // max(runs, num_images))


Part = tuple[torch.Tensor | None, torch.Tensor]  # (image mask or None for all images, scores (N, C))


@dataclass
class KeyRunPlaces:
    """One class's score order cut at the runs that hold a positive (its *key runs*)."""

    k: int  # the class
    images: np.ndarray  # (N,) image index of each sorted place, highest score first
    labels: np.ndarray  # (N,) its label: 1, 0 or -1 (unknown)
    key_run: np.ndarray  # (N,) the first key run at or after each place (== count: after the last one)
    count: int  # the class's key runs


def key_run_places(scores: torch.Tensor, labels: torch.Tensor) -> Iterator[KeyRunPlaces]:
    """Each class with a positive, in class order: its sorted places and the key run each belongs to.

    Only runs of tied scores holding a positive matter (each positive is credited with the precision at
    its run's end), so every place is counted at the first key run at or after it."""
    n, c = scores.shape
    sorted_scores, order = torch.sort(scores.double().t().contiguous(), dim=1, descending=True)
    sorted_labels = labels.t().contiguous().gather(1, order)
    for k in range(c):
        s, lab, idx = sorted_scores[k].numpy(), sorted_labels[k].numpy(), order[k].numpy()
        new_run = np.ones(n, dtype=bool)
        new_run[1:] = s[1:] != s[:-1]
        run_id = np.cumsum(new_run) - 1  # run of each sorted place
        key_runs = np.unique(run_id[lab == 1])  # runs holding a positive, in score order
        if key_runs.size:
            yield KeyRunPlaces(k, idx, lab, np.searchsorted(key_runs, run_id), int(key_runs.size))


@dataclass
class RunCounts:
    """Weighted counts per key run (rows, every class's runs in order) and resample (columns).

    Integer-valued float32 sums (exact below 2**24); :meth:`WeightedAP.ap_from` consumes them in place."""

    positives: torch.Tensor  # (runs, B) float64: the run's positives
    cum_positives: torch.Tensor  # (runs, B) float32: the class's positives so far, this run included
    cum_known: torch.Tensor  # (runs, B) float32: the class's known images (positive or negative) so far


class WeightedAP:
    """Per-class AP of fixed ``scores`` under image multiplicities ``w``, sorted once."""

    def __init__(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        self._check(scores, labels)
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []

        def known(places: KeyRunPlaces, keep: np.ndarray, first: int) -> None:
            rows.append(first + places.key_run[keep])
            cols.append(places.images[keep])

        runs = self._index_key_runs(scores, labels, known)
        self.labelled = _csr(_cat(rows), _cat(cols), runs, self.num_images)  # (runs, N)

    def _check(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        if scores.shape != labels.shape or scores.dim() != 2:
            raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must both be (N, C)")
        if not torch.isfinite(scores).all():
            raise ValueError("scores contain NaN or inf")
        self.num_images, self.num_classes = scores.shape

    def _index_key_runs(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor,
        known: Callable[[KeyRunPlaces, np.ndarray, int], Any],
    ) -> int:
        """Set the positives' matrix and the per-class bookkeeping; ``known(places, keep, first)`` is told
        of each class's known places up to its last key run (``first``: the class's first global key run)."""
        n, c = scores.shape
        run_class, pos_rows, pos_cols = [], [], []
        runs = 0
        for places in key_run_places(scores, labels):
            keep = (places.key_run < places.count) & (places.labels != -1)
            known(places, keep, runs)
            pos = keep & (places.labels == 1)
            pos_rows.append(places.key_run[pos] + runs)
            pos_cols.append(places.images[pos])
            run_class.append(np.full(places.count, places.k))
            runs += places.count
        self.num_runs = runs
        self.run_class = torch.from_numpy(_cat(run_class))
        self.positive = _csr(_cat(pos_rows), _cat(pos_cols), runs, n)
        counts = torch.bincount(self.run_class, minlength=c).tolist() if runs else [0] * c
        ends = np.cumsum(counts).tolist()
        self.class_bounds = [(e - k, e) for e, k in zip(ends, counts, strict=True) if k]
        self.last_run = torch.tensor([e - 1 for e, k in zip(ends, counts, strict=True) if k], dtype=torch.int64)
        self.last_run_class = torch.tensor([i for i, k in enumerate(counts) if k], dtype=torch.int64)
        return runs

    def counts(self, weights: torch.Tensor) -> RunCounts:
        """Every key run's weighted counts for weights ``(B, N)``."""
        wt = weights.t().to(torch.float32).contiguous()  # integer sums < 2**24 are exact in float32
        tp = self.positive @ wt  # (runs, B): runs-major, so the per-class steps move whole rows
        cum_known = _segment_cumsum(self.labelled @ wt, self.class_bounds)  # known images so far
        positives = tp.double()
        return RunCounts(positives, _segment_cumsum(tp, self.class_bounds), cum_known)  # in place: tp is spent

    def ap_from(self, counts: RunCounts) -> torch.Tensor:
        """AP ``(B, C)`` (float64, NaN for a class with no positive of weight > 0); modifies ``counts``."""
        b = counts.positives.shape[1]
        ap = torch.full((self.num_classes, b), float("nan"), dtype=torch.float64)
        cum_tp = counts.cum_positives
        credit = counts.positives.mul_(cum_tp).div_(counts.cum_known.clamp_min_(1.0))  # float64 only for the division
        num = torch.zeros(self.num_classes, b, dtype=torch.float64).index_add_(0, self.run_class, credit)
        den = torch.zeros(self.num_classes, b, dtype=torch.float64)
        den[self.last_run_class] = cum_tp[self.last_run].double()  # a class's positives: its last cumulative count
        return torch.where(den > 0, num / den.clamp_min(1e-300), ap).t()

    def __call__(self, weights: torch.Tensor) -> torch.Tensor:
        """AP ``(B, C)`` (float64, NaN for a class with no positive of weight > 0) for weights ``(B, N)``."""
        if self.num_runs == 0:
            return torch.full((weights.shape[0], self.num_classes), float("nan"), dtype=torch.float64)
        return self.ap_from(self.counts(weights))

    def mean(self, weights: torch.Tensor) -> torch.Tensor:
        """mAP in percent ``(B,)`` over the classes with a positive in each resample."""
        return torch.nanmean(self(weights), dim=1) * 100.0


class WeightedTop1:
    """Top-1 accuracy in percent of fixed ``scores`` under image multiplicities ``w``."""

    def __init__(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        self.correct = (scores.argmax(dim=1) == labels.argmax(dim=1)).double()

    def mean(self, weights: torch.Tensor) -> torch.Tensor:
        w = weights.double()
        return (w @ self.correct) / w.sum(dim=1).clamp_min(1.0) * 100.0


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


def weighted_metric(scores: torch.Tensor, labels: torch.Tensor, single_label: bool) -> WeightedAP | WeightedTop1:
    """The primary metric (top-1 for single-label, mAP for multi-label) as a function of weights."""
    return WeightedTop1(scores, labels) if single_label else WeightedAP(scores, labels)


def _csr(rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int) -> torch.Tensor:
    """A 0/1 sparse CSR matrix with a one at each ``(rows[i], cols[i])`` (a repeated pair counts twice in
    a product). Built straight from the row counts: the entries are put in row order (a stable sort,
    skipped when the rows already are, as the key runs' are) and the columns within a row are left
    in their order, which no product depends on (its sums are of integers)."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if rows.size > 1 and bool((rows[1:] < rows[:-1]).any()):
        order = np.argsort(rows, kind="stable")
        rows, cols = rows[order], cols[order]
    crow = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=num_rows), out=crow[1:])
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(crow),
            torch.from_numpy(np.ascontiguousarray(cols)),
            torch.ones(cols.size, dtype=torch.float32),
            (num_rows, num_cols),
            check_invariants=False,
        )


def nanmean_quiet(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean over ``dim`` of the defined values (NaN where none is), without nanmean's all-NaN warning."""
    defined = ~torch.isnan(x)
    total = torch.where(defined, x, torch.zeros_like(x)).sum(dim=dim)
    count = defined.sum(dim=dim)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def _segment_cumsum(x: torch.Tensor, bounds: list[tuple[int, int]]) -> torch.Tensor:
    """In place: cumulative sums along dim 0 within each class's rows (exact: integer values)."""
    for start, end in bounds:
        x[start:end].cumsum_(dim=0)
    return x


def check_resamples(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise CSRAError(f"bootstrap resamples {n!r}: must be an integer >= 1 (1000 is the usual choice)", param="n")
    return int(n)


def resample_weights(num_images: int, n: int, seed: int, chunk: int) -> Iterator[torch.Tensor]:
    """Multiplicities ``(b, N)`` of ``n`` seeded resamples with replacement, ``chunk`` at a time."""
    gen = torch.Generator().manual_seed(int(seed))
    done = 0
    while done < n:
        b = min(chunk, n - done)
        draws = torch.randint(num_images, (b, num_images), generator=gen)
        yield torch.zeros(b, num_images, dtype=torch.float32).scatter_add_(1, draws, torch.ones(b, num_images))
        done += b


def bootstrap_deltas(
    baseline: torch.Tensor,
    variants: Mapping[str, torch.Tensor | Sequence[Part]],
    labels: torch.Tensor,
    *,
    single_label: bool = False,
    n: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Interval]:
    """Paired bootstrap of ``metric(variant) - metric(baseline)`` for each named variant
    (``progress(b)`` is told of every b resamples done).

    A variant is a score matrix ``(N, C)`` over all evaluated images, or a list of parts
    ``(mask, scores)`` whose deltas (each on the images in ``mask``, scores still ``(N, C)``)
    are averaged: the held-out figure of :mod:`csra_posthoc.evaluation.selection`, whose choices stay fixed
    across resamples. ``delta`` is the full-data figure, ``low`` / ``high`` the 95 % percentile
    interval; all in percent points of mAP (multi-label) or top-1 (single-label).
    """
    n = check_resamples(n)
    parts = {name: [(None, v)] if isinstance(v, torch.Tensor) else list(v) for name, v in variants.items()}
    num_images = baseline.shape[0]
    base = weighted_metric(baseline, labels, single_label)
    metrics = {name: [(mask, weighted_metric(s, labels, single_label)) for mask, s in p] for name, p in parts.items()}
    runs = max(
        [getattr(m, "num_runs", 1) for ps in metrics.values() for _, m in ps] + [getattr(base, "num_runs", 1), 1]
    )
    chunk = min(n, resamples_per_chunk(runs, num_images))

    def deltas(w: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, ps in metrics.items():
            per_part = [
                m.mean(w if mask is None else w * mask) - base.mean(w if mask is None else w * mask) for mask, m in ps
            ]
            out[name] = torch.stack(per_part).mean(dim=0)
        return out

    point = deltas(torch.ones(1, num_images))
    draws: dict[str, list[torch.Tensor]] = {name: [] for name in metrics}
    for w in resample_weights(num_images, n, seed, chunk):
        for name, d in deltas(w).items():
            draws[name].append(d)
        if progress is not None:
            progress(w.shape[0])
    out = {}
    for name in metrics:
        values = torch.cat(draws[name]).numpy()
        values = values[~np.isnan(values)]  # a resample where a held-out half has no positive at all
        low, high = (np.percentile(values, [2.5, 97.5]).tolist()) if values.size else (float("nan"), float("nan"))
        out[name] = Interval(float(point[name][0]), float(low), float(high))
    return out


def bootstrap_json(intervals: Mapping[str, Interval], n: int, seed: int) -> dict[str, Any]:
    """The results-JSON ``"bootstrap"`` object: ``{"n", "seed", name: {"delta", "low", "high"}, ...}``."""
    return {"n": int(n), "seed": int(seed), **{name: iv.to_json() for name, iv in intervals.items()}}


def lam_band(
    avg: torch.Tensor,
    attended: torch.Tensor,
    labels: torch.Tensor,
    lams: Sequence[float],
    *,
    single_label: bool = False,
    n: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[float, Interval]:
    """Bootstrap interval of the delta of ``avg + lam * attended`` at each lam (the lam curve's band)."""
    grid = sorted({float(lam) for lam in lams})
    found = bootstrap_deltas(
        avg,
        {str(lam): csra_score(avg, attended, lam) for lam in grid},
        labels,
        single_label=single_label,
        n=n,
        seed=seed,
        progress=progress,
    )
    return {lam: found[str(lam)] for lam in grid}
