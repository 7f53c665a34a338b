"""How images are decoded for extraction: the decode policy, and a uint8 input pipeline.

Policies (``decode=``):

- ``"pil"`` (default): PIL decodes the full image, then the model's transform resizes it. Exactly
  the transform :func:`~csra_posthoc.data.transforms.build_transform` defines.
- ``"draft"``: PIL's JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale in the DCT domain (cheaper
  decode, and a cheaper resize from fewer pixels), but only while both sides stay >= what the
  transform resizes to, so the transform's own resize still does the final step. It applies only
  when the target is at most half the source on both sides (COCO's 640x480 at 224 px: yes, at
  448 px: no) and only to JPEGs. It changes the pixels slightly, so it enters the cache key
  (:func:`decode_key`).

The uint8 pipeline (:func:`pil_stage`, :func:`to_uint8_hwc`, :func:`normalize_batch`) splits the
transform in two: workers resize and hand back uint8 ``(H, W, 3)`` tensors (a quarter of the bytes
of float32 through the workers' shared memory), and the main process converts and normalises the
whole batch at once, with the same float32 operations as ``ToTensor`` + ``Normalize`` (so the
values are bit-equal), optionally straight into ``channels_last`` without a copy.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import CSRAError
from .base import load_rgb

if TYPE_CHECKING:  # the policy and key functions are imported by the warm (cached) path: no torch / PIL there
    import torch
    from PIL import Image

DecodePolicy = Literal["pil", "draft"]
DECODE_POLICIES: tuple[str, ...] = ("pil", "draft")


def check_decode(decode: str) -> DecodePolicy:
    """The policy, or one line naming the choices."""
    if decode not in DECODE_POLICIES:
        raise CSRAError(f"decode {decode!r}: choose {' or '.join(DECODE_POLICIES)}", param="decode")
    return decode  # type: ignore[return-value]


def draft_request(desc: dict[str, Any]) -> tuple[int, int] | None:
    """The ``(w, h)`` a JPEG may be drafted down to (never below) for the transform ``desc``.

    Square resize: ``(size, size)``. Centre crop: the short side must stay >= the resize target,
    so ``(resize, resize)``. Other crop modes (timm's squash / border): None (no draft).
    PIL then picks the largest scale 1/s (s in 8, 4, 2) with ``W // w >= s`` and ``H // h >= s``.
    """
    if desc.get("kind") == "square-resize":
        return (int(desc["size"]), int(desc["size"]))
    if desc.get("kind") == "center-crop" and desc.get("crop_mode", "center") == "center":
        return (int(desc["resize"]), int(desc["resize"]))
    return None


def image_loader(decode: str, desc: dict[str, Any]) -> Callable[[Path], Image.Image]:
    """What :class:`~csra_posthoc.data.base.ImageDataset` decodes whole images with (picklable,
    so DataLoader workers get it)."""

    policy = check_decode(decode)
    request = draft_request(desc) if policy == "draft" else None
    return partial(load_rgb, draft=request) if request is not None else load_rgb


def decode_key(decode: str, desc: dict[str, Any]) -> dict[str, Any]:
    """``desc`` as the cache key should see it: unchanged for ``"pil"`` (old keys stay valid),
    with ``"decode": "draft"`` when draft mode can change the pixels."""
    if check_decode(decode) == "pil" or draft_request(desc) is None:
        return desc
    return {**desc, "decode": decode}


# --- uint8 pipeline -------------------------------------------------------------------------


def pil_stage(desc: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor] | None:
    """The transform's geometric part (resize, crop) ending in a uint8 ``(H, W, 3)`` tensor, or
    None for crop modes built by timm (use the full transform there)."""
    import torchvision.transforms as T
    from torchvision.transforms import InterpolationMode

    interpolation = InterpolationMode(desc["interpolation"])
    size = desc["size"]
    if desc["kind"] == "square-resize":
        steps = [T.Resize((size, size), interpolation=interpolation)]
    elif desc.get("crop_mode", "center") == "center":
        steps = [T.Resize(desc["resize"], interpolation=interpolation), T.CenterCrop(size)]
    else:
        return None
    return T.Compose([*steps, to_uint8_hwc])


def to_uint8_hwc(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 ``(H, W, 3)`` tensor (one copy, out of PIL's buffer)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8, copy=True))


def normalize_batch(
    batch: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool = False
) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> normalised float32 ``(B, 3, H, W)``, bit-equal to ``ToTensor`` +
    ``Normalize`` per image. ``channels_last``: keep the HWC layout (no copy) as a channels_last
    tensor, else one contiguous NCHW copy. Runs on ``batch``'s device (after a uint8 transfer)."""
    import torch

    x = batch.permute(0, 3, 1, 2)
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    x = x.to(torch.float32).div_(255)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)
