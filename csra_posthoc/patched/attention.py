"""``csra-posthoc attention``: where in the image each top class scores (the paper's Fig. 4).

The per-location class scores are the patched model's: the adapter's pre-pool feature map through
the classifier applied per location (:class:`csra_posthoc.heads.location.LocationHead`, as
extraction and :class:`csra_posthoc.heads.csra_head.CSRAHead` compute them). Their mean is the baseline
score, ``mean + lam * attended`` the CSRA score shown beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from ..data.base import load_rgb
from ..data.transforms import build_transform
from ..errors import CSRAError, first_line
from ..extraction.runtime import resolve_device
from ..heads.lookup import results_head_file
from ..options import CSRASettings, ModelSource, PatchedFile
from ..outputs import check_outputs
from ..report.plots import check_plot_path, plot_attention
from ..report.tables import report_console
from ..text import safe
from .apply import check_transform_choice, read_results
from .model import PatchedModel
from .predict import (
    check_from_results_args,
    class_names,
    load_patched_source,
    patched_from_model,
    patched_from_results,
    source_inputs,
)
from .settings import resolve_settings


@dataclass
class AttentionMaps:
    """The top-k classes of one image: names, class indices, per-location scores ``(k, h, w)``,
    baseline and CSRA scores, and the model's input image ``(H, W, 3)`` in [0, 1]."""

    image: np.ndarray
    names: list[str]
    indices: list[int]
    maps: np.ndarray
    baseline: list[float]
    patched: list[float]


@torch.no_grad()
def attention_maps(
    patched, image: str | Path, top_k: int = 3, classes: Sequence[str] | None = None, device: str = "auto"
) -> AttentionMaps:
    """Per-location scores of the ``top_k`` classes (by CSRA score) of ``patched`` on ``image``."""

    if top_k < 1:
        raise CSRAError(f"top_k {top_k}: must be >= 1", param="top_k")
    path = Path(image)
    if not path.is_file():
        raise CSRAError(f"{path}: no such image file", param="image")
    try:
        pil = load_rgb(path)
    except Exception as exc:  # any decoder failure is the file's fault
        raise CSRAError(f"{path}: cannot decode image ({first_line(exc, 120)})", param="image") from None
    names = class_names(patched.num_classes, classes if classes is not None else patched.classes)
    prep = patched.config.preprocessing
    x = build_transform(prep)(pil)[None]
    dev = resolve_device(device)
    patched = patched.to(dev).eval()
    fmap = patched.feature_map(x.to(dev))
    s = patched.head.location_scores(fmap).float().cpu()[0]  # (C, h * w)
    h, w = fmap.shape[-2:]
    scores, baseline = patched.head.pool(s[None])[0], s.mean(dim=-1)
    if getattr(patched, "nonlinear", False):  # non-linear head: the baseline is the model's logits
        scores, baseline = (t.float().cpu()[0] for t in patched.forward_with_baseline(x.to(dev)))
    top = torch.argsort(scores, descending=True, stable=True)[: min(top_k, scores.numel())].tolist()
    mean, std = torch.tensor(prep.mean)[:, None, None], torch.tensor(prep.std)[:, None, None]
    shown = (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return AttentionMaps(
        image=shown,
        names=[names[c] for c in top],
        indices=top,
        maps=s[top].reshape(len(top), h, w).numpy(),
        baseline=[float(baseline[c]) for c in top],
        patched=[float(scores[c]) for c in top],
    )


def run_attention(
    image: str | Path,
    out: str | Path,
    source: ModelSource | PatchedFile,
    settings: CSRASettings | None = None,
    *,
    img_size: int | None = None,
    transform: str = "auto",
    classes: Sequence[str] | None = None,
    top_k: int = 3,
    device: str = "auto",
    console: Console | None = None,
) -> AttentionMaps:
    """Build the patched model as ``predict`` does (the same ``source`` and ``settings``, resolved by
    :func:`~csra_posthoc.patched.settings.resolve_settings`), compute the top-k maps, write the figure ``out``."""

    settings = settings or CSRASettings()
    console = console or report_console()
    check_plot_path(out, param="out")
    if top_k < 1:
        raise CSRAError(f"top_k {top_k}: must be >= 1", param="top_k")
    check_transform_choice(transform)
    if not Path(image).is_file():
        raise CSRAError(f"{image}: no such image file", param="image")
    from_results = settings.from_results
    check_outputs(
        {"out": out}, {"image": image, **source_inputs(source), "from_results": from_results}
    )  # README: Outputs
    if from_results is not None:  # the sweep row's settings, transform and classes (as apply / predict build it)
        check_from_results_args(source, img_size, transform, classes)
        assert isinstance(source, ModelSource)  # a patched file was just refused
        results = read_results(from_results)
        resolved = resolve_settings(settings, results=results)
        head_file = results_head_file(source.head_file, results, from_results, console)
        if head_file is not None:
            check_outputs({"out": out}, {"head_file": head_file, "from_results": from_results})
        patched = patched_from_results(source, head_file, results, resolved, from_results)
    elif isinstance(source, PatchedFile):
        patched = load_patched_source(source, img_size, transform)
        if not isinstance(patched, PatchedModel):
            raise CSRAError(
                f"patched_file {source.path}: an exported file holds no per-location scores; use the .safetensors file apply writes",
                param="patched_file",
            )
        if settings.given:
            resolved = resolve_settings(settings, config=patched.config)
            patched.set_settings(resolved.lam, resolved.pool_temperature, resolved.heads)
    else:
        patched = patched_from_model(source, settings, img_size, transform)
    result = attention_maps(patched, image, top_k, classes, device)
    cfg = patched.config
    title = f"{Path(image).name}: {cfg.model}, mean + {cfg.lam:g} * {cfg.variant}"
    plot_attention(result.image, result.maps, result.names, result.baseline, result.patched, out, title=title)
    for name, b, s in zip(result.names, result.baseline, result.patched, strict=True):
        console.print(f"{safe(name)}: baseline {b:.3f}, CSRA {s:.3f}", soft_wrap=True)
    console.print(f"wrote {safe(out)}", soft_wrap=True)
    return result
