"""Checks that span option objects or need torch, run before any model or data work.

Each option object checks its own fields when built (:mod:`csra_posthoc.options`); what is left
here needs two of them at once (an uncached temperature needs ``keep_maps``), the file system
for a probe's head file, or torch (does the cuda device exist?). Messages name the Python
parameter (``param=``); the CLI names the flag instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..cache.store import resolve_cache_dir
from ..defaults import CACHED_TEMPERATURES
from ..errors import CSRAError
from ..extraction.runtime import resolve_device
from ..options import (  # noqa: F401 (re-exported: apply and predict check single values with these)
    AnalysisOptions,
    DataOptions,
    ExtractOptions,
    ModelSource,
    OutputOptions,
    ProbeOptions,
    SweepOptions,
    check_img_size,
    check_weight_source,
)  # fmt: skip
from ..outputs import RESULTS_SUFFIXES, check_outputs


def check_temps_cached(temps: Sequence[float], keep_maps: bool) -> None:
    """A temperature the cache does not hold needs the full maps (``keep_maps``)."""
    uncached = [t for t in temps if not math.isinf(t) and t not in CACHED_TEMPERATURES]
    if uncached and not keep_maps:
        cached = ", ".join(f"{t:g}" for t in CACHED_TEMPERATURES)
        raise CSRAError(
            f"temps {uncached[0]:g}: not cached (cached: {cached}, inf); add keep_maps=True to keep full maps for any temperature",
            param="temps",
        )


def check_device(options: ExtractOptions) -> None:
    """``device``: cuda must exist (needs torch, so not in ExtractOptions itself)."""

    resolve_device(options.device)


def validate_sweep_args(
    options: ExtractOptions,
    sweep: SweepOptions,
    probe: ProbeOptions | None,
    outputs: OutputOptions,
    *,
    source: ModelSource | None = None,
    data: DataOptions | None = None,
    data_dir: str | Path | None = None,
    analysis: AnalysisOptions | None = None,
) -> None:
    """The checks of a sweep that no single option object can make; raises :class:`CSRAError` (one line).

    Outputs (README: Outputs): no output is an input of the run (``source``'s checkpoint, ``data``'s
    label / annotation files, the probe's training CSV, cache files) or another output."""

    check_temps_cached(sweep.temps, options.keep_maps)
    check_device(options)
    inputs: dict[str, str | Path | None] = {"data_dir": data_dir}
    if source is not None:
        inputs["checkpoint"] = source.checkpoint
    if data is not None:
        inputs.update(labels=data.labels, ann_file=data.ann_file, image_dir=data.image_dir)
    if probe is not None:
        inputs["train_labels"] = probe.train_labels
    if analysis is not None:
        inputs["real_labels"] = analysis.real_labels
    cache_dir = resolve_cache_dir(options.cache_dir) if options.use_cache else None
    check_outputs(
        sweep_output_paths(probe, outputs, analysis), inputs, suffixes={"out": RESULTS_SUFFIXES}, cache_dir=cache_dir
    )


def sweep_output_paths(
    probe: ProbeOptions | None, outputs: OutputOptions, analysis: AnalysisOptions | None = None
) -> dict[str, str | Path | None]:
    """Every file a sweep writes, by parameter name."""
    return {
        **outputs.paths(),
        "save_head": probe.save_head if probe is not None else None,
        "plot_classes": analysis.plot_classes if analysis is not None else None,
    }
