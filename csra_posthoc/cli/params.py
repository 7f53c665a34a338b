"""Typer option aliases for the options several commands share, each declared once.

A command writes ``model: ModelOpt`` (or ``checkpoint: CheckpointOpt = None``), so the flag, its
short form and its help cannot drift apart between ``sweep``, ``demo``, ``apply``, ``predict``
and ``attention``. The Python parameter name of every option is the library's parameter name,
so the parameter -> flag table is read off the app (:mod:`csra_posthoc.cli.flags`).
Imports only typer and the torch-free defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..defaults import TRANSFORM_CHOICES

TRANSFORM_HELP = f"{' | '.join(TRANSFORM_CHOICES)}: auto is the model's centre crop for single-label data and heads, a square resize (no crop) for multi-label ones"

# model and weights (ModelSource)
MODEL_HELP = "timm name (resnet50, vit_base_patch16_224, ...), torchvision:<arch> or hf:<folder>"
ModelOpt = Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)]
OptionalModelOpt = Annotated[
    Optional[str], typer.Option("--model", "-m", help=MODEL_HELP)
]  # predict / attention: not with --patched
CheckpointOpt = Annotated[
    Optional[Path], typer.Option("--checkpoint", help="local state_dict (.pth/.pt/.safetensors), loaded weights-only")
]
PretrainedOpt = Annotated[
    bool,
    typer.Option("--pretrained", help="hub weights (needs a network), or packaged offline weights where installed"),
]
RandomInitOpt = Annotated[bool, typer.Option("--random-init", help="random weights: smoke tests and benchmarks only")]
HeadFileOpt = Annotated[Optional[Path], typer.Option("--head-file", help="a probe written by sweep --save-head")]
SaveHeadOpt = Annotated[Optional[Path], typer.Option("--save-head", help="write the fitted probe (.safetensors)")]
PatchedFileOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--patched", help="a file written by apply: .safetensors (all options), or .onnx / .pt2 / .ts (scores only)"
    ),
]

# CSRA settings (CSRASettings)
LamOpt = Annotated[
    Optional[str],
    typer.Option(
        "--lam",
        help="the residual weight lam >= 0 (0 gives the model back; default: the patched file's, else the paper's fixed lam)",
    ),
]
TemperatureOpt = Annotated[
    Optional[str],
    typer.Option("--temperature", help="inf (default): avg + lam * max; T > 0: softmax(T s)-weighted average"),
]
HeadsOpt = Annotated[
    Optional[int], typer.Option("--heads", help="multi-head: 1, 2, 4, 6 or 8 (the paper's temperature sets)")
]
FromResultsOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--from-results",
        help="a sweep's / the demo's --out JSON: lam / variant, transform, class names and probe from it",
    ),
]
PickOpt = Annotated[
    str, typer.Option("--pick", help="--from-results row: best | fixed | best-variant (apply also: test-pool)")
]

# input and classes
ImgSizeOpt = Annotated[
    Optional[int],
    typer.Option("--img-size", help="square input size (default: the results' / patched file's, else the model's own)"),
]
TransformOpt = Annotated[str, typer.Option("--transform", help=TRANSFORM_HELP)]
ClassesOpt = Annotated[Optional[str], typer.Option("--classes", help="comma-separated class names in the head's order")]
ClassesFileOpt = Annotated[Optional[Path], typer.Option("--classes-file", help="class names, one per line")]

# the forward pass and the cache (ExtractOptions)
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="images per forward pass")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="DataLoader worker processes")]
CacheDirOpt = Annotated[
    Optional[Path], typer.Option("--cache-dir", help="default: $CSRA_POSTHOC_CACHE or the user cache dir")
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="neither read nor write the cache")]
RecomputeOpt = Annotated[
    bool,
    typer.Option("--recompute", help="ignore (and overwrite) cached statistics and probes, e.g. from an older release"),
]

# outputs and reports (OutputOptions, AnalysisOptions)
SaveScoresOpt = Annotated[
    Optional[Path], typer.Option("--save-scores", help="NPZ with ids, labels, classes, baseline/best/fixed scores")
]
PlotOpt = Annotated[
    Optional[Path], typer.Option("--plot", help="lam curve figure: .png, .svg or .pdf (its folder must exist)")
]
PerClassOpt = Annotated[
    bool,
    typer.Option("--per-class", help="table of per-class Δ with 95 % bootstrap intervals (best, fixed, held-out rows)"),
]
PlotClassesOpt = Annotated[
    Optional[Path],
    typer.Option("--plot-classes", help="per-class Δ figure: sorted bars with interval whiskers (.png, .svg or .pdf)"),
]
