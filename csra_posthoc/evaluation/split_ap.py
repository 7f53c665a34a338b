"""Every object-size / clutter split's AP under bootstrap weights, from the sweep's own counts (docs/method.md §11).

:class:`SplitAP` is a :class:`~csra_posthoc.evaluation.bootstrap.WeightedAP` (same sorted orders, same
products, the plain AP bit for bit) that also returns each split's per-class AP. A split is a set
of (class, bin) *segments*; its rows are the positives in them, sorted by (class, split, bin, key
run). Under weights ``w`` a row is credited, as in the plain AP, with the precision at its run's end:

* size and instance bins keep ALL the class's negatives: precision = the bin's positives so far /
  (those + the negatives so far), the negatives being the plain counts' known minus positives;
* label-count groups keep only their images: precision = the group's positives so far / the
  group's known images so far. Those come from one more sparse product whose rows are the group
  rows (each known image of the group counted at the first group row at or after its place).

Rows whose image weighs 0 under a part's mask (the other half of a held-out row) change nothing,
so each mask gets its own row set: a held-out half costs half. The rows are credited by one
compiled pass (:func:`split_credits`, numba): no temporaries the size of the rows times the
resamples, which cost more in memory traffic than the arithmetic. Counts are float32 (integers,
exact below 2**24), credits and their sums float64.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .bootstrap import KeyRunPlaces, WeightedAP, _cat, _csr, resamples_per_chunk

# the sweep's chunks of resamples per compiled pass: each positive's two scattered reads (its image's
# weights, its run's negatives) then serve 4x the resamples (the splits cost 0.4x less at COCO size)
SPLIT_CHUNKS = 4


@dataclass(frozen=True)
class _RowSet:
    """The split rows of one mask, sorted by (segment, key run), and the group product."""

    image: np.ndarray  # (R,) each row's image
    run: np.ndarray  # (R,) its global key run
    tie_end: np.ndarray  # (R,) the last row of its tied run (positives of one segment in one key run)
    first: np.ndarray  # (S,) each present segment's first row
    end: np.ndarray  # (S,) and its end
    segment_ids: np.ndarray  # (S,) each present segment's id (class * all bins + split offset + bin)
    group_rows: int  # label-count group rows (each group segment's rows are consecutive)
    group_first: np.ndarray  # (S,) a group segment's first row among the group rows; -1: a bin segment
    arrivals: torch.Tensor  # (group rows, N) sparse: known images of the group counted at each group row


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
        n = self.num_images
        group_bins = np.where(labels.numpy() == 1, np.where(groups < 0, -1, groups)[:, None], -1)
        parts = {"groups": (group_bins, num_groups), **partitions}
        self.offsets: dict[str, int] = {}  # class-major segments: a class's rows read its runs' counts together
        total = 0
        for name, (_, nb) in parts.items():
            self.offsets[name], total = total, total + nb
        self.all_bins = total
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
            for name, (bins, _) in parts.items():
                b = bins[image[pos], places.k]
                inb = b >= 0
                members[0].append(image[pos][inb])
                members[1].append(at[pos][inb])
                members[2].append(places.k * self.all_bins + self.offsets[name] + b[inb])

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
            k_class[with_group] * self.all_bins + self.offsets["groups"] + k_group[with_group],
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
        local = segment % self.all_bins
        in_group = (local >= self.offsets["groups"]) & (local < self.offsets["groups"] + self.bins["groups"])
        group_index = np.flatnonzero(in_group)  # the group rows, in row order
        group_rows = int(group_index.size)
        # each arrival at the first row of its group segment at or after its key run
        stride = max(self.num_runs, 1) + 1
        keys = segment[group_index] * stride + run[group_index]
        at = np.searchsorted(keys, a_segment * stride + a_run, side="left")
        valid = at < group_rows
        valid[valid] = segment[group_index[at[valid]]] == a_segment[valid]
        arrivals = _csr(at[valid], a_image[valid], group_rows, self.num_images)
        present, first_row = np.unique(segment, return_index=True)
        end_row = np.r_[first_row[1:], segment.size].astype(np.int64)
        tied = np.r_[(segment[1:] == segment[:-1]) & (run[1:] == run[:-1]), False]  # next row: same run and segment
        tie_block = np.cumsum(np.r_[True, ~tied[:-1]]) - 1 if segment.size else segment
        run_end = np.flatnonzero(~tied)[tie_block] if segment.size else segment  # each row's tied run's last row
        compact = np.cumsum(in_group) - 1  # each group row's place among the group rows
        group_first = (
            np.where(in_group[first_row], compact[first_row], -1).astype(np.int64) if segment.size else segment
        )
        return _RowSet(
            image, run, run_end.astype(np.int64), first_row.astype(np.int64), end_row, present, group_rows,
            group_first, arrivals,
        )  # fmt: skip

    def evaluate(self, weights: torch.Tensor, mask: Hashable = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The plain AP ``(B, C)`` (``WeightedAP``'s, bit for bit) and ``{"groups": (B, G, C), name: (B, bins, C)}``,
        float64, NaN where a class (a split's bin) has no positive of weight > 0. ``mask``: the key
        (given at construction) of the mask ``weights`` are already multiplied by. The plain counts
        are taken in the sweep's own chunks of resamples; the compiled pass takes all of ``weights``
        at once (:data:`SPLIT_CHUNKS` of them), which spreads each positive's memory reads over more resamples."""
        b = weights.shape[0]
        if self.num_runs == 0:
            return torch.full((b, self.num_classes), float("nan"), dtype=torch.float64), self._shape(None, None, b)
        step = resamples_per_chunk(self.num_runs, self.num_images)  # the plain AP's own chunks
        plain, negatives = [], []
        for start in range(0, b, step):
            counts = self.counts(weights[start : start + step])
            negatives.append(counts.cum_known - counts.cum_positives)  # before ap_from spends the counts
            plain.append(self.ap_from(counts))
        cum_neg = negatives[0] if len(negatives) == 1 else torch.cat(negatives, dim=1)
        wt = weights.t().to(torch.float32).contiguous()
        rows = self._row_sets[mask]
        return torch.cat(plain), self._shape(rows, self._split_ap(rows, wt, cum_neg), b)

    def split_ap(self, weights: torch.Tensor, mask: Hashable = None) -> dict[str, torch.Tensor]:
        return self.evaluate(weights, mask)[1]

    def _split_ap(self, rows: _RowSet, wt: torch.Tensor, cum_neg: torch.Tensor) -> torch.Tensor | None:
        """``(segments, B)`` AP of the row set's present segments."""
        if not rows.first.size:
            return None
        b = wt.shape[1]
        group_known = (rows.arrivals @ wt).numpy() if rows.group_rows else np.zeros((0, b), np.float32)
        from .split_kernel import split_credits  # numba: loaded when a split is scored, not by every sweep

        num = np.empty((rows.first.size, b), np.float64)
        den = np.empty((rows.first.size, b), np.float64)
        split_credits(
            rows.first, rows.end, rows.tie_end, rows.image, rows.run, rows.group_first,
            wt.numpy(), cum_neg.numpy(), group_known, num, den,
        )  # fmt: skip
        ap = np.full_like(num, np.nan)
        np.divide(num, den, out=ap, where=den > 0)
        return torch.from_numpy(ap)

    def _shape(self, rows: _RowSet | None, ap: torch.Tensor | None, b: int) -> dict[str, torch.Tensor]:
        """``(segments, B)`` -> ``{name: (B, bins, C)}``, NaN for the segments without a row."""
        out: dict[str, torch.Tensor] = {}
        c = self.num_classes
        for name, nb in self.bins.items():
            full = torch.full((nb * c, b), float("nan"), dtype=torch.float64)
            if rows is not None and ap is not None:
                ids = rows.segment_ids
                local = ids % self.all_bins - self.offsets[name]  # the bin
                sel = np.flatnonzero((local >= 0) & (local < nb))
                full[torch.from_numpy(local[sel] * c + ids[sel] // self.all_bins)] = ap[torch.from_numpy(sel)]
            out[name] = full.reshape(nb, c, b).permute(2, 0, 1)
        return out
