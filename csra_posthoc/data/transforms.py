"""Evaluation transforms, with a plain-dict description that goes into the cache key and the report.

Two protocols: multi-label benchmarks resize the whole image (or person box) to a square, so no
object is cropped away; single-label ImageNet-style evaluation uses the model's own eval
transform (resize the short side to ``size / crop_pct``, centre crop ``size``), built by timm.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

import torch
import torchvision.transforms as T
from torchvision.transforms import InterpolationMode

from ..adapters.base import DataConfig
from ..errors import CSRAError

TransformChoice = Literal["auto", "square", "crop"]
TRANSFORM_CHOICES = ("auto", "square", "crop")


def square_resize_transform(cfg: DataConfig, img_size: int | None = None) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
    """Multi-label protocol: resize the whole image to a square (no crop), normalise like the model."""
    size = int(img_size or cfg.input_size)
    interpolation = InterpolationMode(cfg.interpolation)
    tf = T.Compose([T.Resize((size, size), interpolation=interpolation), T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])
    desc = {
        "kind": "square-resize",
        "size": size,
        "interpolation": interpolation.value,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
    }
    return tf, desc


def center_crop_transform(cfg: DataConfig, img_size: int | None = None) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
    """The model's ImageNet eval transform: short side to ``floor(size / crop_pct)``, centre crop
    ``size``, normalise (what timm's ``create_transform`` builds for crop_mode 'center'; spelt out
    here so torchvision's 256 -> 224 is not lost to float rounding of 224 / 0.875)."""
    size = int(img_size or cfg.input_size)
    resize = math.floor(size / cfg.crop_pct + 1e-6)
    interpolation = InterpolationMode(cfg.interpolation)
    if cfg.crop_mode == "center":
        tf = T.Compose([T.Resize(resize, interpolation=interpolation), T.CenterCrop(size), T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])
    else:  # 'squash' / 'border': timm's own implementation
        from timm.data import create_transform

        tf = create_transform(
            size, interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std, crop_pct=cfg.crop_pct, crop_mode=cfg.crop_mode
        )
    desc = {
        "kind": "center-crop",
        "size": size,
        "resize": resize,
        "crop_pct": cfg.crop_pct,
        "crop_mode": cfg.crop_mode,
        "interpolation": interpolation.value,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
    }
    return tf, desc


def eval_transform(
    cfg: DataConfig, img_size: int | None, single_label: bool, choice: TransformChoice = "auto"
) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
    """``auto``: centre crop for single-label datasets, square resize for multi-label ones."""
    if choice not in TRANSFORM_CHOICES:
        raise CSRAError(f"--transform {choice}: choose auto, square or crop")
    if choice == "crop" or (choice == "auto" and single_label):
        return center_crop_transform(cfg, img_size)
    return square_resize_transform(cfg, img_size)


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
