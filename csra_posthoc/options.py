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
    transform: str = "auto"  # auto (centre crop for single-label data, else square resize) | square | crop
    verify_images: bool = False  # cache key hashes image contents, not size + mtime
    quiet: bool = False  # no progress bars or lines from extraction and the probe (the csra_posthoc logger still gets them)


@dataclass(frozen=True)
class DataOptions:
    """How a dataset is read (``--split``, ``--ann-file``, ``--max-images``, ...): everything here
    can change the samples or their labels, so the loaders record it for the cache key."""

    split: str | None = None  # None: the dataset's evaluation split (VOC2007 test, VOC2012 val, COCO val, ...)
    labels: str | Path | None = None  # csv: the label CSV; imagenet: a flat val's label file
    classes: list[str] | None = None  # VOC-layout / folder class names, in the head's order
    difficult: str = "ignore"  # VOC difficult objects: ignore | positive | negative
    ann_file: str | Path | None = None  # COCO / WIDER annotation JSON outside the standard layout
    image_dir: str | Path | None = None  # COCO / WIDER image folder outside the standard layout
    keep_empty: bool = False  # COCO: keep images with no annotation (all negative)
    skip_missing: bool = False  # go on without images the annotations list but the disk lacks
    max_images: int | None = None  # seeded stratified subset
    subset_seed: int = 0
