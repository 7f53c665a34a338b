"""The one resolver of a patched model's CSRA settings (``apply``, ``predict``, ``attention``).

A :class:`~csra_posthoc.options.CSRASettings` says what the caller gave: ``lam`` /
``temperature`` / ``heads``, or a sweep's results file and its row (``from_results`` + ``pick``).
:func:`resolve_settings` turns it into the settings a model is built with, from (in this order)
the results row, the patched file's own settings with the given ones on top, or the given ones
with the defaults (``default_lam``; the max). Its errors have one wording for the three commands.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..errors import CSRAError
from ..options import CSRASettings

if TYPE_CHECKING:
    from ..report.results_file import ResultsFile
    from .config import PatchedConfig


def resolve_settings(
    settings: CSRASettings,
    *,
    results: ResultsFile | None = None,
    config: PatchedConfig | None = None,
    default_lam: float | None = None,
) -> CSRASettings:
    """The settings a patched model is built with: ``lam`` set, and ``temperature`` (inf: the max) or ``heads``.

    - ``results`` (read from ``settings.from_results``): its row ``settings.pick``
      (:meth:`~csra_posthoc.report.results_file.ResultsFile.settings`);
    - ``config`` (a patched file's): its settings, with the given ones on top (``lam`` alone keeps
      the file's variant; a ``temperature`` or ``heads`` replaces it);
    - else the given ones; ``lam`` None is ``default_lam`` (None: ``lam`` is required).
    """
    if settings.from_results is not None:
        if results is None:
            raise ValueError("resolve_settings: from_results is set but its results were not passed")
        return results.settings(settings.pick)
    temperature, heads = settings.temperature, settings.heads
    lam = settings.lam
    if config is not None:
        if temperature is None and heads is None:
            heads, temperature = config.heads, config.temperature
        if lam is None:
            lam = config.lam
    if lam is None:
        lam = default_lam
    if lam is None:
        raise CSRAError("lam: give the residual weight `lam` (or `from_results`, a sweep's results file)", param="lam")
    return CSRASettings(
        lam, math.inf if temperature is None and heads is None else temperature, heads, pick=settings.pick
    )
