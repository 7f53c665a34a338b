"""csra-posthoc: training-free CSRA residual attention on any pretrained classifier.

Data flows one way: model adapter -> extraction -> cache -> scoring -> metrics -> report.

The public names are imported on first use (PEP 562), so ``import csra_posthoc`` and the CLI's
``--help`` do not pay for torch, torchvision and timm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "load_model": ".adapters",
    "ModelAdapter": ".adapters",
    "load_dataset": ".data",
    "LabelledImages": ".data",
    "extract": ".extraction",
    "ExtractOptions": ".options",
    "sweep": ".lam_sweep",
    "SweepResult": ".lam_sweep",
    "run_sweep": ".api",
    "csra_score": ".scoring",
    "attention_pool": ".scoring",
    "score_from_locations": ".scoring",
    "LocationHead": ".location_head",
    "ClassStatistics": ".statistics",
    "CSRAError": ".errors",
}

__all__ = [
    "load_model",
    "load_dataset",
    "extract",
    "ExtractOptions",
    "sweep",
    "run_sweep",
    "csra_score",
    "attention_pool",
    "score_from_locations",
    "ModelAdapter",
    "LocationHead",
    "LabelledImages",
    "ClassStatistics",
    "SweepResult",
    "CSRAError",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers see the real names
    from .adapters import ModelAdapter, load_model
    from .api import run_sweep
    from .data import LabelledImages, load_dataset
    from .errors import CSRAError
    from .extraction import extract
    from .lam_sweep import SweepResult, sweep
    from .location_head import LocationHead
    from .options import ExtractOptions
    from .scoring import attention_pool, csra_score, score_from_locations
    from .statistics import ClassStatistics
