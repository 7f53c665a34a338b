"""Every argument checked before any model or data work: a bad flag costs milliseconds, not a forward pass.

One entry point, :func:`validate_sweep_args`, called first by :func:`csra_posthoc.api.run_sweep` and
:func:`csra_posthoc.demo.run_demo`. Messages name the flag and the fix in one line (CLI convention);
the sweep and extraction keep their own checks for library callers that skip this.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from .defaults import CACHED_TEMPERATURES, HEAD_CHOICES, HEAD_COUNTS, MAX_IMG_SIZE, METRIC_NAMES, MIN_IMG_SIZE, TRANSFORM_CHOICES
from .errors import CSRAError
from .options import ExtractOptions


def check_output_path(path: str | Path | None, flag: str) -> None:
    """Refuse an output file that cannot be written, before the work that produces it starts.

    The file is written atomically (temporary file beside it, then rename), so what matters is the
    folder: the nearest existing ancestor must be a writable folder, and the target not a folder.
    """
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise CSRAError(f"{flag} {target}: is a directory; give a file name inside it, e.g. {target / 'results.json'}")
    ancestor = target.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CSRAError(f"{flag} {target}: {ancestor} is a file, not a folder; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CSRAError(f"{flag} {target}: folder {ancestor} is not writable; choose another path")


def check_img_size(img_size: int | None) -> None:
    """``--img-size``: bounded, so 100000 is a clear line and not an out-of-memory kill."""
    if img_size is not None and not MIN_IMG_SIZE <= img_size <= MAX_IMG_SIZE:
        raise CSRAError(f"--img-size {img_size}: must be between {MIN_IMG_SIZE} and {MAX_IMG_SIZE} pixels")


def check_weight_source(checkpoint: str | Path | None, pretrained: bool, random_init: bool) -> None:
    if sum([checkpoint is not None, pretrained, random_init]) != 1:
        raise CSRAError("--model needs exactly one weight source: --checkpoint PATH, --pretrained or --random-init")
    if checkpoint is not None:
        path = Path(checkpoint)
        if path.is_dir():
            raise CSRAError(f"--checkpoint {path}: is a directory; pass the weights file (.pth, .pt or .safetensors) in it")
        if not path.is_file():
            raise CSRAError(f"--checkpoint {path}: no such file")


def check_grid(lams: Sequence[float], temps: Sequence[float], heads: Sequence[int], keep_maps: bool) -> None:
    """``--lams``, ``--temps`` and ``--heads``; a temperature the cache does not hold needs ``--keep-maps``."""
    if not lams:
        raise CSRAError("--lams: give at least one value")
    bad = [lam for lam in lams if not math.isfinite(lam) or lam < 0]
    if bad:
        raise CSRAError(f"--lams {bad[0]:g}: every lam must be a finite number >= 0")
    for t in temps:
        if math.isnan(t) or t <= 0:
            raise CSRAError(f"--temps {t:g}: temperatures must be > 0 (inf for the max)")
    uncached = [t for t in temps if not math.isinf(t) and t not in CACHED_TEMPERATURES]
    if uncached and not keep_maps:
        cached = ", ".join(f"{t:g}" for t in CACHED_TEMPERATURES)
        raise CSRAError(f"--temps {uncached[0]:g}: not cached (cached: {cached}, inf); add --keep-maps to keep full maps for any temperature")
    for h in heads:
        if h not in HEAD_COUNTS:
            raise CSRAError(f"--heads {h}: the paper's head counts are {', '.join(map(str, HEAD_COUNTS))}")


def check_metrics(metrics: Sequence[str]) -> None:
    for m in metrics:
        base = m[: -len("_top3")] if m.endswith("_top3") else m
        if base not in METRIC_NAMES:
            raise CSRAError(f"--metrics {m}: unknown; choose from {', '.join(METRIC_NAMES)} (add _top3 for top-3)")


def check_extract_options(options: ExtractOptions) -> None:
    """``--img-size``, ``--batch-size``, ``--workers``, ``--transform`` and ``--device`` (cuda must exist)."""
    check_img_size(options.img_size)
    if options.batch_size < 1:
        raise CSRAError(f"--batch-size {options.batch_size}: must be >= 1")
    if options.workers < 0:
        raise CSRAError(f"--workers {options.workers}: must be >= 0")
    if options.transform not in TRANSFORM_CHOICES:
        raise CSRAError(f"--transform {options.transform}: choose auto, square or crop")
    from .extraction import resolve_device  # torch (no model): the one place that knows the devices

    resolve_device(options.device)


def validate_sweep_args(
    *,
    checkpoint: str | Path | None,
    pretrained: bool,
    random_init: bool,
    head: str,
    probe_c: float,
    save_head: str | Path | None,
    options: ExtractOptions,
    lams: Sequence[float],
    temps: Sequence[float],
    heads: Sequence[int],
    metrics: Sequence[str],
    out: str | Path | None,
    save_scores_to: str | Path | None,
) -> None:
    """Check every argument of a sweep; raises :class:`CSRAError` (one line) on the first bad one."""
    check_weight_source(checkpoint, pretrained, random_init)
    if head not in HEAD_CHOICES:
        raise CSRAError(f"--head {head}: choose model (the model's own classifier) or probe")
    if not (math.isfinite(probe_c) and probe_c > 0):
        raise CSRAError(f"--probe-c {probe_c:g}: must be a finite number > 0")
    if save_head is not None and head != "probe":
        raise CSRAError("--save-head needs --head probe (the model's own head is already in its weights)")
    check_grid(lams, temps, heads, options.keep_maps)
    check_metrics(metrics)
    check_extract_options(options)
    check_output_path(out, "--out")
    check_output_path(save_scores_to, "--save-scores")
    check_output_path(save_head, "--save-head")
