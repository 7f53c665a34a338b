"""The one resolver of a patched model's CSRA settings (``apply``, ``predict``, ``attention``).

A :class:`~csra_posthoc.options.CSRASettings` says what the caller gave: ``lam`` /
``temperature`` / ``heads``, or a sweep's results file and its row (``from_results`` + ``pick``).
:func:`resolve_settings` turns it into the settings a model is built with, from (in this order)
the results row, the patched file's own settings with the given ones on top, or the given ones
with the defaults (``default_lam``; the max). Its errors have one wording for the three commands.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import CSRAError
from ..options import CSRASettings, check_variant


def row_settings(results: dict[str, Any], pick: str, path: str | Path) -> CSRASettings:
    """The settings of the results file's row ``pick``; a bad row is one line naming the file and the row."""
    settings = CSRASettings(pick=pick)  # checks pick
    row = results.get(settings.row)
    where = f"from_results {path}: its {settings.row!r} row"
    if isinstance(row, dict) and "lam" in row:  # a bad value names the file and its row, not `lam` (the user gave none)
        value = row["lam"]
        try:
            lam = float(value)
        except (TypeError, ValueError):
            lam = math.nan
        if isinstance(value, bool) or not math.isfinite(lam) or lam < 0:
            raise CSRAError(f"{where} has lam {value!r}: it must be a finite number >= 0", param="from_results")
    try:
        if not isinstance(row, dict):
            raise TypeError(f"{type(row).__name__} is not a row")
        kind = row.get("variant")
        if kind == "heads":
            temperature, heads = None, int(row["heads"])
        elif kind == "softmax":
            temperature, heads = float(row["temperature"]), None
        elif kind == "max":
            temperature, heads = math.inf, None
        else:
            raise ValueError(f"unknown variant {kind!r}")
        lam = float(row["lam"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CSRAError(f"{where} is unreadable ({exc})", param="from_results") from None
    try:
        check_variant(temperature, heads)
    except CSRAError as exc:
        raise CSRAError(f"{where} has an unusable variant ({exc})", param="from_results") from None
    return CSRASettings(lam, temperature, heads, pick=pick)


def resolve_settings(
    settings: CSRASettings,
    *,
    results: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    default_lam: float | None = None,
) -> CSRASettings:
    """The settings a patched model is built with: ``lam`` set, and ``temperature`` (inf: the max) or ``heads``.

    - ``results`` (read from ``settings.from_results``): its row ``settings.pick``;
    - ``config`` (a patched file's): its settings, with the given ones on top (``lam`` alone keeps
      the file's variant; a ``temperature`` or ``heads`` replaces it);
    - else the given ones; ``lam`` None is ``default_lam`` (None: ``lam`` is required).
    """
    if settings.from_results is not None:
        if results is None:
            raise ValueError("resolve_settings: from_results is set but its results were not passed")
        return row_settings(results, settings.pick, settings.from_results)
    temperature, heads = settings.temperature, settings.heads
    lam = settings.lam
    if config is not None:
        if temperature is None and heads is None:
            heads = config.get("heads")
            temperature = None if heads is not None else _config_float(config["temperatures"][0])
        if lam is None:
            lam = float(config["lam"])
    if lam is None:
        lam = default_lam
    if lam is None:
        raise CSRAError("lam: give the residual weight `lam` (or `from_results`, a sweep's results file)", param="lam")
    return CSRASettings(lam, math.inf if temperature is None and heads is None else temperature, heads, pick=settings.pick)


def _config_float(t: float | str) -> float:
    return math.inf if t == "inf" else float(t)
