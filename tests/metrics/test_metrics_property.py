"""The fast (numpy) metric evaluation against straightforward per-class loops, scikit-learn and the
torch implementations, on seeded random matrices with ties, unknowns, all-negative and
all-positive classes and single rows, in float32 and float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, top_k_accuracy_score

from csra_posthoc.evaluation.grid import sweep
from csra_posthoc.extraction.statistics import ClassStatistics, StatisticsInfo
from csra_posthoc.heads.scoring import csra_score
from csra_posthoc.metrics import (
    MultilabelEvaluator,
    SinglelabelEvaluator,
    average_precision,
    multilabel_metrics,
    singlelabel_metrics,
    thresholded_metrics,
    torch_reference,
)
from csra_posthoc.metrics.batched import at_least_threshold
from csra_posthoc.metrics.thresholded import thresholded_metrics_torch

CASES = [
    (n, c, ties, unknown, dtype)
    for n, c in ((1, 4), (2, 3), (37, 5), (300, 12))
    for ties in (False, True)
    for unknown in (0.0, 0.2)
    for dtype in (torch.float32, torch.float64)
]


def random_case(
    n: int, c: int, ties: bool, unknown: float, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and labels in {1, 0, -1}; class 0 all negative, class 1 all positive (unknowns aside)."""
    g = torch.Generator().manual_seed(seed)
    scores = (
        torch.randint(-6, 6, (n, c), generator=g).to(dtype) / 2
        if ties
        else torch.randn(n, c, generator=g, dtype=dtype) * 3
    )
    labels = (torch.rand(n, c, generator=g) < 0.3).long()
    labels[:, 0] = 0
    labels[:, 1] = 1
    labels[torch.rand(n, c, generator=g) < unknown] = -1
    return scores, labels


def reference_ap(scores: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Per class: mean over positives of the precision at that positive's score as threshold."""
    out = []
    for k in range(scores.shape[1]):
        known = [(float(s), int(y)) for s, y in zip(scores[:, k], labels[:, k], strict=True) if y != -1]
        positives = [s for s, y in known if y == 1]
        if not positives:
            out.append(math.nan)
            continue
        precisions = []
        for s in positives:
            above = [y for t, y in known if t >= s]
            precisions.append(sum(above) / len(above))
        out.append(sum(precisions) / len(precisions))
    return out


def reference_thresholded(
    scores: torch.Tensor, labels: torch.Tensor, unknown: str, top_k: int | None = None
) -> dict[str, float]:
    """CP..OF1 by per-class counting loops (scores without ties at the top-k cut)."""
    n, c = scores.shape
    pred = [[1 / (1 + math.exp(-float(scores[i, k]))) >= 0.5 for k in range(c)] for i in range(n)]
    if top_k is not None:
        for i in range(n):
            ranked = sorted(range(c), key=lambda k: -float(scores[i, k]))[:top_k]
            pred[i] = [p and k in ranked for k, p in enumerate(pred[i])]
    tp, npred, ngt = [0] * c, [0] * c, [0] * c
    for i in range(n):
        for k in range(c):
            y = int(labels[i, k])
            tp[k] += pred[i][k] and y == 1
            npred[k] += pred[i][k] and (y != -1 or unknown == "negative")
            ngt[k] += y == 1
    classes = [k for k in range(c) if ngt[k]]
    cp = sum(tp[k] / max(npred[k], 1) for k in classes) / len(classes)
    cr = sum(tp[k] / ngt[k] for k in classes) / len(classes)
    op, or_ = sum(tp) / max(sum(npred), 1), sum(tp) / sum(ngt)

    def f1(p: float, r: float) -> float:
        return 2 * p * r / (p + r) if p + r else 0.0

    return {
        k: v * 100 for k, v in {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": or_, "OF1": f1(op, or_)}.items()
    }


@pytest.mark.parametrize("n,c,ties,unknown,dtype", CASES)
def test_average_precision_equals_reference_loop_and_sklearn(
    n: int, c: int, ties: bool, unknown: float, dtype: torch.dtype
) -> None:
    scores, labels = random_case(n, c, ties, unknown, dtype, seed=n * c)
    ours = average_precision(scores, labels).numpy()
    np.testing.assert_allclose(ours, reference_ap(scores, labels), atol=1e-12, rtol=0)
    np.testing.assert_allclose(
        ours, torch_reference.average_precision_torch(scores, labels).numpy(), atol=1e-12, rtol=0
    )
    for k in range(c):
        keep = labels[:, k] != -1
        y = labels[keep, k].numpy()
        if y.sum() and (y == 0).any():  # sklearn warns on single-class input
            assert ours[k] == pytest.approx(average_precision_score(y, scores[keep, k].numpy()), abs=1e-9)
    assert np.all(np.isnan(ours) == [not bool((labels[:, k] == 1).any()) for k in range(c)])


@pytest.mark.parametrize("n,c,ties,unknown,dtype", CASES)
@pytest.mark.parametrize("policy", ["exclude", "negative"])
def test_thresholded_metrics_equal_reference_loops_and_torch(
    n: int, c: int, ties: bool, unknown: float, dtype: torch.dtype, policy: str
) -> None:
    scores, labels = random_case(n, c, ties, unknown, dtype, seed=7 + n * c)
    for top_k in (None, 3):
        ours = thresholded_metrics(scores, labels, top_k=top_k, unknown=policy)  # type: ignore[arg-type]
        torch_ref = thresholded_metrics_torch(scores, labels, top_k=top_k, unknown=policy)  # type: ignore[arg-type]
        assert ours == pytest.approx(torch_ref, abs=1e-9)
        if not ties:
            assert ours == pytest.approx(reference_thresholded(scores, labels, policy, top_k), abs=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multilabel_metrics_equal_torch_implementation(dtype: torch.dtype) -> None:
    scores, labels = random_case(500, 30, True, 0.1, dtype, seed=3)
    ours, ap = multilabel_metrics(scores, labels)
    ref, ref_ap = torch_reference.multilabel_metrics(scores, labels)
    assert ours.keys() == ref.keys() and ours == pytest.approx(ref, abs=1e-9)
    torch.testing.assert_close(ap, ref_ap, atol=1e-12, rtol=0, equal_nan=True)


def test_threshold_predicate_is_the_float64_sigmoid_near_the_cut() -> None:
    values = np.array([-1e-20, -1e-17, -1e-15, 0.0, 1e-30, -3e-7, 3e-7, 2.0, -2.0], dtype=np.float64)
    for threshold in (0.5, 0.3, 0.9, 1e-7, 0.0, 1.0):
        expected = (torch.sigmoid(torch.from_numpy(values)) >= threshold).numpy()
        np.testing.assert_array_equal(at_least_threshold(values.reshape(3, 3), threshold).reshape(-1), expected)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("c", [3, 10])
def test_singlelabel_metrics_equal_torch_implementation_and_sklearn(ties: bool, c: int) -> None:
    g = torch.Generator().manual_seed(c)
    scores = torch.randint(0, 3, (400, c), generator=g).float() if ties else torch.randn(400, c, generator=g)
    targets = torch.randint(0, c, (400,), generator=g)
    targets[:5] = 0
    labels = torch.nn.functional.one_hot(targets, c)
    labels[:, c - 1] = 0  # a class without a sample
    labels[targets == c - 1, 0] = 1
    ours, per_class = singlelabel_metrics(scores, labels)
    ref, ref_per_class = torch_reference.singlelabel_metrics(scores, labels)
    assert ours == pytest.approx(ref, abs=1e-9)
    torch.testing.assert_close(per_class, ref_per_class, equal_nan=True)
    if not ties:
        y = labels.argmax(1).numpy()
        for k in (k for k in (1, 5) if k < c):  # sklearn warns when k >= C
            expected = top_k_accuracy_score(y, scores.numpy(), k=k, labels=list(range(c))) * 100
            assert ours[f"top{k}"] == pytest.approx(expected, abs=1e-9)


def test_evaluators_refuse_nan_and_inf() -> None:
    labels = torch.tensor([[1, 0], [0, 1]])
    for bad in (math.nan, math.inf, -math.inf):
        scores = torch.tensor([[bad, 0.0], [1.0, 2.0]])
        ev = MultilabelEvaluator(labels)
        with pytest.raises(ValueError, match="NaN or inf"):
            ev.evaluate(ev.prepare(scores))
        single = SinglelabelEvaluator(labels)
        with pytest.raises(ValueError, match="NaN or inf"):
            single.evaluate(single.prepare(scores))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("where", ["known", "unknown", "all-unknown class"])
def test_non_finite_scores_are_refused_next_to_unknown_labels(where: str, threads: int) -> None:
    """AP sorts unknowns below every score; a NaN / inf is refused wherever it is."""
    labels = torch.tensor([[1, -1, 0, -1], [0, 1, -1, -1], [1, 0, 1, -1], [0, -1, 1, -1]])
    clean = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    ours, ours_ap = MultilabelEvaluator(labels, threads=threads).evaluate(MultilabelEvaluator(labels).prepare(clean))
    ref, ref_ap = torch_reference.multilabel_metrics(clean, labels)
    assert ours == pytest.approx(ref, abs=1e-9)  # an all-unknown class is no error
    torch.testing.assert_close(ours_ap, ref_ap, atol=1e-12, rtol=0, equal_nan=True)
    row, col = {"known": (2, 1), "unknown": (0, 1), "all-unknown class": (1, 3)}[where]
    for bad in (math.nan, math.inf, -math.inf):
        scores = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
        scores[row, col] = bad
        ev = MultilabelEvaluator(labels, threads=threads)
        for run in (ev.evaluate, ev.thresholded):
            with pytest.raises(ValueError, match="NaN or inf"):
                run(ev.prepare(scores))
        with pytest.raises(ValueError, match="NaN or inf"):
            average_precision(scores, labels)


@pytest.mark.parametrize("lam", [0.01, 0.1, 0.3, 0.7, 1.0])
def test_csra_score_on_prepared_arrays_is_bitwise_the_torch_score(lam: float) -> None:
    g = torch.Generator().manual_seed(1)
    avg, att = torch.randn(64, 9, generator=g), torch.randn(64, 9, generator=g) * 5
    ev = MultilabelEvaluator(torch.zeros(64, 9, dtype=torch.long))
    fast = csra_score(ev.prepare(avg), ev.prepare(att), lam)
    np.testing.assert_array_equal(fast.T, csra_score(avg, att, lam).numpy())


def tiny_stats(single_label: bool) -> ClassStatistics:
    g = torch.Generator().manual_seed(2)
    n, c, temps = 120, 7, (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)
    if single_label:
        labels = torch.nn.functional.one_hot(torch.randint(0, c, (n,), generator=g), c).to(torch.int8)
    else:
        labels = (torch.rand(n, c, generator=g) < 0.3).to(torch.int8)
        labels[torch.rand(n, c, generator=g) < 0.05] = -1
    avg = torch.randint(-8, 8, (n, c), generator=g).float() / 4  # ties survive some lams
    mx = avg + torch.randint(0, 3, (n, c), generator=g).float() / 4
    attn = avg[..., None] + torch.randint(0, 3, (n, c, len(temps)), generator=g).float() / 4
    info = StatisticsInfo(model="tiny", task="single_label" if single_label else "multi_label")
    return ClassStatistics(
        ids=[str(i) for i in range(n)],
        classes=[f"c{i}" for i in range(c)],
        labels=labels,
        avg=avg,
        max=mx,
        attn=attn,
        temperatures=temps,
        logits=avg.clone(),
        info=info,
    )


@pytest.mark.parametrize("single_label", [False, True])
def test_sweep_rows_equal_the_torch_evaluation_of_each_score_matrix(single_label: bool) -> None:
    from csra_posthoc.evaluation.grid import row_scores

    stats = tiny_stats(single_label)
    result = sweep(stats, task=stats.info.task, fixed_lam=0.1, lams=(0.0, 0.02, 0.3, 1.0))
    reference = torch_reference.singlelabel_metrics if single_label else torch_reference.multilabel_metrics
    for row in result.rows:
        metrics, per_class = reference(row_scores(stats, row), stats.labels)
        assert row.metrics == pytest.approx(metrics, abs=1e-9)
        torch.testing.assert_close(row.per_class_ap, per_class, atol=1e-12, rtol=0, equal_nan=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("single_label", [False, True])
def test_sweep_on_cuda_equals_the_cpu_sweep(single_label: bool) -> None:
    stats = tiny_stats(single_label)
    cpu = sweep(stats, task=stats.info.task, fixed_lam=0.1, lams=(0.0, 0.1, 0.5))
    for name in ("labels", "avg", "max", "attn", "logits"):
        setattr(stats, name, getattr(stats, name).cuda())
    gpu = sweep(stats, task=stats.info.task, fixed_lam=0.1, lams=(0.0, 0.1, 0.5))
    for a, b in zip(cpu.rows, gpu.rows, strict=True):
        assert a.metrics == pytest.approx(b.metrics, abs=1e-6)


@pytest.mark.parametrize("single_label", [False, True])
def test_the_gpu_evaluation_path_runs_the_sweep_and_the_held_out_choice_on_cpu_too(
    single_label: bool, monkeypatch
) -> None:
    """The torch evaluator (what statistics on a GPU get) through the same loop as numpy's, here on
    CPU tensors: same rows, same held-out choice (the CUDA test above needs a GPU)."""
    import csra_posthoc.evaluation.grid as lam_sweep_mod
    from csra_posthoc.evaluation.selection import select_half
    from csra_posthoc.metrics.batched import TorchEvaluator

    stats = tiny_stats(single_label)
    lams = (0.0, 0.1, 0.5)
    numpy_rows = sweep(stats, task=stats.info.task, fixed_lam=0.1, lams=lams)
    numpy_half = select_half(stats, single_label=single_label, lams=lams)
    used: list[int] = []

    class Counting(TorchEvaluator):
        def evaluate(self, scores: torch.Tensor, check: bool = True) -> tuple[dict[str, float], torch.Tensor]:
            used.append(1)
            return super().evaluate(scores, check)

    monkeypatch.setattr(
        lam_sweep_mod,
        "stats_evaluator",
        lambda s, task, threads=None: Counting(s.labels, task == "single_label", s.info.unknown),
    )
    torch_rows = sweep(stats, task=stats.info.task, fixed_lam=0.1, lams=lams)
    torch_half = select_half(stats, single_label=single_label, lams=lams)
    evaluated = 1 + len(lam_sweep_mod.variants()) * 2  # the baseline, then every variant at 0.1 and 0.5
    assert len(used) == 3 * evaluated  # in the sweep and on each half
    for a, b in zip(numpy_rows.rows, torch_rows.rows, strict=True):
        assert a.metrics == pytest.approx(b.metrics, abs=1e-9)
    assert [(c.variant, c.lam) for c in numpy_half.choices] == [(c.variant, c.lam) for c in torch_half.choices]
    assert numpy_half.score == pytest.approx(torch_half.score, abs=1e-9)


@pytest.mark.parametrize("shift", [-2.5, -1.0, 0.0, 2.0])  # few to all images with more than 3 predicted labels
def test_top3_metrics_equal_torch_whether_few_or_most_images_are_crowded(shift: float) -> None:
    g = torch.Generator().manual_seed(11)
    scores = torch.randn(400, 20, generator=g) + shift
    scores[:50] = torch.randint(-2, 3, (50, 20), generator=g).float()  # ties at the cut too
    labels = (torch.rand(400, 20, generator=g) < 0.2).long()
    assert thresholded_metrics(scores, labels, top_k=3) == pytest.approx(
        thresholded_metrics_torch(scores, labels, top_k=3), abs=1e-9
    )


def test_tie_run_starts_match_a_brute_force_scan() -> None:
    from csra_posthoc.metrics.batched import tie_run_starts

    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50):
        row = np.sort(rng.integers(0, 4, n).astype(np.float32))
        assert tie_run_starts(row).tolist() == [min(j for j in range(n) if row[j] == row[i]) for i in range(n)]


def test_top_k_values_are_the_k_largest_with_multiplicity() -> None:
    from csra_posthoc.metrics.batched import top_k_values

    rng = np.random.default_rng(1)
    for rows, k in ((1, 3), (2, 3), (3, 3), (9, 3), (20, 5)):
        values = rng.integers(-3, 3, (rows, 40)).astype(np.float32)  # many ties
        expected = -np.sort(-values, axis=0)[:k]  # descending, repeats kept
        ours = np.stack(top_k_values(values, k))
        np.testing.assert_array_equal(ours[: min(rows, k)], expected[: min(rows, k)])
        assert np.isneginf(ours[rows:]).all()  # fewer rows than k: -inf pads


@pytest.mark.parametrize("ties", [False, True])
def test_evaluation_is_the_same_for_any_split_of_the_classes_across_threads(ties: bool) -> None:
    """Blocks of classes are evaluated apart and their top-k lists merged; blocks smaller than k
    (5 blocks of 12 classes), all-negative and all-positive classes and unknowns included."""
    scores, labels = random_case(300, 12, ties, 0.1, torch.float32, seed=5)
    results = []
    for threads in (1, 2, 3, 5):
        ev = MultilabelEvaluator(labels, threads=threads)
        assert len(ev.chunks) == threads
        results.append(ev.evaluate(ev.prepare(scores)))
    ref_metrics, ref_ap = torch_reference.multilabel_metrics(scores, labels)
    for metrics, ap in results:
        assert metrics == results[0][0] and metrics == pytest.approx(ref_metrics, abs=1e-9)
        torch.testing.assert_close(ap, ref_ap, atol=1e-12, rtol=0, equal_nan=True)


def test_parallel_map_keeps_order_and_runs_nested_calls_inline() -> None:
    import threading

    from csra_posthoc.metrics.batched import parallel_map

    def inner(i: int) -> list[tuple[int, int]]:  # a pool task that maps again: inline, not a deadlock
        return parallel_map(lambda j: (i, j), list(range(3)), 2)

    out: list = []
    runner = threading.Thread(target=lambda: out.append(parallel_map(inner, list(range(5)), 2)), daemon=True)
    runner.start()
    runner.join(timeout=20)
    assert out == [[[(i, j) for j in range(3)] for i in range(5)]]
