"""The ideas tried for per-class AP on a COCO val-sized matrix (40,137 x 80 float32, continuous
scores, 10 % positives), each timed in the same run: what the sort costs in each form, and the
finiteness check in torch vs numpy. Kept to justify the choices in ``metrics/batched.py``.

Usage: python -m benchmarks.ap_ideas
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.harness import Figure, median_time
from csra_posthoc.heads.scoring import csra_score
from csra_posthoc.metrics import MultilabelEvaluator
from csra_posthoc.metrics.batched import parallel_map, row_counts, top_k_values, transposed


def packed_keys_ap(scores_cn: np.ndarray, labels_cn: np.ndarray) -> np.ndarray:
    """The issue's first idea: order-preserving float32 bits and the label packed in one int64 key,
    one sort, labels and tie runs read off the sorted keys."""
    bits = scores_cn.view(np.int32).astype(np.int64)
    bits = np.where(bits < 0, ~bits & 0x7FFFFFFF, bits | 0x80000000)  # order-preserving unsigned
    keys = (bits << 2) | (labels_cn + 1).astype(np.int64)  # label code 0 unknown, 1 negative, 2 positive
    keys.sort(axis=1)
    keys = keys[:, ::-1]
    code, value = keys & 3, keys >> 2
    tp, fp = np.cumsum(code == 2, axis=1), np.cumsum(code == 1, axis=1)
    end = np.ones_like(code, dtype=bool)
    end[:, :-1] = value[:, :-1] != value[:, 1:]
    # precision at each tie run's end, credited to the run's positives (one reverse pass)
    idx = np.where(end, np.arange(keys.shape[1]), keys.shape[1] - 1)
    idx = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(keys.shape[0])[:, None]
    precision = tp[rows, idx] / np.maximum(tp[rows, idx] + fp[rows, idx], 1)
    n_pos = tp[:, -1]
    return np.where(n_pos > 0, (precision * (code == 2)).sum(1) / np.maximum(n_pos, 1), np.nan)


def split_sort_ap(scores_cn: np.ndarray, labels_cn: np.ndarray) -> np.ndarray:
    """Tried second: gather each class's positives and negatives apart (one flat take), sort each,
    count negatives at or above each positive by ``searchsorted``."""
    ap = np.full(scores_cn.shape[0], np.nan)
    for k in range(scores_cn.shape[0]):
        pos, neg = np.sort(scores_cn[k][labels_cn[k] == 1]), np.sort(scores_cn[k][labels_cn[k] == 0])
        if pos.size:
            pos_ge = pos.size - np.searchsorted(pos, pos, side="left")
            neg_ge = neg.size - np.searchsorted(neg, pos, side="left")
            ap[k] = np.sum(pos_ge / (pos_ge + neg_ge)) / pos.size
    return ap


def masked_maxima_kth(scores_cn: np.ndarray, k: int) -> np.ndarray:
    """The top-k threshold as it was found before: k masked maxima over the whole matrix."""
    work, floor = scores_cn, scores_cn.dtype.type(-np.inf)
    kth = scores_cn.max(axis=0)
    for _ in range(k - 1):
        work = np.where(work < kth, work, floor)
        kth = work.max(axis=0)
    return kth


def sweep_rows(
    a: np.ndarray, b: np.ndarray, ev1: MultilabelEvaluator, ev2: MultilabelEvaluator, repeats: int
) -> tuple[float, float]:
    """Seconds a row for 8 sweep rows: side by side on 2 threads (one-block evaluator) vs one after
    another with each row's classes split in 2 blocks."""
    lams = [0.1 * i for i in range(1, 9)]
    side, _ = median_time(lambda: parallel_map(lambda lam: ev1.evaluate(csra_score(a, b, lam)), lams, 2), repeats)
    split, _ = median_time(lambda: [ev2.evaluate(csra_score(a, b, lam)) for lam in lams], repeats)
    return side / len(lams), split / len(lams)


def run(quick: bool = False, n: int = 40_137, c: int = 80) -> list[Figure]:
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(n, c, generator=g) < 0.1).long()
    scores = torch.randn(n, c, generator=g) + labels
    repeats = 3 if quick else 5
    ev1, ev2 = MultilabelEvaluator(labels, threads=1), MultilabelEvaluator(labels, threads=2)
    a = ev1.prepare(scores)
    lab_cn = np.ascontiguousarray(labels.numpy().T).astype(np.int8)
    t_split1, ap = median_time(lambda: ev1.average_precision(a), repeats)
    t_split2, _ = median_time(lambda: ev2.average_precision(a), repeats)
    t_packed, ap_packed = median_time(lambda: packed_keys_ap(a, lab_cn), repeats)
    t_split, ap_split = median_time(lambda: split_sort_ap(a, lab_cn), repeats)
    t_sort32, _ = median_time(lambda: np.sort(a, axis=1), repeats)
    t_torch_sort, _ = median_time(lambda: torch.sort(torch.from_numpy(a), dim=1), repeats)
    t_np_finite, _ = median_time(lambda: bool(np.isfinite(a).all()), repeats)
    t_torch_finite, _ = median_time(lambda: bool(torch.isfinite(torch.from_numpy(a)).all()), repeats)
    assert np.allclose(ap, ap_packed, atol=1e-9, equal_nan=True) and np.allclose(
        ap, ap_split, atol=1e-9, equal_nan=True
    )
    t_sort64, _ = median_time(lambda: np.sort(a.astype(np.float64), axis=1), repeats)
    rows = np.sort(a, axis=1)
    positives = [np.sort(a[k][lab_cn[k] == 1]) for k in range(c)]
    t_np_search, _ = median_time(lambda: [np.searchsorted(rows[k], positives[k]) for k in range(c)], repeats)
    width = max(p.size for p in positives)
    padded = torch.from_numpy(np.stack([np.pad(p, (0, width - p.size), constant_values=np.inf) for p in positives]))
    t_torch_search, _ = median_time(lambda: torch.searchsorted(torch.from_numpy(rows), padded), repeats)
    t_network, kth = median_time(lambda: top_k_values(a, 3)[-1], repeats)
    t_maxima, kth_before = median_time(lambda: masked_maxima_kth(a, 3), repeats)
    mask = a > 0.5
    t_row_counts, counts = median_time(lambda: row_counts(mask), repeats)
    t_axis_counts, counts_before = median_time(lambda: np.count_nonzero(mask, axis=1), repeats)
    t_blocks, _ = median_time(lambda: transposed(scores.numpy()), repeats)
    t_strided, _ = median_time(lambda: np.ascontiguousarray(scores.numpy().T), repeats)
    side, split = sweep_rows(a, ev1.prepare(torch.rand(n, c, generator=g)), ev1, ev2, 1 if quick else 3)
    assert (
        np.array_equal(counts, counts_before) and np.mean(kth == kth_before) > 0.999
    )  # equal where no tie is in a top 3
    lines = [
        (
            "AP, each class row sorted whole in float32, positives apart (kept)",
            f"1 thread {t_split1 * 1e3:.0f} ms, 2 threads {t_split2 * 1e3:.0f} ms",
        ),
        (
            "AP, packed int64 keys, one sort (dropped)",
            f"{t_packed * 1e3:.0f} ms = {t_packed / t_split1:.1f}x the kept one (1 thread)",
        ),
        (
            "AP, positives and negatives gathered and sorted apart (dropped)",
            f"{t_split * 1e3:.0f} ms = {t_split / t_split1:.1f}x the kept one (1 thread)",
        ),
        (
            "floor: np.sort of the (80, N) float32 matrix",
            f"{t_sort32 * 1e3:.0f} ms; torch.sort {t_torch_sort * 1e3:.0f} ms",
        ),
        (
            "finiteness check of one score matrix",
            f"numpy {t_np_finite * 1e3:.1f} ms, torch {t_torch_finite * 1e3:.1f} ms (kept per row: numpy)",
        ),
        (
            "AP via float64 keys, positives nudged one ulp up (dropped)",
            f"its sort alone {t_sort64 * 1e3:.0f} ms vs float32 {t_sort32 * 1e3:.0f} ms + searchsorted {t_np_search * 1e3:.0f} ms",
        ),
        (
            "positives' places in the sorted rows",
            f"numpy searchsorted per class, 1 thread {t_np_search * 1e3:.0f} ms (kept: a sweep row runs on one thread); torch.searchsorted batched over classes, {torch.get_num_threads()} threads {t_torch_search * 1e3:.0f} ms",
        ),
        (
            "each image's 3rd-highest score",
            f"insertion network over rows {t_network * 1e3:.1f} ms (kept); 3 masked maxima {t_maxima * 1e3:.1f} ms",
        ),
        (
            "per-class counts of a bool matrix",
            f"count_nonzero per row {t_row_counts * 1e3:.2f} ms (kept); count_nonzero(axis=1) {t_axis_counts * 1e3:.2f} ms",
        ),
        (
            "(N, C) -> (C, N) float32",
            f"256-row blocks {t_blocks * 1e3:.1f} ms (kept); np.ascontiguousarray(a.T) {t_strided * 1e3:.1f} ms",
        ),
        (
            "a sweep row, 2 threads",
            f"rows side by side {side * 1e3:.0f} ms (kept); one row at a time, classes split in 2 {split * 1e3:.0f} ms",
        ),
    ]
    for name, value in lines:
        print(f"  {name}: {value}", flush=True)
    return [Figure("ap_ideas", name, value) for name, value in lines]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    run()


if __name__ == "__main__":
    main()
