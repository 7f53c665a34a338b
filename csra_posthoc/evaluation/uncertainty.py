"""Is the gain real? The held-out row and the bootstrap intervals of a sweep (docs/uncertainty.md).

Attaches to a :class:`~csra_posthoc.evaluation.grid.SweepResult` the held-out figure (lam chosen on one
half of the images, or on another split, and scored where it was not chosen; see
:mod:`csra_posthoc.evaluation.selection`) and the paired-bootstrap 95 % intervals of the best, fixed and
held-out deltas (:mod:`csra_posthoc.evaluation.bootstrap`), so that the table, the JSON and ``compare``
all read them from the result.
"""

from __future__ import annotations

from ..errors import CSRAError
from ..extraction.statistics import ClassStatistics
from ..options import SweepOptions
from ..progress import ProgressBar, no_bar
from .bootstrap import lam_band
from .grid import grid_rows, row_scores
from .resampling import resampled_deltas
from .results import Interval, Splits, SweepResult
from .selection import select_half, select_on_split


def assess(
    result: SweepResult,
    stats: ClassStatistics,
    grid: SweepOptions,
    select_stats: ClassStatistics | None = None,
    bar: ProgressBar = no_bar,
    splits: Splits | None = None,
) -> SweepResult:
    """Fill ``result.held_out`` (``grid.select_on``: ``half``, or the split ``select_stats`` was
    extracted from) and ``result.bootstrap`` (``grid.bootstrap`` resamples, seeded by ``grid.seed``).
    The held-out choice uses the sweep's own grid, so it picks among the same settings. Halves too
    small to score leave no held-out row and a note (``result.uncertainty_notes``) instead of an error.
    ``bar``: how each stage shows its progress (:func:`csra_posthoc.progress.console_bar`). ``splits``
    (multi-label): also ``result.size_splits``, Δ by object size and clutter from the same resamples."""
    single = result.primary == "top1"
    kwargs = {"single_label": single, "lams": grid.lams, "temps": grid.temps, "heads": grid.heads}
    rows = grid_rows(grid.lams, grid.temps, grid.heads)
    if grid.select_on == "half":
        try:
            with bar("held-out λ: choose on each half", 2 * rows, "row") as advance:
                result.held_out = select_half(stats, seed=grid.seed, progress=advance, **kwargs)  # type: ignore[arg-type]
        except CSRAError as exc:  # a handful of images, or a half without a positive: the rest of the report stands
            result.uncertainty_notes.append(f"no held-out row: {exc}")
    elif grid.select_on is not None:
        if select_stats is None:
            raise ValueError(f"select_on {grid.select_on}: the statistics of that split are needed")
        with bar(f"held-out λ: choose on {grid.select_on}", rows, "row") as advance:
            result.held_out = select_on_split(select_stats, stats, grid.select_on, progress=advance, **kwargs)  # type: ignore[arg-type]
    if grid.bootstrap is None and splits is None:
        return result
    variants = {"best": row_scores(stats, result.best), "fixed": row_scores(stats, result.fixed)}
    if result.held_out is not None:
        variants["held_out"] = result.held_out.parts  # type: ignore[assignment]
    if (
        result.test_pool is not None and stats.test_pool is not None
    ):  # timm's test-time pooling row (extraction.test_pool)
        variants["test_pool"] = stats.test_pool
    what = "bootstrap intervals" + (" and size / clutter splits" if splits is not None else "")
    with bar(what, grid.bootstrap or 1, "resample") as advance:
        # one resampling for the mAP / top-1 intervals, every class's and every split's (evaluation.resampling)
        found = resampled_deltas(
            stats.avg,
            variants,
            stats.labels,
            stats.classes,
            single_label=single,
            n=grid.bootstrap,
            seed=grid.seed,
            splits=splits,
            progress=advance,
        )
    result.size_splits = found.splits
    if grid.bootstrap is not None:
        result.bootstrap, result.per_class_delta = found.intervals, found.per_class
        result.bootstrap_n, result.bootstrap_seed = grid.bootstrap, grid.seed
    return result


BAND_RESAMPLES = 200  # the curve's band costs one bootstrap per lam: capped, it is a picture (docs/uncertainty.md)


def max_band(
    result: SweepResult, stats: ClassStatistics, grid: SweepOptions, bar: ProgressBar = no_bar
) -> dict[float, Interval] | None:
    """The lam curve's shaded band: the bootstrap interval of the max variant's delta at each lam,
    from at most :data:`BAND_RESAMPLES` resamples (None without ``grid.bootstrap``)."""
    if grid.bootstrap is None:
        return None
    lams = sorted({r.lam for r in result.rows if r.variant.kind == "max"})
    n = min(grid.bootstrap, BAND_RESAMPLES)
    with bar("plot band", n, "resample") as advance:
        return lam_band(
            stats.avg,
            stats.max,
            stats.labels,
            lams,
            single_label=result.primary == "top1",
            n=n,
            seed=grid.seed,
            progress=advance,
        )
