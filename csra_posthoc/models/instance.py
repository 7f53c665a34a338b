"""Adapters for model *instances* (``patch(model)``) and architectures rebuilt from a saved config.

``load_model`` starts from a name and a weight source; a library user who already holds a timm or
torchvision ``nn.Module`` starts here. The family is detected the same way (the module the class
comes from), and the same builders decide whether the head can be applied per location.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch.nn as nn

from ..defaults import TORCHVISION_PREFIX
from ..errors import CSRAError, first_line
from .base import ModelAdapter, eval_mode
from .checkpoint import state_dict_fingerprint
from .factory import _create_timm, _create_torchvision
from .hf_models import (
    build_hf_adapter,
    build_hf_model,
    check_hf_architecture_kwargs,
    hf_architecture_kwargs,
    hf_instance_name,
)
from .identity import verify_identity
from .timm_models import build_timm_adapter
from .torchvision_models import build_torchvision_adapter


def model_family(model: nn.Module) -> str:
    """``timm``, ``torchvision`` or ``hf``, from where the model's class is defined; a clear refusal otherwise."""
    module = type(model).__module__
    if module.startswith("timm."):
        return "timm"
    if module.startswith("torchvision.models"):
        return "torchvision"
    if module.startswith("transformers."):
        return "hf"
    raise CSRAError(
        f"model {type(model).__name__} (from {module}) is not a timm or torchvision classifier; "
        "supported are timm and torchvision classifiers (torchvision.models) and Hugging Face transformers *ForImageClassification"
    )


def instance_name(model: nn.Module, name: str | None = None) -> str:
    """The name a saved patched model rebuilds its architecture from: timm's registered name, or
    ``torchvision:<arch>`` (pass ``name`` for torchvision: the class alone does not say resnet18 vs 50)."""
    if name:
        return name
    family = model_family(model)
    if family == "hf":
        return hf_instance_name(model)
    if family == "timm":
        cfg = getattr(model, "pretrained_cfg", None) or {}
        arch = cfg.get("architecture")
        if not arch:
            raise CSRAError(f"timm model {type(model).__name__} has no pretrained_cfg architecture; pass name=")
        return str(arch)
    return f"{TORCHVISION_PREFIX}{type(model).__name__.lower()}"


def adapter_for_module(
    model: nn.Module | ModelAdapter, name: str | None = None, weights: str = "module"
) -> ModelAdapter:
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
    elif family == "hf":
        adapter = build_hf_adapter(model, name, weights)
    else:
        arch = name[len(TORCHVISION_PREFIX) :] if name.startswith(TORCHVISION_PREFIX) else name
        adapter = build_torchvision_adapter(model, name, arch, weights)
    adapter.info.weights_fingerprint = state_dict_fingerprint(model.state_dict())
    with eval_mode(model):  # a model in train mode (timm.create_model's default) would move its batch-norm statistics
        verify_identity(adapter)
    return adapter


# constructor arguments a saved config may pass to timm.create_model, with their value checks
ARCHITECTURE_KWARGS = ("img_size", "dynamic_img_size")


def architecture_kwargs(model: nn.Module) -> dict:
    """Constructor arguments beyond the name that change a timm model's tensors (a ViT's input size):
    only keys of :data:`ARCHITECTURE_KWARGS` (what :func:`check_architecture_kwargs` accepts back)."""
    embed: Any = getattr(model, "patch_embed", None)
    if model_family(model) == "hf":  # rebuilt from its class and config, never from the folder
        return hf_architecture_kwargs(model)
    if model_family(model) != "timm" or getattr(embed, "img_size", None) is None:
        return {}
    kwargs: dict[str, Any] = {"img_size": [int(v) for v in embed.img_size]}
    if hasattr(model, "dynamic_img_size"):  # not every family takes it (PiT)
        kwargs["dynamic_img_size"] = bool(model.dynamic_img_size)
    return kwargs


def known_architecture(name: str) -> bool:
    """Whether ``name`` is a timm model, ``torchvision:<arch>`` or ``hf:...`` this version can build (no download).

    ``hf:`` names say where the model came from; it is rebuilt from ``model_kwargs`` (checked by
    :func:`check_architecture_kwargs`), which needs transformers only when it is rebuilt."""
    if name.startswith("hf:"):
        return True
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision.models as tvm

        return name[len(TORCHVISION_PREFIX) :] in tvm.list_models(module=tvm)
    import timm

    return bool(timm.is_model(name))


def check_architecture_kwargs(name: str, kwargs: Any) -> dict:
    """``kwargs`` for :func:`build_architecture`, or ``ValueError`` saying what is wrong: only the
    keys :func:`architecture_kwargs` writes, with their types (img_size: 2 positive ints up to
    4096, dynamic_img_size: bool), and none for torchvision models."""
    if name.startswith("hf:"):
        return check_hf_architecture_kwargs(name, kwargs)
    if kwargs is None or kwargs == {}:
        return {}
    if not isinstance(kwargs, dict):
        raise ValueError("is not an object")
    if name.startswith(TORCHVISION_PREFIX):
        raise ValueError("must be empty for a torchvision model")
    unknown = sorted(set(kwargs) - set(ARCHITECTURE_KWARGS))
    if unknown:
        raise ValueError(
            f"has unexpected key(s) {', '.join(map(repr, unknown))} (accepted: {', '.join(ARCHITECTURE_KWARGS)})"
        )
    size = kwargs.get("img_size")
    if "img_size" in kwargs and not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096 for v in size)
    ):
        raise ValueError("img_size is not a list of 2 integers in 1..4096")
    if "dynamic_img_size" in kwargs and not isinstance(kwargs["dynamic_img_size"], bool):
        raise ValueError("dynamic_img_size is not true or false")
    return dict(kwargs)


def build_architecture(name: str, num_classes: int, kwargs: dict | None = None, where: str | None = None) -> nn.Module:
    """An untrained ``name`` with ``num_classes`` outputs, to load saved weights into (no download).

    ``kwargs`` are checked by :func:`check_architecture_kwargs`; ``where`` (e.g. the file the
    config came from) names the culprit in the one-line refusals."""
    where = where or f"model {name}"
    try:
        kwargs = check_architecture_kwargs(name, kwargs)
    except ValueError as exc:
        raise CSRAError(f"{where}: model_kwargs {exc}", param="patched_file") from None
    if name.startswith("hf:"):
        model = build_hf_model(kwargs["hf_config"], kwargs["hf_class"], name, param="patched_file")
        labels = int(getattr(model.config, "num_labels", -1))
        if labels != num_classes:
            raise CSRAError(
                f"{where}: model_kwargs hf_config has {labels} labels, not {num_classes}", param="patched_file"
            )
        return model
    if name.startswith(TORCHVISION_PREFIX):
        return _create_torchvision(name[len(TORCHVISION_PREFIX) :], False, num_classes)
    if not kwargs:
        return _create_timm(name, False, num_classes)
    import timm

    _create_timm(name, False, 1) if not timm.is_model(name) else None  # the same one-line refusal
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except Exception as exc:  # kwargs this architecture does not take
        raise CSRAError(
            f"{where}: {name} cannot be built with model_kwargs {kwargs} ({type(exc).__name__}: {first_line(exc)})",
            param="patched_file",
        ) from None
