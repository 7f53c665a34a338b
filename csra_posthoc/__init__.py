"""csra-posthoc: training-free CSRA residual attention on any pretrained classifier.

Data flows one way: model adapter -> extraction -> cache -> scoring -> metrics -> report.
"""

from __future__ import annotations

from .adapters import ModelAdapter, load_model
from .api import run_sweep
from .data import LabelledImages, load_dataset
from .errors import CSRAError
from .extraction import extract
from .location_head import LocationHead
from .options import ExtractOptions
from .csra_head import CSRAHead, csra_head
from .patched import PatchedModel, load_patched, patch, save_patched
from .export import export_patched
from .scoring import attention_pool, csra_score, score_from_locations
from .statistics import ClassStatistics
from .lam_sweep import SweepResult, sweep

__version__ = "0.1.0"

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
    "patch",
    "load_patched",
    "save_patched",
    "export_patched",
    "CSRAHead",
    "csra_head",
    "PatchedModel",
]
