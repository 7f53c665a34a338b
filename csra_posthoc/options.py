"""How extraction runs: one object threaded through extract, the probe, the CLI and the demo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExtractOptions:
    """Settings of a forward pass over a dataset (``--img-size``, ``--batch-size``, ...)."""

    img_size: int | None = None  # square input side; None: the model's own input size
    batch_size: int = 32
    workers: int = 0  # DataLoader worker processes
    device: str = "auto"  # auto | cpu | cuda[:N]
    amp: bool = False  # backbone under autocast; the head always runs in fp32
    keep_maps: bool = False  # also cache full per-location scores
    cache_dir: str | Path | None = None  # None: $CSRA_POSTHOC_CACHE or the user cache dir
    use_cache: bool = True
    recompute: bool = False  # ignore (and overwrite) an existing cache entry
