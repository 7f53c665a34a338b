"""Per-image, per-class statistics: everything the sweep and a patched model's scoring need."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch

from ..heads.scoring import attention_pool
from ..metrics.thresholded import UnknownPolicy

Task = Literal["multi_label", "single_label"]  # mAP (multi-label) or top-1 (single-label) as the primary metric
BaselineSource = Literal["model_logits", "patch_average"]  # adapters.base: what lam = 0 reproduces


@dataclass
class CacheInfo:
    """Where the statistics came from in this run (reported; never written into the cache file)."""

    path: str | None = None  # None: not cached
    reused: bool = False  # True: read from the cache, no forward pass
    images_key: str | None = None  # "size+mtime" or "content hash" (extraction.images_key_name)


@dataclass
class StatisticsInfo:
    """What the statistics describe: model, data, transform and the identity check, typed.

    Written into the cache file as JSON (:meth:`to_json`) and read back by :meth:`from_json`;
    the sweep and the report read these fields, never a free-form dict.
    """

    model: str = ""
    dataset: str = ""
    split: str = ""
    task: Task = "multi_label"
    unknown: UnknownPolicy = "exclude"
    baseline_source: BaselineSource = "model_logits"
    location_head: str = "linear"  # nonlinear: avg is the model's logits, max / attn from the whole head per location
    key: str | None = None  # the cache key the statistics were extracted under
    family: str | None = None
    weights: str | None = None  # "checkpoint:<path>", "pretrained", "random-init", ...
    weights_fingerprint: str | None = None
    head_fingerprint: str | None = None
    head: str | None = None  # human-readable: the model's own classifier, or the probe
    notes: list[str] = field(default_factory=list)  # the adapter's notes
    identity_max_abs_diff: float | None = None  # max |mean_k s - logits|
    identity_max_rel_diff: float | None = None  # the same over the logits' scale
    transform: dict[str, Any] = field(default_factory=dict)  # data.transforms.transform_description
    data_options: dict[str, Any] = field(default_factory=dict)  # the loader's options (LabelledImages.options)
    data_notes: list[str] = field(default_factory=list)
    amp: bool = False
    amp_dtype: str | None = None  # fp16 | bf16 when amp (options.amp_precision); None without
    device: str | None = None
    grid: list[int] | None = None  # (h, w) of the per-location scores: ClassStatistics.argmax indexes it row-major
    test_pool: dict[str, Any] | None = (
        None  # {"train_size", "window": [h, w]} when the test-pool statistic was extracted (extraction.test_pool)
    )
    cache_dtype: str = (
        "float32"  # float16: the statistics were rounded to fp16 (cache --cache-dtype); in memory always float32
    )
    cache: CacheInfo = field(default_factory=CacheInfo)  # this run only: not part of to_json

    @property
    def single_label(self) -> bool:
        return self.task == "single_label"

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field but ``cache`` (which describes this run, not the file)."""
        out = asdict(self)
        del out["cache"]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StatisticsInfo:
        """The inverse of :meth:`to_json`; unknown keys are ignored, missing ones take their defaults."""
        known = {f.name for f in fields(cls)} - {"cache"}
        values = {k: v for k, v in data.items() if k in known}
        if "task" not in data and "single_label" in data:  # written before ``task`` existed
            values["task"] = "single_label" if data["single_label"] else "multi_label"
        return cls(**values)


@dataclass
class ClassStatistics:
    """Sufficient statistics of the per-location scores for one model on one split.

    ``avg`` and ``max`` ``(N, C)``; ``attn`` ``(N, C, T)`` softmax-weighted averages at
    ``temperatures``; ``logits`` the model's own output (equal to ``avg`` where the identity
    holds); ``maps`` the full per-location scores ``(N, C, K)`` when kept. ``argmax``
    ``(N, C)`` int32: the flat location ``row * w + col`` (``info.grid`` = (h, w)) where each class's
    per-location score ``s_k`` peaks, the max term's location: one per image and class, the same
    for every lam (None for statistics built without it).
    """

    ids: list[str]
    classes: list[str]
    labels: torch.Tensor
    avg: torch.Tensor
    max: torch.Tensor
    attn: torch.Tensor
    temperatures: tuple[float, ...]
    logits: torch.Tensor
    maps: torch.Tensor | None = None
    argmax: torch.Tensor | None = None
    test_pool: torch.Tensor | None = (
        None  # (N, C) timm's test-time pooling score (extraction.test_pool), when extracted
    )
    info: StatisticsInfo = field(default_factory=StatisticsInfo)

    @property
    def num_images(self) -> int:
        return len(self.ids)

    def attended(self, temperature: float) -> torch.Tensor:
        """``a_T`` per image and class: the max for T = inf, else the cached softmax average."""
        if math.isinf(temperature):
            return self.max
        if temperature in self.temperatures:
            return self.attn[..., self.temperatures.index(temperature)]
        if self.maps is not None:
            return attention_pool(self.maps.float(), temperature)
        cached = ", ".join(f"{t:g}" for t in self.temperatures)
        raise KeyError(
            f"temperature {temperature:g} is not cached (cached: {cached}, inf); extract with keep_maps=True"
        )
