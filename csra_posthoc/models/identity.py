"""The identity check CSRA's lam = 0 rests on: the mean of per-location scores is the model's logits."""

from __future__ import annotations

import torch

from ..errors import CSRAError
from .base import IDENTITY_TOLERANCE, ModelAdapter, identity_scale, probe_input
from .nonlinear import check_pooled_head


@torch.no_grad()
def verify_identity(adapter: ModelAdapter, tolerance: float = IDENTITY_TOLERANCE) -> float:
    """One random image through the adapter: refuse heads whose per-location mean is not the logits.

    Catches families this project has no explicit rule for (and wrongly built adapters) before
    any data is read. Class-token ViTs are exempt (their baseline is the patch average by design).
    The tolerance is relative to the logits' scale (:func:`identity_scale`); the input side is the
    one the adapter's head was read at (``check_size``), else its own input size.
    """
    if adapter.info.location_head == "nonlinear":  # baseline = the logits; its check: head(pooled) == logits
        return check_pooled_head(adapter)
    x = probe_input(adapter, adapter.check_size or adapter.data_config.input_size, batch=1)
    try:
        s, logits = adapter(x)
    except Exception as exc:
        raise CSRAError(
            f"model {adapter.info.name}: its classifier cannot be applied per location: {_shape_detail(adapter, x, exc)}"
        ) from None
    diff = float((s.mean(-1) - logits).abs().max())
    scale = identity_scale(float(logits.abs().max()))
    if adapter.info.baseline_source == "model_logits" and diff > tolerance * scale:
        raise CSRAError(
            f"model {adapter.info.name}: the mean of per-location scores differs from its logits by {diff:.3g} "
            f"({diff / scale:.2g} of the logits' scale), so its head is not linear after average pooling and CSRA's identity does not hold"
        )
    return diff


def _shape_detail(adapter: ModelAdapter, x: torch.Tensor, exc: Exception) -> str:
    """Why the classifier did not fit the feature map, in shapes (not the raw einsum message)."""
    try:
        fmap = adapter.feature_map(adapter.forward_backbone(x))
    except Exception:
        return f"the backbone fails on a {tuple(x.shape[1:])} input ({type(exc).__name__})"
    takes = adapter.head.weight.shape[1]
    if fmap.dim() == 4 and fmap.shape[1] != takes:
        return (
            f"the feature map has {fmap.shape[1]} channels but the classifier takes {takes} inputs "
            "(a layer between pooling and the classifier changes the width)"
        )
    return f"{type(exc).__name__} on a feature map of shape {tuple(fmap.shape[1:])}"
