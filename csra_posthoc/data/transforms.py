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
from typing import TYPE_CHECKING, Any, Literal

from ..defaults import TRANSFORM_CHOICES
from ..errors import CSRAError

if TYPE_CHECKING:
    import torch

    from ..models.base import DataConfig

TransformChoice = Literal["auto", "square", "crop"]
# torchvision's InterpolationMode values, so a description never needs torchvision to be written
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")


def _interpolation(cfg: DataConfig) -> str:
    if cfg.interpolation not in INTERPOLATIONS:
        raise CSRAError(f"model data config: interpolation {cfg.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
    return cfg.interpolation


def transform_description(cfg: DataConfig, img_size: int | None, single_label: bool, choice: TransformChoice = "auto") -> dict[str, Any]:
    """The plain-dict description of :func:`eval_transform`'s choice (cache key and report), torch-free."""
    if choice not in TRANSFORM_CHOICES:
        raise CSRAError(f"transform {choice}: choose auto, square or crop", param="transform")
    size = int(img_size or cfg.input_size)
    if choice == "crop" or (choice == "auto" and single_label):
        return {
            "kind": "center-crop",
            "size": size,
            "resize": math.floor(size / cfg.crop_pct + 1e-6),
            "crop_pct": cfg.crop_pct,
            "crop_mode": cfg.crop_mode,
            "interpolation": _interpolation(cfg),
            "mean": list(cfg.mean),
            "std": list(cfg.std),
        }
    return {
        "kind": "square-resize",
        "size": size,
        "interpolation": _interpolation(cfg),
        "mean": list(cfg.mean),
        "std": list(cfg.std),
    }


def build_transform(desc: dict[str, Any]) -> Callable[..., torch.Tensor]:
    """The transform a description stands for, built once per description (transforms hold no
    state, so the probe's pass and the statistics' pass of one run share one)."""
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
        return T.Compose([T.Resize((size, size), interpolation=interpolation), T.ToTensor(), T.Normalize(desc["mean"], desc["std"])])
    if desc["crop_mode"] == "center":
        return T.Compose([T.Resize(desc["resize"], interpolation=interpolation), T.CenterCrop(size), T.ToTensor(), T.Normalize(desc["mean"], desc["std"])])
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


def describe_transform(desc: dict[str, Any]) -> str:
    """One line for the report."""
    if "size" not in desc:
        return "not recorded"
    if desc.get("kind") == "center-crop":
        return (
            f"resize short side to {desc['resize']}, centre crop {desc['size']} (crop_pct {desc['crop_pct']:g}, "
            f"{desc['interpolation']}): the model's eval transform"
        )
    return f"resize to {desc['size']}x{desc['size']} ({desc['interpolation']}), no crop: the multi-label protocol"
