"""timm adapters: CNNs with a pool -> (norm) -> linear head, and Vision Transformers."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import CSRAError
from ..heads.location import LocationHead
from .base import AdapterInfo, BaselineSource, DataConfig, ModelAdapter, tokens_to_grid


class TimmCNNAdapter(ModelAdapter):
    """timm CNN: ``forward_features`` is the pre-pool map, ``forward_head`` the model's head."""

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        return self.wrapped.forward_features(x)

    def feature_map(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def model_logits(self, raw: torch.Tensor) -> torch.Tensor:
        return self.wrapped.forward_head(raw)


class TimmViTAdapter(ModelAdapter):
    """timm VisionTransformer: tokens after the final norm, prefix tokens dropped, patches on a grid."""

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        return self.wrapped.forward_features(x)

    def feature_map(self, raw: torch.Tensor) -> torch.Tensor:
        grid = getattr(getattr(self.model, "patch_embed", None), "grid_size", None)
        return tokens_to_grid(raw[:, self.wrapped.num_prefix_tokens :], tuple(grid) if grid else None)

    def model_logits(self, raw: torch.Tensor) -> torch.Tensor:
        return self.wrapped.forward_head(raw)


def timm_data_config(model: nn.Module) -> DataConfig:
    import timm.data

    cfg = timm.data.resolve_model_data_config(model)
    return DataConfig(
        input_size=int(cfg["input_size"][-1]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        crop_mode=str(cfg.get("crop_mode", "center")),
    )


def _pool_type(pool: nn.Module | None) -> str | None:
    return getattr(pool, "pool_type", None) if pool is not None else None


def _linear(module: Any, name: str) -> nn.Linear | nn.Conv2d:
    """The classifier as a linear layer, or a clear refusal."""
    if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)):
        return module
    raise CSRAError(
        f"model {name}: classifier is {type(module).__name__}, not a linear layer, so it cannot be applied "
        "per location (num_classes=0 models have no head: load one with `checkpoint`)"
    )


def _cnn_head(model: Any, name: str) -> LocationHead:  # Any: timm's attributes vary by architecture
    from timm.layers import NormMlpClassifierHead

    # timm's head width: num_features (the pre-pool map) vs head_hidden_size (the classifier's input);
    # they differ exactly when a layer sits between pooling and the classifier
    width, hidden = getattr(model, "num_features", None), getattr(model, "head_hidden_size", None)
    widened = bool(width and hidden and width != hidden)
    if widened and isinstance(getattr(model, "conv_head", None), nn.Module):  # MobileNetV3/V4, GhostNet
        raise CSRAError(
            f"model {name}: its head is pool -> conv_head (1x1 conv) -> activation -> linear (non-linear after "
            "pooling), so it cannot be applied per location; pick a model whose head is pool -> linear"
        )
    head = getattr(model, "head", None)
    if isinstance(head, NormMlpClassifierHead):
        if getattr(head, "hidden_size", None):
            raise CSRAError(f"model {name}: its head has a pre-logits MLP with tanh after pooling (non-linear), so it cannot be applied per location")
        pool: Any = head.global_pool
        norm = head.norm
        if not isinstance(norm, (nn.LayerNorm, nn.Identity)):
            raise CSRAError(f"model {name}: head norm {type(norm).__name__} after pooling is not supported")
    else:
        pool = getattr(model, "global_pool", None) or getattr(head, "global_pool", None)
        norm = None
    if widened and not isinstance(head, NormMlpClassifierHead):
        raise CSRAError(
            f"model {name}: its head turns the pooled {width} features into {hidden} before the classifier "
            "(a layer after pooling), so it cannot be applied per location; pick a model whose head is pool -> linear"
        )
    if _pool_type(pool) != "avg":
        raise CSRAError(f"model {name}: global pool is {_pool_type(pool)!r}, not 'avg'; CSRA's identity needs average pooling")
    return LocationHead.from_linear(_linear(model.get_classifier(), name), norm)


def _vit_head(model: Any, name: str) -> tuple[LocationHead, BaselineSource]:
    pool = getattr(model, "global_pool", None)
    if getattr(model, "attn_pool", None) is not None or pool not in ("token", "avg"):
        raise CSRAError(f"model {name}: pooling {pool!r} (attention or max pooling) cannot be applied per patch; supported are class-token and 'avg' pooling")
    linear = _linear(model.head, name)
    weight, bias = linear.weight, linear.bias
    dist = getattr(model, "head_dist", None)
    if isinstance(dist, nn.Linear) and bias is not None and dist.bias is not None:  # distilled DeiT averages its two heads
        weight, bias = (weight + dist.weight) / 2, (bias + dist.bias) / 2
    norm = getattr(model, "fc_norm", None)
    if isinstance(norm, nn.LayerNorm):
        head = LocationHead(weight, bias, norm.weight, norm.bias, norm.eps, pooled_norm=True)
    elif norm is None or isinstance(norm, nn.Identity):
        head = LocationHead(weight, bias)
    else:
        raise CSRAError(f"model {name}: fc_norm {type(norm).__name__} is not supported")
    identity = pool == "avg" and not getattr(model, "pool_include_prefix", False) and dist is None
    return head, "model_logits" if identity else "patch_average"


def build_timm_adapter(model: nn.Module, name: str, weights: str) -> ModelAdapter:
    """Wrap a timm model; refuse (one line) heads that cannot be applied per location."""
    from timm.models.vision_transformer import VisionTransformer

    data_config = timm_data_config(model)
    if isinstance(model, VisionTransformer):
        head, source = _vit_head(model, name)
        info = AdapterInfo(name=name, family="timm-vit", baseline_source=source, weights=weights)
        if source == "patch_average":
            info.notes.append("class-token ViT: the baseline is the average of per-patch logits, not the model's own class-token logits (reported separately)")
        return TimmViTAdapter(model, head, info, data_config)
    if not hasattr(model, "forward_features") or not hasattr(model, "forward_head"):
        raise CSRAError(f"model {name}: timm model without forward_features/forward_head is not supported")
    from .nonlinear import nonlinear_adapter, timm_head_is_nonlinear  # h22b hook: non-linear heads

    if timm_head_is_nonlinear(model):
        return nonlinear_adapter(model, name, weights)
    head = _cnn_head(model, name)
    info = AdapterInfo(name=name, family="timm-cnn", baseline_source="model_logits", weights=weights)
    if head.pooled_norm:
        info.notes.append("norm after pooling: applied per location with the pooled vector's statistics")
    return TimmCNNAdapter(model, head, info, data_config)


def classifier_key(arch: str) -> str:
    """State-dict key of the classifier weight of a timm arch (to infer num_classes from a checkpoint)."""
    from timm.models import get_pretrained_cfg_value

    classifier = get_pretrained_cfg_value(arch, "classifier") or "fc"
    if isinstance(classifier, (tuple, list)):
        classifier = classifier[0]
    return f"{classifier}.weight"
