"""timm adapters: every architecture whose head after average pooling is (norm ->) affine (:mod:`.timm_head`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn

from ..errors import CSRAError
from .base import AdapterInfo, DataConfig, ModelAdapter, eval_mode
from .class_tokens import build_class_token_adapter
from .multistream import build_multistream_adapter
from .nonlinear import nonlinear_adapter, nonlinear_tokens_adapter, timm_head_is_nonlinear
from .timm_head import (
    HeadNotAffineError,
    HeadPlan,
    MultiStreamError,
    SingleLocationError,
    feature_map,
    plan_head,
)


class TimmAdapter(ModelAdapter):
    """Any timm classifier: ``forward_features`` put on a grid (NCHW, NHWC or tokens), ``forward_head`` its logits."""

    def __init__(self, model: nn.Module, plan: HeadPlan, info: AdapterInfo, data_config: DataConfig) -> None:
        super().__init__(model, plan.head, info, data_config)
        self.layout = plan.layout
        self.prefix_tokens = plan.prefix_tokens
        self.check_size = plan.size
        self._embed = patch_embedding(model)

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        if self._embed is not None:
            check_input_size(self._embed, self.info.name, int(x.shape[-2]), int(x.shape[-1]))
        return self.wrapped.forward_features(x)

    def feature_map(self, raw: torch.Tensor) -> torch.Tensor:
        grid = getattr(getattr(self.model, "patch_embed", None), "grid_size", None) if self.layout == "tokens" else None
        return feature_map(raw, self.layout, self.prefix_tokens, tuple(grid) if grid else None)

    def model_logits(self, raw: torch.Tensor) -> torch.Tensor:
        return self.wrapped.forward_head(raw)


# the adapters' old names (one class serves every timm family now)
TimmCNNAdapter = TimmViTAdapter = TimmAdapter


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


def fixed_input_size(model: nn.Module) -> int | None:
    """The one input size a model built for a fixed size takes (its patch embedding's ``img_size``:
    ViT, Swin, Mixer, ...), else None."""
    embed = patch_embedding(model)
    fixed = getattr(embed, "img_size", None)
    if fixed is None or not getattr(embed, "strict_img_size", False) or getattr(model, "dynamic_img_size", False):
        return None
    return int(fixed[0]) if isinstance(fixed, (tuple, list)) else int(fixed)


def patch_embedding(model: nn.Module) -> Any:
    """The model's patch embedding (timm's ``PatchEmbed`` or one like it) that takes the image itself,
    or None for a CNN (or Visformer, whose first patch embedding reads its stem's map, not the image)."""
    channels = int(getattr(model, "in_chans", 3) or 3)
    return next(
        (
            m
            for m in model.modules()
            if hasattr(m, "patch_size")
            and hasattr(m, "strict_img_size")
            and hasattr(m, "img_size")
            and getattr(getattr(m, "proj", None), "in_channels", channels) == channels
        ),
        None,
    )


def check_input_size(embed: Any, name: str, h: int, w: int) -> None:
    """One line instead of timm's assertion: a model built for one input size, or a size its patches do not tile."""
    fixed = tuple(embed.img_size) if getattr(embed, "strict_img_size", False) and embed.img_size is not None else None
    if fixed is not None and (h, w) != fixed:
        raise CSRAError(
            f"model {name} takes {fixed[0]}x{fixed[1]} inputs only (its position embeddings or token mixing are built for that size "
            f"and this family cannot resample them): use img_size {fixed[0]}",
            param="img_size",
        )
    ph, pw = (int(v) for v in embed.patch_size)
    if not getattr(embed, "dynamic_img_pad", False) and (h % ph or w % pw):
        lower, upper = (h // ph) * ph, (h // ph + 1) * ph
        raise CSRAError(
            f"model {name}: img_size {h} is not a multiple of its patch size {ph} (e.g. {lower or upper} or {upper})",
            param="img_size",
        )


def build_timm_adapter(model: nn.Module, name: str, weights: str, img_size: int | None = None) -> ModelAdapter:
    """Wrap a timm model; refuse (one line, naming the operation) heads that cannot be applied per location.

    ``img_size``: the input side the caller will use. The head is read at the model's one size if it
    takes only one, else at ``img_size``, else at its own (so the checks test what the run will see)."""
    data_config = timm_data_config(model)
    if timm_head_is_nonlinear(model):
        return nonlinear_adapter(model, name, weights, data_config)
    fixed = fixed_input_size(model)
    data_config = replace(data_config, input_size=fixed or data_config.input_size)
    size = fixed or img_size or data_config.input_size
    with eval_mode(model):
        try:
            plan = plan_head(model, name, size, own_size=data_config.input_size)
        except SingleLocationError as exc:
            return build_class_token_adapter(model, name, weights, data_config, size, exc)
        except MultiStreamError:
            return build_multistream_adapter(model, name, weights, data_config, size)
        except HeadNotAffineError as exc:
            # modules before the pool, or a non-linearity after it: the labelled non-linear variant
            # (its own check, head(pooled) == logits, decides); a class-token head stays refused
            if exc.stage == "before" or exc.layout in ("nchw", "nhwc"):
                return nonlinear_adapter(model, name, weights, data_config)
            if exc.layout == "tokens":  # average-pooled tokens (a ViT with an RmsNorm fc_norm)
                return nonlinear_tokens_adapter(model, name, weights, data_config, exc.prefix)
            raise
    tokens = plan.layout == "tokens"
    family = (
        "timm-vit"
        if plan.patch_average or (tokens and plan.prefix_tokens)
        else {"nchw": "timm-cnn", "nhwc": "timm-nhwc", "tokens": "timm-tokens"}[plan.layout]
    )
    info = AdapterInfo(
        name=name,
        family=family,
        baseline_source="patch_average" if plan.patch_average else "model_logits",
        weights=weights,
    )
    if plan.patch_average:
        info.notes.append(
            "class-token model: the baseline is the average of per-patch logits, not the model's own class-token logits (reported separately)"
        )
    if plan.head.pooled_norm:
        info.notes.append("norm after pooling: applied per location with the pooled vector's statistics")
    if plan.folded:
        info.notes.append(f"head after pooling folded into one linear map ({plan.folded})")
    return TimmAdapter(model, plan, info, data_config)


def classifier_key(arch: str) -> str:
    """State-dict key of the classifier weight of a timm arch (to infer num_classes from a checkpoint)."""
    from timm.models import get_pretrained_cfg_value

    classifier = get_pretrained_cfg_value(arch, "classifier") or "fc"
    if isinstance(classifier, (tuple, list)):
        classifier = classifier[0]
    return f"{classifier}.weight"
