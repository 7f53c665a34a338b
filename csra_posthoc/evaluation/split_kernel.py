"""The compiled pass of :class:`~csra_posthoc.evaluation.split_ap.SplitAP` (numba), in a module of its
own so that a sweep without size / clutter splits never imports numba (about 0.4 s)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def split_credits(
    first: np.ndarray,
    end: np.ndarray,
    tie_end: np.ndarray,
    image: np.ndarray,
    run: np.ndarray,
    group_first: np.ndarray,
    weights: np.ndarray,
    cum_neg: np.ndarray,
    group_known: np.ndarray,
    num: np.ndarray,
    den: np.ndarray,
) -> None:  # pragma: no cover - compiled; its numbers are tested against the plain AP
    """Per segment and resample: ``num`` the sum of its positives' weight times the precision at
    their run's end, ``den`` its positives' weight (AP = num / den). One pass over the rows, in
    score order within each segment, the resamples side by side (independent, so they vectorise);
    tied positives share the counts at their run's end."""
    resamples = weights.shape[1]
    positives = np.empty(resamples)  # the segment's positives so far
    known = np.empty(resamples)  # group rows: the group's known images so far
    total = np.empty(resamples)
    tp = np.empty(resamples)
    for s in range(first.size):
        group = group_first[s] >= 0
        positives[:] = 0.0
        known[:] = 0.0
        total[:] = 0.0
        r = first[s]
        while r < end[s]:
            last = tie_end[r]
            tp[:] = 0.0
            for j in range(r, last + 1):
                i = image[j]
                for b in range(resamples):
                    tp[b] += weights[i, b]
                if group:
                    for b in range(resamples):
                        known[b] += group_known[group_first[s] + j - first[s], b]
            k = run[r]
            for b in range(resamples):
                positives[b] += tp[b]
                seen = known[b] if group else cum_neg[k, b] + positives[b]
                total[b] += tp[b] * positives[b] / max(seen, 1.0)  # 0 where tp is 0
            r = last + 1
        num[s] = total
        den[s] = positives
