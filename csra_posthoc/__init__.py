"""csra-posthoc: training-free CSRA residual attention on any pretrained classifier.

Data flows one way: model adapter -> extraction -> cache -> scoring -> metrics -> report.

The public names are imported on first use (PEP 562), so ``import csra_posthoc`` and the CLI's
``--help`` do not pay for torch, torchvision and timm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__ as __version__

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "load_model": ".models.factory",
    "ModelAdapter": ".models.base",
    "load_dataset": ".data",
    "LabelledImages": ".data",
    "extract": ".extraction.run",
    "ExtractOptions": ".options",
    "DataOptions": ".options",
    "SweepOptions": ".options",
    "ModelSource": ".options",
    "PatchedFile": ".options",
    "CSRASettings": ".options",
    "ProbeOptions": ".options",
    "OutputOptions": ".options",
    "sweep": ".evaluation.grid",
    "paper_fixed_lam": ".evaluation.grid",
    "SweepResult": ".evaluation.results",
    "run_sweep": ".evaluation.run",
    "csra_score": ".heads.scoring",
    "attention_pool": ".heads.scoring",
    "score_from_locations": ".heads.scoring",
    "LocationHead": ".heads.location",
    "ClassStatistics": ".extraction.statistics",
    "StatisticsInfo": ".extraction.statistics",
    "CSRAError": ".errors",
    "patch": ".patched.model",
    "load_patched": ".patched.model",
    "save_patched": ".patched.model",
    "PatchedModel": ".patched.model",
    "export_patched": ".patched.export",
    "CSRAHead": ".heads.csra_head",
    "csra_head": ".heads.csra_head",
    "apply_patch": ".patched.apply",
    "run_predict": ".patched.predict",
    "predict_images": ".patched.predict",
    "run_attention": ".patched.attention",
    "attention_maps": ".patched.attention",
}

__all__ = [
    "CSRAError",
    "CSRAHead",
    "CSRASettings",
    "ClassStatistics",
    "DataOptions",
    "ExtractOptions",
    "LabelledImages",
    "LocationHead",
    "ModelAdapter",
    "ModelSource",
    "OutputOptions",
    "PatchedFile",
    "PatchedModel",
    "ProbeOptions",
    "StatisticsInfo",
    "SweepOptions",
    "SweepResult",
    "apply_patch",
    "attention_maps",
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
    "run_attention",
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
    from .data import LabelledImages, load_dataset
    from .errors import CSRAError
    from .evaluation.grid import sweep
    from .evaluation.results import SweepResult
    from .evaluation.run import run_sweep
    from .extraction.run import extract
    from .extraction.statistics import ClassStatistics, StatisticsInfo
    from .heads.csra_head import CSRAHead, csra_head
    from .heads.location import LocationHead
    from .heads.scoring import attention_pool, csra_score, score_from_locations
    from .models import ModelAdapter, load_model
    from .options import (
        CSRASettings,
        DataOptions,
        ExtractOptions,
        ModelSource,
        OutputOptions,
        PatchedFile,
        ProbeOptions,
        SweepOptions,
    )
    from .patched.apply import apply_patch
    from .patched.attention import attention_maps, run_attention
    from .patched.export import export_patched
    from .patched.model import PatchedModel, load_patched, patch, save_patched
    from .patched.predict import predict_images, run_predict
