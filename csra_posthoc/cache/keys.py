"""The statistics cache key, computed from plain values by one function.

Both a full run (:func:`csra_posthoc.extraction.run.extraction_key`, from a built model) and a warm
run (:mod:`csra_posthoc.cache.resolution`, from a memo of that build) call :func:`statistics_key`, so
the two can never disagree about which cache file holds a run's statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .store import cache_key


def statistics_key(
    *,
    model: str,
    weights_fingerprint: str,
    head_fingerprint: str,
    baseline_source: str,
    transform: dict[str, Any],
    dataset: str,
    split: str,
    data_fingerprint: str,
    temperatures: Sequence[float],
    amp: bool | str,
    keep_maps: bool,
    cache_dtype: str = "float32",
    location_head: str = "linear",
    test_pool: int | None = None,
) -> str:
    """Hash of everything that changes the cached statistics. ``amp``: False, or the autocast dtype
    (fp16 / bf16). ``transform``: with the decode policy folded in
    (:func:`csra_posthoc.data.decode.decode_key`). ``cache_dtype`` enters only when it is not
    float32, so keys written before it existed stay valid; ``location_head`` likewise only when
    non-linear (those statistics are another quantity: never read as a linear head's); ``test_pool``
    (the test-time pooling statistic's training size) only when that statistic is extracted."""

    dtype = {} if cache_dtype == "float32" else {"cache_dtype": cache_dtype}
    nonlinear = {} if location_head == "linear" else {"location_head": location_head}
    pool = (
        {} if test_pool is None else {"test_pool_train_size": test_pool}
    )  # timm's test-time pooling (extraction.test_pool): its training size
    return cache_key(
        {
            **dtype,
            **nonlinear,
            **pool,
            "model": model,
            "weights": weights_fingerprint,
            "head": head_fingerprint,
            "baseline_source": baseline_source,
            "transform": transform,
            "dataset": dataset,
            "split": split,
            "data": data_fingerprint,
            "temperatures": list(temperatures),
            "amp": amp,
            "keep_maps": keep_maps,
        }
    )
