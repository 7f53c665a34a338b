"""Evaluation transforms, with a plain-dict description that goes into the cache key."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torchvision.transforms as T
from torchvision.transforms import InterpolationMode

from ..adapters.base import DataConfig


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
