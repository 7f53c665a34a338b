"""Every object-size / clutter split's AP under bootstrap weights, from the sweep's own counts (docs/method.md §11).

:class:`SplitAP` is a :class:`~csra_posthoc.evaluation.bootstrap.WeightedAP` (same sorted orders, same
products, the plain AP bit for bit) that also returns each split's per-class AP. A split is a set
of (class, bin) *segments*; its rows are the positives in them, sorted by (split, class, bin, key
run). Under weights ``w`` a row is credited, as in the plain AP, with the precision at its run's end:

* size and instance bins keep ALL the class's negatives: precision = the bin's positives so far /
  (those + the negatives so far), the negatives being the plain counts' known minus positives;
* label-count groups keep only their images: precision = the group's positives so far / the
  group's known images so far. Those come from one more sparse product whose rows are the group
  rows (each known image of the group counted at the first group row at or after its place).

Rows whose image weighs 0 under a part's mask (the other half of a held-out row) change nothing,
so each mask gets its own row set: a held-out half costs half. Rows are evaluated in blocks of
whole segments whose temporaries stay in cache; counts are float32 (integers, exact below 2**24)
and each credit float64.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .bootstrap import KeyRunPlaces, WeightedAP, _cat, _csr

# rows * resamples per block of split rows: float32 / float64 temporaries of 1-2 MB stay in cache
# (fresh buffers of tens of MB cost more in page faults than the arithmetic; benchmarks/size_splits.py)
SPLIT_BLOCK_CELLS = 1 << 18


@dataclass(frozen=True)
class _Block:
    """Consecutive segments of one row set, evaluated together (block-local row indices)."""

    start: int  # the block's rows in the row set: start, end
    end: int
    images: torch.Tensor  # each row's image
    runs: torch.Tensor | None  # each row's global key run (bin rows; None for group rows)
    segments: list[tuple[int, int]]  # each segment's rows
    tied: tuple[torch.Tensor, torch.Tensor] | None  # rows credited at a later row's counts, and that row
    first: int  # the block's segments in the row set: first, stop
    stop: int
    last: torch.Tensor  # each segment's last row


@dataclass
class _RowSet:
    """The split rows of one mask, sorted by (segment, key run), and the group product."""

    image: np.ndarray  # (R,) each row's image
    run: np.ndarray  # (R,) its global key run
    first: np.ndarray  # (S,) each present segment's first row
    end: np.ndarray  # (S,) and its end
    segment_ids: np.ndarray  # (S,) each present segment's id (split offset + class * bins + bin)
    group_rows: int  # rows [0, group_rows) are label-count group rows
    tied: np.ndarray  # rows credited at a later row's counts (tied positives of one segment)
    tied_to: np.ndarray  # that row: the last of their run
    arrivals: torch.Tensor  # (group rows, N) sparse: known images of the group counted at each group row
    _blocks: dict[int, list[_Block]]

    def blocks(self, resamples: int) -> list[_Block]:
        """Consecutive segments packed into blocks of about ``SPLIT_BLOCK_CELLS / resamples`` rows (a
        longer segment alone), never mixing group rows and bin rows; built once per size."""
        rows = max(1, SPLIT_BLOCK_CELLS // max(resamples, 1))
        if rows not in self._blocks:
            self._blocks[rows] = _pack(self, rows)
        return self._blocks[rows]


class SplitAP(WeightedAP):
    """Per-class AP of fixed ``scores`` under weights, plain and on every split (module doc).

    ``groups``: each image's label-count group (-1: no positive); ``partitions``: name -> ((N, C) bin
    of each positive, -1 for none; number of bins); ``masks``: key -> (N,) image mask (or None, all
    images) of the weightings :meth:`evaluate` will be called with."""

    def __init__(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor,
        groups: np.ndarray,
        num_groups: int,
        partitions: Mapping[str, tuple[np.ndarray, int]],
        masks: Mapping[Hashable, torch.Tensor | None] | None = None,
    ) -> None:
        self._check(scores, labels)
        n, c = self.num_images, self.num_classes
        group_bins = np.where(labels.numpy() == 1, np.where(groups < 0, -1, groups)[:, None], -1)
        parts = {"groups": (group_bins, num_groups), **partitions}
        self.offsets: dict[str, int] = {}
        total = 0
        for name, (_, nb) in parts.items():
            self.offsets[name], total = total, total + c * nb
        self.bins = {name: nb for name, (_, nb) in parts.items()}
        plain_rows: list[np.ndarray] = []
        plain_cols: list[np.ndarray] = []
        members: list[list[np.ndarray]] = [[], [], []]  # image, global key run, segment of every split's positives
        known_at: list[list[np.ndarray]] = [[], [], []]  # image, global key run, class of every known place

        def known(places: KeyRunPlaces, keep: np.ndarray, first: int) -> None:
            at, image = first + places.key_run[keep], places.images[keep]
            plain_rows.append(at)
            plain_cols.append(image)
            known_at[0].append(image)
            known_at[1].append(at)
            known_at[2].append(np.full(image.size, places.k))
            pos = places.labels[keep] == 1
            for name, (bins, nb) in parts.items():
                b = bins[image[pos], places.k]
                inb = b >= 0
                members[0].append(image[pos][inb])
                members[1].append(at[pos][inb])
                members[2].append(self.offsets[name] + places.k * nb + b[inb])

        runs = self._index_key_runs(scores, labels, known)
        self.labelled = _csr(_cat(plain_rows), _cat(plain_cols), runs, n)  # (runs, N): WeightedAP's
        image, run, segment = (_cat(m) for m in members)
        order = np.argsort(segment, kind="stable")  # within a segment: key runs in score order
        image, run, segment = image[order], run[order], segment[order]
        k_image, k_run, k_class = (_cat(m) for m in known_at)
        k_group = groups[k_image] if k_image.size else k_image
        with_group = k_group >= 0  # images without a positive are in no label-count group
        arrivals = (
            k_image[with_group],
            k_run[with_group],
            self.offsets["groups"] + k_class[with_group] * num_groups + k_group[with_group],
        )
        self._row_sets = {
            key: self._row_set(mask, (image, run, segment), arrivals) for key, mask in (masks or {None: None}).items()
        }  # built now: the known places are big and not kept

    def _row_set(
        self,
        mask: torch.Tensor | None,
        rows_: tuple[np.ndarray, np.ndarray, np.ndarray],
        arrivals_: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> _RowSet:
        """The rows (and arrivals) of the images ``mask`` keeps."""
        image, run, segment = rows_
        a_image, a_run, a_segment = arrivals_
        if mask is not None:
            keep = torch.as_tensor(mask).reshape(-1).numpy() != 0
            rows, arrive = keep[image], keep[a_image]
            image, run, segment = image[rows], run[rows], segment[rows]
            a_image, a_run, a_segment = a_image[arrive], a_run[arrive], a_segment[arrive]
        group_rows = int(np.searchsorted(segment, self.offsets["groups"] + self.num_classes * self.bins["groups"]))
        # each arrival at the first row of its group segment at or after its key run
        stride = max(self.num_runs, 1) + 1
        keys = segment[:group_rows] * stride + run[:group_rows]
        at = np.searchsorted(keys, a_segment * stride + a_run, side="left")
        valid = at < group_rows
        valid[valid] = segment[at[valid]] == a_segment[valid]
        arrivals = _csr(at[valid], a_image[valid], group_rows, self.num_images)
        present, first_row = np.unique(segment, return_index=True)
        end_row = np.r_[first_row[1:], segment.size].astype(np.int64)
        tied = np.r_[(segment[1:] == segment[:-1]) & (run[1:] == run[:-1]), False]  # next row: same run and segment
        tie_block = np.cumsum(np.r_[True, ~tied[:-1]]) - 1 if segment.size else segment
        run_end = np.flatnonzero(~tied)[tie_block] if segment.size else segment  # each row's tied run's last row
        tied_rows = np.flatnonzero(run_end != np.arange(segment.size))
        return _RowSet(
            image,
            run,
            first_row.astype(np.int64),
            end_row,
            present,
            group_rows,
            tied_rows,
            run_end[tied_rows],
            arrivals,
            {},
        )

    def evaluate(self, weights: torch.Tensor, mask: Hashable = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The plain AP ``(B, C)`` (``WeightedAP``'s, bit for bit) and ``{"groups": (B, G, C), name: (B, bins, C)}``,
        float64, NaN where a class (a split's bin) has no positive of weight > 0. ``mask``: the key
        (given at construction) of the mask ``weights`` are already multiplied by."""
        b = weights.shape[0]
        if self.num_runs == 0:
            return torch.full((b, self.num_classes), float("nan"), dtype=torch.float64), self._shape(None, None, b)
        counts = self.counts(weights)
        wt = weights.t().to(torch.float32).contiguous()
        cum_neg = counts.cum_known - counts.cum_positives  # before ap_from spends the counts
        rows = self._row_sets[mask]
        return self.ap_from(counts), self._shape(rows, self._split_ap(rows, wt, cum_neg), b)

    def split_ap(self, weights: torch.Tensor, mask: Hashable = None) -> dict[str, torch.Tensor]:
        return self.evaluate(weights, mask)[1]

    def _split_ap(self, rows: _RowSet, wt: torch.Tensor, cum_neg: torch.Tensor) -> torch.Tensor | None:
        """``(segments, B)`` AP of the row set's present segments."""
        b = wt.shape[1]
        blocks = rows.blocks(b)
        if not blocks:
            return None
        exact = float(wt.max()) * self.num_images < 2**24  # every product of two counts is exact in float32
        group_known = rows.arrivals @ wt if rows.group_rows else None  # (group rows, B)
        num = torch.empty(rows.segment_ids.size, b, dtype=torch.float64)
        den = torch.empty(rows.segment_ids.size, b, dtype=torch.float64)
        for blk in blocks:
            tp = wt.index_select(0, blk.images)  # (rows, B): each positive's weight
            cum = torch.empty_like(tp)
            for start, end in blk.segments:
                torch.cumsum(tp[start:end], dim=0, out=cum[start:end])  # the bin's positives so far
            if blk.runs is None:  # group rows: the group's known images so far
                assert group_known is not None
                seen = group_known[blk.start : blk.end]
                for start, end in blk.segments:
                    seen[start:end].cumsum_(dim=0)
            if blk.tied is not None:  # tied positives: the counts at their run's end
                cum[blk.tied[0]] = cum[blk.tied[1]]
                if blk.runs is None:
                    seen[blk.tied[0]] = seen[blk.tied[1]]
            if blk.runs is not None:  # bin rows: the bin's positives and ALL negatives so far
                seen = cum_neg.index_select(0, blk.runs).add_(cum)
            credit = tp.mul_(cum).double() if exact else tp.double().mul_(cum.double())
            credit.div_(seen.clamp_min_(1.0).double()).cumsum_(dim=0)  # a segment's sum: a difference at its ends
            ends = credit.index_select(0, blk.last)
            num[blk.first : blk.stop] = ends
            num[blk.first + 1 : blk.stop] -= ends[:-1]
            den[blk.first : blk.stop] = cum.index_select(0, blk.last)  # a segment's positives
        return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))

    def _shape(self, rows: _RowSet | None, ap: torch.Tensor | None, b: int) -> dict[str, torch.Tensor]:
        """``(segments, B)`` -> ``{name: (B, bins, C)}``, NaN for the segments without a row."""
        out: dict[str, torch.Tensor] = {}
        c = self.num_classes
        for name, nb in self.bins.items():
            full = torch.full((nb * c, b), float("nan"), dtype=torch.float64)
            if rows is not None and ap is not None:
                ids = rows.segment_ids
                sel = np.flatnonzero((ids >= self.offsets[name]) & (ids < self.offsets[name] + c * nb))
                local = ids[sel] - self.offsets[name]  # class * bins + bin
                full[torch.from_numpy((local % nb) * c + local // nb)] = ap[torch.from_numpy(sel)]
            out[name] = full.reshape(nb, c, b).permute(2, 0, 1)
        return out


def _pack(rows: _RowSet, size: int) -> list[_Block]:
    first, end, out = rows.first, rows.end, []
    s0 = 0
    while s0 < first.size:
        a = int(first[s0])
        s1 = max(s0 + 1, int(np.searchsorted(end, a + size, side="right")))
        if a < rows.group_rows:
            s1 = min(s1, int(np.searchsorted(first, rows.group_rows)))
        z = int(end[s1 - 1])
        inside = (rows.tied >= a) & (rows.tied < z)
        out.append(
            _Block(
                start=a,
                end=z,
                images=torch.from_numpy(rows.image[a:z]),
                runs=None if a < rows.group_rows else torch.from_numpy(rows.run[a:z]),
                segments=[(int(x) - a, int(y) - a) for x, y in zip(first[s0:s1], end[s0:s1], strict=True)],
                tied=(torch.from_numpy(rows.tied[inside] - a), torch.from_numpy(rows.tied_to[inside] - a))
                if inside.any()
                else None,
                first=s0,
                stop=s1,
                last=torch.from_numpy(end[s0:s1] - 1 - a),
            )
        )
        s0 = s1
    return out
