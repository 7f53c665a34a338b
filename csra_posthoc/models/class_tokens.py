"""timm models whose ``forward_features`` returns their class token(s) only (PiT): the patch tokens
are in the last stage's output, a ``(map, class tokens)`` pair, and never reach the head.

The class-token route of a ViT, rebuilt: the patch tokens are taken from that pair (a forward hook
on the child of the model that returns it) and passed through what ``forward_features`` applies
to the class tokens after it (PiT's final LayerNorm, a per-token module), so each location is a
patch token as the head would see it. The backbone output is then ViT-like,
``cat([class tokens, patch tokens])``; the head is ``forward_head`` on the class-token slots, read
off as an affine map (PiT distilled: the mean of ``head`` and ``head_dist``), and the baseline is
the documented patch average (the head applied to the mean of the patch tokens).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import CSRAError
from ..heads.location import LocationHead
from .base import (
    AdapterInfo,
    DataConfig,
    ModelAdapter,
    close_relative,
    eval_mode,
    probe_input,
    read_affine,
    tokens_to_grid,
)


class _Carrier:
    """The child of the model whose output is the last ``(map, class tokens)`` pair, and the children
    ``forward_features`` applies to the class tokens after it."""

    def __init__(self, carrier: str, after: list[str]) -> None:
        self.carrier = carrier
        self.after = after


def _find_carrier(model: nn.Module, x: torch.Tensor, width: int, prefix: int) -> _Carrier | None:
    calls: list[tuple[str, Any, Any]] = []
    children = dict(model.named_children())
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=n: calls.append((n, inp, out))) for n, m in children.items()
    ]
    try:
        with torch.no_grad():
            out = model.forward_features(x)  # type: ignore[operator]
    finally:
        for h in hooks:
            h.remove()
    for i in range(len(calls) - 1, -1, -1):
        name, _, result = calls[i]
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            continue
        fmap, cls = result
        if not (isinstance(fmap, torch.Tensor) and fmap.dim() == 4 and fmap.shape[1] == width):
            continue
        if not (isinstance(cls, torch.Tensor) and cls.dim() == 3 and cls.shape[1] == prefix):
            continue
        after = [n for n, _, _ in calls[i + 1 :]]
        y = cls
        for n in after:
            y = children[n](y)
        if isinstance(y, torch.Tensor) and close_relative(y, out):
            return _Carrier(name, after)
    return None


class TimmClassTokenAdapter(ModelAdapter):
    """``cat([class tokens, patch tokens])`` as the backbone output; see the module doc."""

    def __init__(
        self, model: nn.Module, head: LocationHead, info: AdapterInfo, data_config: DataConfig, carrier: _Carrier
    ) -> None:
        super().__init__(model, head, info, data_config)
        self.carrier = carrier.carrier
        self.after = carrier.after
        self.prefix_tokens = 0  # set by the builder

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        got: list[torch.Tensor] = []
        handle = self.model.get_submodule(self.carrier).register_forward_hook(lambda mod, inp, out: got.append(out[0]))
        try:
            cls = self.wrapped.forward_features(x)
        finally:
            handle.remove()
        patches = got[-1].flatten(2).transpose(1, 2)
        for n in self.after:
            patches = self.model.get_submodule(n)(patches)
        return torch.cat([cls, patches.to(cls.dtype)], dim=1)

    def feature_map(self, raw: torch.Tensor) -> torch.Tensor:
        return tokens_to_grid(raw[:, self.prefix_tokens :])

    def model_logits(self, raw: torch.Tensor) -> torch.Tensor:
        return self.wrapped.forward_head(raw[:, : self.prefix_tokens])

    @torch.no_grad()
    def patch_average_reference(self, x: torch.Tensor) -> torch.Tensor:
        """``forward_head`` with every class-token slot holding the mean of the patch tokens."""
        with eval_mode(self.model):
            raw = self.forward_backbone(x)
            mean = raw[:, self.prefix_tokens :].mean(1, keepdim=True)
            return self.wrapped.forward_head(mean.expand(-1, self.prefix_tokens, -1).contiguous())


def build_class_token_adapter(
    model: nn.Module, name: str, weights: str, data_config: DataConfig, size: int, refusal: CSRAError
) -> ModelAdapter:
    """The route above, or ``refusal`` (the single-location message) where the model has no such pair."""
    timm_model: Any = model
    x = probe_input(model, size)
    with torch.no_grad(), eval_mode(model):
        raw = timm_model.forward_features(x)
        if not isinstance(raw, torch.Tensor) or raw.dim() != 3:
            raise refusal
        prefix, width = int(raw.shape[1]), int(raw.shape[2])
        carrier = _find_carrier(model, x, width, prefix)
        if carrier is None:
            raise refusal
        logits = timm_model.forward_head(raw).float()

        def head_at(v: torch.Tensor) -> torch.Tensor:
            return timm_model.forward_head(v[:, None, :].expand(-1, prefix, -1).contiguous().to(raw.dtype)).float()

        weight, at_zero = read_affine(head_at, width, raw.device)
        scale = float(raw.abs().max()) or 1.0
        probe = torch.randn(2, width, generator=torch.Generator().manual_seed(1)).to(raw.device) * scale
        affine = close_relative(head_at(probe), probe @ weight.T + at_zero)
        if prefix == 1:
            affine = affine and close_relative(raw[:, 0].float() @ weight.T + at_zero, logits)
        if not affine:
            raise CSRAError(
                f"model {name}: its head on the class token(s) is not affine, so it cannot be applied to its patch tokens"
            )
    info = AdapterInfo(name=name, family="timm-vit", baseline_source="patch_average", weights=weights)
    info.notes.append(
        f"class tokens only in forward_features: the patch tokens are '{carrier.carrier}''s map, through "
        f"{', '.join(repr(n) for n in carrier.after) or 'nothing'} as the class tokens are; the baseline is the average of per-patch logits"
    )
    adapter = TimmClassTokenAdapter(model, LocationHead(weight, at_zero), info, data_config, carrier)
    adapter.prefix_tokens = prefix
    adapter.check_size = size
    return adapter
