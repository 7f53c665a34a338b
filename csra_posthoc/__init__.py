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
    "DataOptions": ".options",
    "SweepOptions": ".options",
    "ModelSource": ".options",
    "ProbeOptions": ".options",
    "OutputOptions": ".options",
    "sweep": ".lam_sweep",
    "paper_fixed_lam": ".lam_sweep",
    "SweepResult": ".lam_sweep",
    "run_sweep": ".api",
    "csra_score": ".scoring",
    "attention_pool": ".scoring",
    "score_from_locations": ".scoring",
    "LocationHead": ".location_head",
    "ClassStatistics": ".class_statistics",
    "StatisticsInfo": ".class_statistics",
    "CSRAError": ".errors",
    "patch": ".patched",
    "load_patched": ".patched",
    "save_patched": ".patched",
    "PatchedModel": ".patched",
    "export_patched": ".export",
    "CSRAHead": ".csra_head",
    "csra_head": ".csra_head",
    "apply_patch": ".apply",
    "run_predict": ".predict",
    "predict_images": ".predict",
}

__all__ = [
    "CSRAError",
    "CSRAHead",
    "ClassStatistics",
    "DataOptions",
    "ExtractOptions",
    "LabelledImages",
    "LocationHead",
    "ModelAdapter",
    "ModelSource",
    "OutputOptions",
    "PatchedModel",
    "ProbeOptions",
    "StatisticsInfo",
    "SweepOptions",
    "SweepResult",
    "apply_patch",
    "attention_pool",
    "csra_head",
    "csra_score",
    "export_patched",
    "extract",
    "load_dataset",
    "load_model",
    "load_patched",
    "paper_fixed_lam",
    "patch",
    "predict_images",
    "run_predict",
    "run_sweep",
    "save_patched",
    "score_from_locations",
    "sweep",
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
    from .apply import apply_patch
    from .class_statistics import ClassStatistics, StatisticsInfo
    from .csra_head import CSRAHead, csra_head
    from .data import LabelledImages, load_dataset
    from .errors import CSRAError
    from .export import export_patched
    from .extraction import extract
    from .lam_sweep import SweepResult, sweep
    from .location_head import LocationHead
    from .options import DataOptions, ExtractOptions, ModelSource, OutputOptions, ProbeOptions, SweepOptions
    from .patched import PatchedModel, load_patched, patch, save_patched
    from .predict import predict_images, run_predict
    from .scoring import attention_pool, csra_score, score_from_locations
