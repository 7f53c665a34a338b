"""A backbone whose classifier is a fitted linear probe (:func:`csra_posthoc.extraction.probe.fit_probe`'s
result, or a head file checked against the model by :func:`classifier_from_probe`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import CSRAError
from ..heads.head_file import load_head
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


def classifier_from_probe(adapter: ModelAdapter, head: Any) -> tuple[LocationHead, dict]:
    """A probe saved by ``sweep --save-head`` (path, or ``(LocationHead, meta)``), checked against the model."""
    if adapter.info.location_head == "nonlinear":
        raise CSRAError(
            f"head: {adapter.info.name}'s head is non-linear after pooling; a linear probe cannot replace it (patch it with its own head)",
            param="head_file",
        )
    if isinstance(head, (str, Path)):
        path = Path(head)
        if not path.is_file():
            raise CSRAError(f"head_file {path}: no such file", param="head_file")
        classifier, meta = load_head(path)
        where = f"head_file {path}"
    elif isinstance(head, LocationHead):
        classifier, meta, where = head, {}, "head"
    else:
        classifier, meta = head
        where = "head"
    dim = adapter.head.weight.shape[1]
    if classifier.weight.shape[1] != dim:
        raise CSRAError(
            f"{where}: the head takes {classifier.weight.shape[1]} features but {adapter.info.name}'s feature map has {dim}"
        )
    if classifier.pooled_norm != adapter.head.pooled_norm:
        raise CSRAError(
            f"{where}: fitted for a model {'with' if classifier.pooled_norm else 'without'} a pooled norm; {adapter.info.name} differs"
        )
    fitted_on = meta.get("model")
    if fitted_on and fitted_on != adapter.info.name:
        raise CSRAError(
            f"{where}: fitted on {fitted_on}, not {adapter.info.name}; pass the head fitted with this `model`"
        )
    return classifier, meta
