"""Evaluation transforms, with a plain-dict description that goes into the cache key and the report.

Two protocols: multi-label benchmarks resize the whole image (or person box) to a square, so no
object is cropped away; single-label ImageNet-style evaluation uses the model's own eval
transform (resize the short side to ``size / crop_pct``, centre crop ``size``), built by timm.

The description is computed by :func:`transform_description` without torchvision, so a run whose
statistics are cached can rebuild its cache key without importing it; :func:`eval_transform`
builds the transform from the same description.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..defaults import TRANSFORM_CHOICES, TransformChoice
from ..errors import CSRAError

if TYPE_CHECKING:
    import torch

    from ..models.base import DataConfig

# torchvision's InterpolationMode values, so a description never needs torchvision to be written
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
KINDS = ("center-crop", "square-resize")
CROP_MODES = ("center", "squash", "border")


def _interpolation(cfg: DataConfig) -> str:
    if cfg.interpolation not in INTERPOLATIONS:
        raise CSRAError(
            f"model data config: interpolation {cfg.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
        )
    return cfg.interpolation


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


@dataclass(frozen=True)
class TransformSpec:
    """An evaluation transform, as the cache key, the results JSON (``"transform"``) and a patched
    model's config (``"preprocessing"``) record it: ``center-crop`` (short side to ``resize``,
    centre crop ``size``; timm's crop modes) or ``square-resize`` (whole image to ``size`` x ``size``),
    then normalised with ``mean`` / ``std``.

    :meth:`from_json` is the one reader of such a dict (every field checked; unknown fields kept in
    ``extra`` and written back by :meth:`to_json`). :data:`VERSION` is the description's format
    version; it is not written into the dict, which is hashed into the statistics' cache key
    (a format change bumps this and the cache key version together)."""

    VERSION: ClassVar[int] = 1

    kind: str
    size: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None  # center-crop only
    crop_pct: float | None = None  # center-crop only
    crop_mode: str | None = None  # center-crop only
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, data: Any) -> TransformSpec:
        """The description ``data`` stands for; ``ValueError`` saying which field is wrong otherwise."""
        if isinstance(data, TransformSpec):
            return data
        if not isinstance(data, dict):
            raise ValueError("not an object")
        kind = data.get("kind")
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} is not center-crop or square-resize")
        if not _is_count(data.get("size")):
            raise ValueError("size is not a positive integer")
        if data.get("interpolation") not in INTERPOLATIONS:
            raise ValueError(f"interpolation {data.get('interpolation')!r} is not one of {', '.join(INTERPOLATIONS)}")
        for key in ("mean", "std"):
            v = data.get(key)
            if not isinstance(v, list) or len(v) != 3 or not all(_is_number(x) and math.isfinite(x) for x in v):
                raise ValueError(f"{key} is not a list of 3 finite numbers")
        if not all(x > 0 for x in data["std"]):
            raise ValueError("std has a value <= 0")
        known = {"kind", "size", "interpolation", "mean", "std"}
        resize: Any = None
        crop_pct: Any = None
        crop_mode: Any = None
        if kind == "center-crop":
            known |= {"resize", "crop_pct", "crop_mode"}
            resize, crop_pct, crop_mode = data.get("resize"), data.get("crop_pct"), data.get("crop_mode")
            if not _is_count(resize):
                raise ValueError("resize is not a positive integer")
            if not (_is_number(crop_pct) and math.isfinite(crop_pct) and crop_pct > 0):
                raise ValueError("crop_pct is not a number > 0")
            if crop_mode not in CROP_MODES:
                raise ValueError(f"crop_mode {crop_mode!r} is not center, squash or border")
        return cls(
            kind=kind,
            size=data["size"],
            interpolation=data["interpolation"],
            mean=tuple(float(x) for x in data["mean"]),
            std=tuple(float(x) for x in data["std"]),
            resize=resize,
            crop_pct=None if crop_pct is None else float(crop_pct),
            crop_mode=crop_mode,
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        """The plain dict (the key order :func:`transform_description` always wrote)."""
        out: dict[str, Any] = {"kind": self.kind, "size": self.size}
        if self.kind == "center-crop":
            out.update(resize=self.resize, crop_pct=self.crop_pct, crop_mode=self.crop_mode)
        out.update(interpolation=self.interpolation, mean=list(self.mean), std=list(self.std))
        out.update(self.extra)
        return out

    def describe(self) -> str:
        """One line for the report."""
        if self.kind == "center-crop":
            return f"resize short side to {self.resize}, centre crop {self.size} (crop_pct {self.crop_pct:g}, {self.interpolation}): the model's eval transform"
        return f"resize to {self.size}x{self.size} ({self.interpolation}), no crop: the multi-label protocol"


def transform_spec(
    cfg: DataConfig, img_size: int | None, single_label: bool, choice: TransformChoice = "auto"
) -> TransformSpec:
    """:func:`eval_transform`'s choice as a :class:`TransformSpec`, torch-free."""
    if choice not in TRANSFORM_CHOICES:
        raise CSRAError(
            f"transform {choice}: choose {', '.join(TRANSFORM_CHOICES[:-1])} or {TRANSFORM_CHOICES[-1]}",
            param="transform",
        )
    size = int(img_size or cfg.input_size)
    mean, std = tuple(float(x) for x in cfg.mean), tuple(float(x) for x in cfg.std)
    if choice == "crop" or (choice == "auto" and single_label):
        return TransformSpec(
            "center-crop",
            size,
            _interpolation(cfg),
            mean,
            std,
            resize=math.floor(size / cfg.crop_pct + 1e-6),
            crop_pct=cfg.crop_pct,
            crop_mode=cfg.crop_mode,
        )
    return TransformSpec("square-resize", size, _interpolation(cfg), mean, std)


def transform_description(
    cfg: DataConfig, img_size: int | None, single_label: bool, choice: TransformChoice = "auto"
) -> dict[str, Any]:
    """The plain-dict description of :func:`eval_transform`'s choice (cache key and report), torch-free."""
    return transform_spec(cfg, img_size, single_label, choice).to_json()


def build_transform(desc: TransformSpec | dict[str, Any]) -> Callable[..., torch.Tensor]:
    """The transform a description stands for, built once per description (transforms hold no
    state, so the probe's pass and the statistics' pass of one run share one)."""
    if isinstance(desc, TransformSpec):
        desc = desc.to_json()
    return _built(json.dumps(desc, sort_keys=True))


@functools.lru_cache(maxsize=16)
def _built(key: str) -> Callable[..., torch.Tensor]:
    """The transform behind a description's JSON.

    Centre crop: short side to ``floor(size / crop_pct)``, centre crop ``size``, normalise (what
    timm's ``create_transform`` builds for crop_mode 'center'; spelt out here so torchvision's
    256 -> 224 is not lost to float rounding of 224 / 0.875). Other crop modes use timm's own.
    """
    import torchvision.transforms as T
    from torchvision.transforms import InterpolationMode

    desc = json.loads(key)
    interpolation = InterpolationMode(desc["interpolation"])
    size = desc["size"]
    if desc["kind"] == "square-resize":
        return T.Compose(
            [T.Resize((size, size), interpolation=interpolation), T.ToTensor(), T.Normalize(desc["mean"], desc["std"])]
        )
    if desc["crop_mode"] == "center":
        return T.Compose(
            [
                T.Resize(desc["resize"], interpolation=interpolation),
                T.CenterCrop(size),
                T.ToTensor(),
                T.Normalize(desc["mean"], desc["std"]),
            ]
        )
    from timm.data import create_transform  # 'squash' / 'border': timm's own implementation

    return create_transform(
        size, interpolation=desc["interpolation"], mean=tuple(desc["mean"]), std=tuple(desc["std"]),
        crop_pct=desc["crop_pct"], crop_mode=desc["crop_mode"],
    )  # fmt: skip


def eval_transform(
    cfg: DataConfig, img_size: int | None, single_label: bool, choice: TransformChoice = "auto"
) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
    """``auto``: centre crop for single-label datasets, square resize for multi-label ones."""
    desc = transform_description(cfg, img_size, single_label, choice)
    return build_transform(desc), desc


def describe_transform(desc: TransformSpec | dict[str, Any] | None) -> str:
    """One line for the report (``not recorded`` for a missing or unreadable description)."""
    try:
        return TransformSpec.from_json(desc).describe()
    except ValueError:
        return "not recorded"
