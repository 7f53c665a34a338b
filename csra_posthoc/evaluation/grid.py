"""Score every (variant, lam) from cached statistics and pick the best and the paper's fixed lam.

Variants (docs/method.md §1-2): ``max`` (avg + lam * max), ``softmax`` at temperature T
(avg + lam * a_T) and ``heads`` H (avg + lam * mean of a_T over the paper's H temperatures).
lam = 0 is the baseline, the same for every variant.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from ..defaults import DEFAULT_HEADS, DEFAULT_LAMS, DEFAULT_TEMPS, HEAD_COUNTS  # noqa: F401 (re-exported; defined torch-free for the CLI)
from ..errors import CSRAError
from ..extraction.statistics import ClassStatistics, Task
from ..heads.scoring import csra_score, multihead_attended
from ..metrics import Evaluator, evaluator
from ..metrics.batched import Pair, parallel_map
from ..options import SweepOptions
from .results import SweepResult, SweepRow, Variant

T = TypeVar("T")


def paper_fixed_lam(model_name: str) -> float:
    """The paper's "fixed lam": 0.02 for the ResNet family, 0.2 for every other model."""
    name = model_name.lower()
    return 0.02 if ("resnet" in name or "resnext" in name) else 0.2


def variants(temps: Sequence[float] = DEFAULT_TEMPS, heads: Sequence[int] = DEFAULT_HEADS) -> list[Variant]:
    """The max variant, one softmax variant per finite temperature, one multi-head per H."""
    out = [Variant("max")]
    out += [Variant("softmax", temperature=float(t)) for t in dict.fromkeys(temps) if not math.isinf(t)]
    out += [Variant("heads", heads=int(h)) for h in dict.fromkeys(heads)]
    return out


def attended_scores(stats: ClassStatistics, variant: Variant) -> torch.Tensor:
    """The attended term a for ``variant`` (mean over heads for multi-head)."""
    try:
        return multihead_attended([stats.attended(t) for t in variant.temperatures])
    except KeyError as exc:
        raise CSRAError(f"temps: {exc.args[0]}", param="temps") from None


def evaluate(
    stats: ClassStatistics, scores: torch.Tensor, task: Task, scorer: Evaluator | None = None
) -> tuple[dict[str, float], torch.Tensor]:
    """The dataset's metrics for one score matrix (multi-label or single-label); ``scorer`` (from
    :func:`stats_evaluator`) reuses the label work across a sweep's rows."""
    scorer = stats_evaluator(stats, task) if scorer is None else scorer
    return evaluate_prepared(stats, scorer, scorer.prepare(scores))


def stats_evaluator(stats: ClassStatistics, task: Task, threads: int | None = None) -> Evaluator:
    """The metric evaluator for ``stats``' labels: numpy on CPU, torch where the statistics are on a GPU
    (``threads``: see :func:`csra_posthoc.metrics.evaluator`)."""
    return evaluator(stats.labels, task == "single_label", stats.info.unknown, device=stats.avg.device, threads=threads)


def evaluate_prepared(
    stats: ClassStatistics, scorer: Evaluator, prepared: Any
) -> tuple[dict[str, float], torch.Tensor]:
    """:func:`evaluate` for scores already in ``scorer``'s layout; library errors become one CSRAError line."""
    try:
        return scorer.evaluate(prepared)
    except ValueError as exc:
        hint = "the cache may be damaged: re-run with recompute=True" if "NaN" in str(exc) else "check the labels"
        raise CSRAError(f"cannot score {stats.info.model} on {stats.info.dataset}: {exc}; {hint}") from None


def sweep(
    stats: ClassStatistics,
    *,
    task: Task,
    fixed_lam: float,
    lams: Sequence[float] = DEFAULT_LAMS,
    temps: Sequence[float] = DEFAULT_TEMPS,
    heads: Sequence[int] = DEFAULT_HEADS,
    progress: Callable[[int], None] | None = None,
) -> SweepResult:
    """Evaluate ``avg + lam * a`` for every variant and lam; lam = 0 is scored once as the baseline.

    Pure: the task (``stats.info.task`` for extracted statistics) and the fixed lam (the paper's is
    :func:`paper_fixed_lam` of the model) are the caller's, not read from ``stats``. ``progress(n)``
    is told of every n rows scored (:func:`grid_rows` in all)."""
    SweepOptions(lams=tuple(lams), temps=tuple(temps), heads=tuple(heads), fixed_lam=fixed_lam)  # checks each value
    primary = "top1" if task == "single_label" else "mAP"
    grid = sorted(set(float(lam) for lam in lams) | {0.0, float(fixed_lam)})

    scored = score_grid(stats, task, grid, temps, heads, evaluate_prepared, progress)
    base_metrics, base_ap = scored[0][2]
    baseline = SweepRow(Variant("max"), 0.0, base_metrics, base_ap)
    rows = [SweepRow(variant, lam, *found) for variant, lam, found in scored[1:]]

    def best_of(candidates: list[SweepRow]) -> SweepRow:
        return max(candidates, key=lambda r: (r.metrics[primary], -r.lam))

    max_rows = [r for r in rows if r.variant.kind == "max"]
    result = SweepResult(
        primary=primary,
        baseline=baseline,
        rows=rows,
        best=best_of(max_rows),
        fixed=next(r for r in max_rows if r.lam == float(fixed_lam)),
        best_variant=best_of(rows),
        excluded_classes=[]
        if primary == "top1"
        else [c for c, ap in zip(stats.classes, base_ap.tolist(), strict=True) if math.isnan(ap)],
    )
    if primary == "mAP":
        always = all_positive(stats.labels)
        if always.any():
            result.all_positive_classes = [c for c, a in zip(stats.classes, always.tolist(), strict=True) if a]
            result.mAP_without_all_positive = {
                name: map_without(row.per_class_ap, always)
                for name, row in (("baseline", baseline), ("best", result.best), ("fixed", result.fixed))
            }
    if stats.info.baseline_source == "patch_average":
        result.model_logits = evaluate(stats, stats.logits, task)[0]
    if stats.test_pool is not None:  # timm's test-time pooling: one more row, beside CSRA's
        result.test_pool = SweepRow(Variant("test-pool"), 0.0, *evaluate(stats, stats.test_pool, task))
    return result


def grid_rows(
    lams: Sequence[float], temps: Sequence[float], heads: Sequence[int], fixed_lam: float | None = None
) -> int:
    """How many score matrices a sweep evaluates: the baseline, then every variant at every lam > 0."""
    grid = {float(lam) for lam in lams} | ({float(fixed_lam)} if fixed_lam is not None else set())
    return 1 + len(variants(temps, heads)) * len(grid - {0.0})


def score_grid(
    stats: ClassStatistics,
    task: Task,
    lams: Sequence[float],
    temps: Sequence[float],
    heads: Sequence[int],
    score: Callable[[ClassStatistics, Evaluator, Any], T],
    progress: Callable[[int], None] | None = None,
) -> list[tuple[Variant, float, T]]:
    """``score(stats, evaluator, prepared scores)`` of the baseline (first, as ``("max", 0.0)``), then
    of every variant at every lam of ``lams`` in order (lam = 0 of each variant reuses the baseline's).

    The labels' work is done once; avg and each attended term go to the evaluator's layout once and
    are combined per lam by the one scoring function (elementwise: any layout or subset, same
    numbers). On CPU a variant's rows run side by side on torch's thread count, each on one thread.
    The sweep scores every metric this way, a held-out choice only the primary one."""
    grid = sorted({float(lam) for lam in lams} | {0.0})
    threads = torch.get_num_threads() if stats.avg.device.type == "cpu" else 1
    scorer = stats_evaluator(stats, task, threads=1)
    tick = progress or (lambda n: None)
    avg = scorer.prepare(stats.avg)
    base = score(stats, scorer, avg)
    tick(1)
    out: list[tuple[Variant, float, T]] = [(Variant("max"), 0.0, base)]
    for variant in variants(temps, heads):
        try:  # per lam, the evaluator asks csra_score for the scores it needs (all, or candidates)
            pair = scorer.pair(avg, scorer.prepare(attended_scores(stats, variant)), grid, csra_score)
        except ValueError as exc:
            raise CSRAError(
                f"cannot score {stats.info.model} on {stats.info.dataset}: {exc}; the cache may be damaged: re-run with recompute=True"
            ) from None

        def score_row(lam: float, pair: Pair = pair) -> T:
            result = score(stats, scorer, pair.at(lam))
            tick(1)
            return result

        found = iter(parallel_map(score_row, [lam for lam in grid if lam != 0.0], threads))
        out += [(variant, lam, base if lam == 0.0 else next(found)) for lam in grid]
    return out


def all_positive(labels: torch.Tensor) -> torch.Tensor:
    """``(C,)`` True for classes with a positive and no negative (unknowns aside): their AP is 100
    whatever the scores, so they lift mAP without measuring anything."""
    return (labels == 1).any(0) & ~(labels == 0).any(0)


def map_without(per_class_ap: torch.Tensor, drop: torch.Tensor) -> float | None:
    """mAP in percent over classes with an AP that are not in ``drop`` (None when none is left)."""
    keep = ~torch.isnan(per_class_ap) & ~drop
    return float(per_class_ap[keep].mean() * 100.0) if keep.any() else None


def row_scores(stats: ClassStatistics, row: SweepRow) -> torch.Tensor:
    """The score matrix ``(N, C)`` behind a row (for --save-scores and patched models)."""
    return csra_score(stats.avg, attended_scores(stats, row.variant), row.lam)
