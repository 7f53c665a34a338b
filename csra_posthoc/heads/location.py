"""Apply a pooled-feature classifier at every spatial location.

Every head this project supports computes ``W · N(mean_k x_k) + b``, where ``N`` is either the
identity (ResNet, EfficientNet, MobileNetV2, RegNet, ...) or a LayerNorm over channels applied
to the pooled vector (ConvNeXt, average-pool ViTs). Per location we compute
``s_k = W · N_p(x_k) + b``, where ``N_p`` normalises with the *pooled* vector's mean and
variance. ``N_p`` is then affine in ``x_k``, so ``mean_k s_k`` equals the model's own logits
exactly (up to float rounding): lam = 0 gives back the baseline.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class LocationHead(nn.Module):
    """Linear head applied per location: ``(B, d, H, W) -> (B, C, H*W)`` class scores."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        norm_weight: torch.Tensor | None = None,
        norm_bias: torch.Tensor | None = None,
        norm_eps: float = 1e-6,
        pooled_norm: bool = False,
    ) -> None:
        super().__init__()
        num_classes, dim = weight.shape
        self.weight = nn.Parameter(weight.detach().clone().float(), requires_grad=False)
        b = torch.zeros(num_classes) if bias is None else bias.detach().clone().float()
        self.bias = nn.Parameter(b, requires_grad=False)
        self.pooled_norm = pooled_norm
        nw = torch.ones(dim) if norm_weight is None else norm_weight.detach().clone().float()
        nb = torch.zeros(dim) if norm_bias is None else norm_bias.detach().clone().float()
        self.norm_weight = nn.Parameter(nw, requires_grad=False)
        self.norm_bias = nn.Parameter(nb, requires_grad=False)
        self.norm_eps = float(norm_eps)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def location_features(self, fmap: torch.Tensor) -> torch.Tensor:
        """What the linear layer sees at each location ``(B, d, K)``; its mean over K is the
        vector the model's own head classifies (a linear probe is fitted on that mean)."""
        x = fmap.float().flatten(2)  # (B, d, K)
        if self.pooled_norm:
            pooled = x.mean(dim=-1, keepdim=True)  # (B, d, 1)
            mu = pooled.mean(dim=1, keepdim=True)
            var = pooled.var(dim=1, unbiased=False, keepdim=True)
            x = (x - mu) * torch.rsqrt(var + self.norm_eps)
            x = x * self.norm_weight[None, :, None] + self.norm_bias[None, :, None]
        return x

    def pooled_features(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.location_features(fmap).mean(dim=-1)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        x = self.location_features(fmap)
        # (C, d) @ (B, d, K): a plain batched matmul, which every runtime (ONNX Runtime too) runs fast
        return torch.matmul(self.weight, x) + self.bias[:, None]

    def with_linear(self, weight: torch.Tensor, bias: torch.Tensor) -> LocationHead:
        """The same per-location features with another classifier (e.g. a fitted probe)."""
        return LocationHead(weight, bias, self.norm_weight, self.norm_bias, self.norm_eps, self.pooled_norm)

    @classmethod
    def from_linear(cls, linear: nn.Linear | nn.Conv2d, norm: nn.LayerNorm | nn.Identity | None = None) -> LocationHead:
        """Build from a ``nn.Linear`` (or 1x1 conv) and an optional pooled ``nn.LayerNorm``."""
        weight = linear.weight.reshape(linear.weight.shape[0], -1)
        if norm is None or isinstance(norm, nn.Identity):
            return cls(weight, linear.bias)
        return cls(
            weight,
            linear.bias,
            norm_weight=norm.weight,
            norm_bias=norm.bias,
            norm_eps=norm.eps,
            pooled_norm=True,
        )
