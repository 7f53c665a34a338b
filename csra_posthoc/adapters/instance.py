"""Adapters for model *instances* (``patch(model)``) and architectures rebuilt from a saved config.

``load_model`` starts from a name and a weight source; a library user who already holds a timm or
torchvision ``nn.Module`` starts here. The family is detected the same way (the module the class
comes from), and the same builders decide whether the head can be applied per location.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch.nn as nn

from ..checkpoint import state_dict_fingerprint
from ..errors import CSRAError
from .base import ModelAdapter
from .factory import TORCHVISION_PREFIX, _create_timm, _create_torchvision
from .identity import verify_identity
from .timm_models import build_timm_adapter
from .torchvision_models import build_torchvision_adapter


def model_family(model: nn.Module) -> str:
    """``timm`` or ``torchvision``, from where the model's class is defined; a clear refusal otherwise."""
    module = type(model).__module__
    if module.startswith("timm."):
        return "timm"
    if module.startswith("torchvision.models"):
        return "torchvision"
    raise CSRAError(
        f"model {type(model).__name__} (from {module}) is not a timm or torchvision classifier; "
        "supported are timm CNNs / ConvNeXt / ViTs and torchvision resnet*, mobilenet_v2, efficientnet_*, vit_*"
    )


def instance_name(model: nn.Module, name: str | None = None) -> str:
    """The name a saved patched model rebuilds its architecture from: timm's registered name, or
    ``torchvision:<arch>`` (pass ``name`` for torchvision: the class alone does not say resnet18 vs 50)."""
    if name:
        return name
    if model_family(model) == "timm":
        cfg = getattr(model, "pretrained_cfg", None) or {}
        arch = cfg.get("architecture")
        if not arch:
            raise CSRAError(f"timm model {type(model).__name__} has no pretrained_cfg architecture; pass name=")
        return str(arch)
    return f"{TORCHVISION_PREFIX}{type(model).__name__.lower()}"


def adapter_for_module(model: nn.Module | ModelAdapter, name: str | None = None, weights: str = "module") -> ModelAdapter:
    """Wrap a timm / torchvision instance (or pass an adapter through); refuses unsupported heads."""
    if isinstance(model, ModelAdapter):
        return model
    family = model_family(model)
    name = instance_name(model, name)
    if family == "timm":
        adapter = build_timm_adapter(model, name, weights)
        embed = getattr(model, "patch_embed", None)
        fixed = getattr(embed, "img_size", None)
        if fixed and not getattr(model, "dynamic_img_size", False):  # a ViT built for one input size
            adapter.data_config = replace(adapter.data_config, input_size=int(fixed[0]))
    else:
        arch = name[len(TORCHVISION_PREFIX) :] if name.startswith(TORCHVISION_PREFIX) else name
        adapter = build_torchvision_adapter(model, name, arch, weights)
    adapter.info.weights_fingerprint = state_dict_fingerprint(model.state_dict())
    verify_identity(adapter)
    return adapter


def architecture_kwargs(model: nn.Module) -> dict:
    """Constructor arguments beyond the name that change a timm model's tensors (a ViT's input size)."""
    embed: Any = getattr(model, "patch_embed", None)
    if model_family(model) != "timm" or getattr(embed, "img_size", None) is None:
        return {}
    return {"img_size": [int(v) for v in embed.img_size], "dynamic_img_size": bool(getattr(model, "dynamic_img_size", False))}


def build_architecture(name: str, num_classes: int, kwargs: dict | None = None) -> nn.Module:
    """An untrained ``name`` with ``num_classes`` outputs, to load saved weights into (no download)."""
    if name.startswith(TORCHVISION_PREFIX):
        return _create_torchvision(name[len(TORCHVISION_PREFIX) :], False, num_classes)
    if not kwargs:
        return _create_timm(name, False, num_classes)
    import timm

    _create_timm(name, False, 1) if not timm.is_model(name) else None  # the same one-line refusal
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
