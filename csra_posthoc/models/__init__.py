"""Model adapters: a classifier seen as per-location scores plus its own logits.

:mod:`.factory` builds them (``load_model``), :mod:`.identity` checks them, :mod:`.probe_head`
wraps a backbone with a fitted linear probe.
"""

from __future__ import annotations

from ..defaults import TORCHVISION_PREFIX
from .base import AdapterInfo, BaselineSource, DataConfig, ModelAdapter
from .factory import load_model
from .identity import verify_identity
from .probe_head import ProbeHeadAdapter

__all__ = [
    "TORCHVISION_PREFIX",
    "AdapterInfo",
    "BaselineSource",
    "DataConfig",
    "ModelAdapter",
    "ProbeHeadAdapter",
    "load_model",
    "verify_identity",
]  # fmt: skip
