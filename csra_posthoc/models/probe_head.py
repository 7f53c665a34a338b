"""A backbone whose classifier is a fitted linear probe (:func:`csra_posthoc.extraction.probe.fit_probe`'s result)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..heads.location import LocationHead
from .base import AdapterInfo, ModelAdapter


class ProbeHeadAdapter(ModelAdapter):
    """A backbone whose classifier is a fitted probe; its logits are the probe on pooled features."""

    def __init__(self, base: ModelAdapter, head: LocationHead, info: AdapterInfo) -> None:
        super().__init__(base.model, head, info, base.data_config)
        self.base = base

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.forward_backbone(x)

    def feature_map(self, raw: torch.Tensor) -> torch.Tensor:
        return self.base.feature_map(raw)

    def model_logits(self, raw: torch.Tensor) -> torch.Tensor:
        return F.linear(self.head.pooled_features(self.feature_map(raw)), self.head.weight, self.head.bias)
