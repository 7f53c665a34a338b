"""One forward pass per image: per-location scores -> cached per-class statistics.

Checks, on every batch: the scores are finite, and the mean over locations equals the model's
own logits (the identity CSRA's lam = 0 rests on), reported as ``identity_max_abs_diff`` and,
divided by the logits' scale (``max(1, max |logits|)``), ``identity_max_rel_diff``; the check
is relative, as in :func:`~csra_posthoc.adapters.verify_identity`.

:func:`backbone_batches` is the one loop over a dataset: the statistics here and the probe's
features (:func:`csra_posthoc.probe.pooled_features`) both consume it, through a
:class:`ForwardPass` (model, device, transform and options, prepared once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from rich.console import Console
from torch.utils.data import DataLoader

from .adapters import ModelAdapter
from .adapters.base import IDENTITY_TOLERANCE, identity_scale
from .cache import cache_path, cached, resolve_cache_dir, save_statistics
from .cache import load_statistics as load_statistics
from .cache import usable_cache_dir as usable_cache_dir  # noqa: F401 (re-exported)
from .checkpoint import state_dict_fingerprint
from .data import ImageDataset, LabelledImages
from .data.transforms import eval_transform
from .errors import CSRAError, first_line
from .keys import statistics_key
from .log import output_console, say
from .options import ExtractOptions
from .progress import progress_bar
from .scoring import CACHED_TEMPERATURES, location_statistics
from .class_statistics import CacheInfo, ClassStatistics, StatisticsInfo


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CSRAError(f"device {device}: CUDA is not available here; use device='cpu' or 'auto'", param="device")
    if device != "cpu" and not device.startswith("cuda"):
        raise CSRAError(f"--device {device}: choose auto, cpu or cuda", param="device")
    return torch.device(device)


def check_class_count(adapter: ModelAdapter, images: LabelledImages) -> None:
    if adapter.num_classes != len(images.classes):
        raise CSRAError(
            f"model {adapter.info.name} has {adapter.num_classes} classes but {images.dataset} has "
            f"{len(images.classes)}: pass --checkpoint with a head trained on these classes "
            "(or add --head probe to fit a linear probe on the training split)",
            param="checkpoint",
        )


def extraction_key(
    adapter: ModelAdapter,
    images: LabelledImages,
    transform: dict,
    amp: bool,
    keep_maps: bool,
    verify_images: bool = False,
    head_fingerprint: str | None = None,
) -> str:
    """The statistics key of a built model (``head_fingerprint``: when the caller has it already)."""
    return statistics_key(
        model=adapter.info.name,
        weights_fingerprint=adapter.info.weights_fingerprint,
        head_fingerprint=head_fingerprint or state_dict_fingerprint(adapter.head.state_dict()),
        baseline_source=adapter.info.baseline_source,
        transform=transform,
        dataset=images.dataset,
        split=images.split,
        data_fingerprint=images.fingerprint(content=verify_images),
        temperatures=CACHED_TEMPERATURES,
        amp=amp,
        keep_maps=keep_maps,
    )


@dataclass(frozen=True)
class ForwardPass:
    """What every loop over a dataset needs, prepared once: the model, the device, the input
    transform (and its description, which enters cache keys), the options and the console."""

    adapter: ModelAdapter
    transform: Callable[..., torch.Tensor]
    desc: dict[str, Any]
    device: torch.device
    options: ExtractOptions
    console: Console

    @property
    def size(self) -> int:
        return int(self.desc["size"])


def forward_pass(adapter: ModelAdapter, single_label: bool, options: ExtractOptions, console: Console) -> ForwardPass:
    """Check the loop's options and build the transform and the device, once per run."""
    if options.batch_size < 1:
        raise CSRAError(f"batch_size {options.batch_size}: must be >= 1", param="batch_size")
    if options.workers < 0:
        raise CSRAError(f"workers {options.workers}: must be >= 0", param="workers")
    if options.img_size is not None and options.img_size < 16:
        raise CSRAError(f"img_size {options.img_size}: too small (at least 16)", param="img_size")
    transform, desc = eval_transform(adapter.data_config, options.img_size, single_label, options.transform)
    return ForwardPass(adapter, transform, desc, resolve_device(options.device), options, console)


@contextmanager
def on_device(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``module`` on ``device`` in eval mode for the loop, then back where and as it was.

    The caller's module is moved in place and restored afterwards rather than copied: a copy would
    double the memory of a large model on the device, and restoring leaves the caller's model as
    it was (device and train/eval mode) once the loop ends or fails.
    """
    first = next(module.parameters(), None)
    before = first.device if first is not None else None
    training = module.training
    module.to(device).eval()
    try:
        yield module
    finally:
        if before is not None and before != device:
            module.to(before)
        module.train(training)


def backbone_batches(fp: ForwardPass, images: LabelledImages, description: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(indices, backbone output in fp32)`` per batch, with a progress bar; a broken image is an error.

    The one loop over a dataset; the model is on ``fp.device`` (in eval mode) while it runs.
    """
    opts, device, adapter = fp.options, fp.device, fp.adapter
    loader = DataLoader(
        ImageDataset(images, fp.transform, fp.size),
        batch_size=opts.batch_size,
        num_workers=opts.workers,
        shuffle=False,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # the loader draws its workers' base seed from this, not the caller's RNG
    )
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    amp_ctx = torch.autocast(device_type=device.type, dtype=amp_dtype) if opts.amp else nullcontext()
    with on_device(adapter, device), progress_bar(fp.console, description, total=len(images)) as advance:
        for index, x, errors in loader:
            bad = [e for e in errors if e]
            if bad:
                raise CSRAError(bad[0])  # names the file and the fix
            try:
                with amp_ctx:
                    raw = adapter.forward_backbone(x.to(device, non_blocking=True))
            except (RuntimeError, AssertionError, ValueError) as exc:
                raise CSRAError(
                    f"model {adapter.info.name} failed on a {tuple(x.shape[1:])} input ({first_line(exc)}); try another img_size",
                    param="img_size",
                ) from None
            yield index, raw.float()
            advance(len(index))


@torch.no_grad()
def compute_statistics(fp: ForwardPass, images: LabelledImages) -> tuple[ClassStatistics, float, float]:
    """Run the model over ``images``; returns the statistics and the identity's max abs and relative diffs (no caching)."""
    adapter, size = fp.adapter, fp.size
    parts: dict[str, list[torch.Tensor]] = {"avg": [], "max": [], "attn": [], "logits": [], "maps": []}
    max_diff, max_logit = 0.0, 0.0
    for index, raw in backbone_batches(fp, images, f"extract {adapter.info.name}"):
        s, logits = adapter.scores_from_backbone(raw)
        if not torch.isfinite(s).all() or not torch.isfinite(logits).all():
            row = int((~torch.isfinite(s)).flatten(1).any(1).nonzero()[0]) if not torch.isfinite(s).all() else 0
            raise CSRAError(
                f"model {adapter.info.name} produced NaN/inf scores on {images.paths[int(index[row])]} "
                f"at input size {size}; check the weights, the input size, or run without amp (amp=False)",
                param="amp" if fp.options.amp else None,
            )
        stats = location_statistics(s)
        max_diff = max(max_diff, float((stats["avg"] - logits).abs().max()))
        max_logit = max(max_logit, float(logits.abs().max()))
        for name in ("avg", "max", "attn"):
            parts[name].append(stats[name].cpu())
        parts["logits"].append(logits.cpu())
        if fp.options.keep_maps:
            parts["maps"].append(s.half().cpu())
    rel_diff = max_diff / identity_scale(max_logit)
    if adapter.info.baseline_source == "model_logits" and rel_diff > IDENTITY_TOLERANCE:
        raise CSRAError(
            f"model {adapter.info.name}: mean of per-location scores differs from the model's logits by "
            f"{max_diff:.3g} ({rel_diff:.2g} of the logits' scale, > {IDENTITY_TOLERANCE:g}), so its head is not "
            "linear after average pooling on these inputs and CSRA's identity does not hold"
        )
    result = ClassStatistics(
        ids=list(images.ids),
        classes=list(images.classes),
        labels=images.labels.clone(),
        avg=torch.cat(parts["avg"]),
        max=torch.cat(parts["max"]),
        attn=torch.cat(parts["attn"]),
        temperatures=CACHED_TEMPERATURES,
        logits=torch.cat(parts["logits"]),
        maps=torch.cat(parts["maps"]) if fp.options.keep_maps else None,
    )
    return result, max_diff, rel_diff


def extract(
    adapter: ModelAdapter,
    images: LabelledImages,
    options: ExtractOptions | None = None,
    *,
    console: Console | None = None,
    **overrides,
) -> ClassStatistics:
    """Statistics for ``adapter`` on ``images``, from the cache when the key matches.

    ``overrides`` are :class:`ExtractOptions` fields (``extract(adapter, images, img_size=448)``).
    """
    opts = replace(options or ExtractOptions(), **overrides)
    out = output_console(console, opts.quiet)
    check_class_count(adapter, images)
    fp = forward_pass(adapter, images.single_label, opts, out)
    head_fingerprint = state_dict_fingerprint(adapter.head.state_dict())
    key = extraction_key(adapter, images, fp.desc, opts.amp, opts.keep_maps, opts.verify_images, head_fingerprint)
    path = cache_path(resolve_cache_dir(opts.cache_dir), adapter.info.name, images.dataset, images.split, key)
    fingerprints = (adapter.info.weights_fingerprint, head_fingerprint)
    outcome = cached(
        path,
        use_cache=opts.use_cache,
        recompute=opts.recompute,
        load=lambda p: read_cached_statistics(p, key, images, opts.verify_images, fingerprints, out),
        compute=lambda: _compute(fp, images, key, head_fingerprint),
        save=lambda stats, p: save_statistics(stats, p),  # looked up at call time (tests replace it)
        console=out,
        waiting_for="extracting the same statistics",
        file_label="cache file",
    )
    stats = outcome.value
    if not outcome.reused:
        cached_at = str(outcome.path) if outcome.path is not None else None
        stats.info.cache = CacheInfo(cached_at, reused=False, images_key=images_key_name(opts.verify_images) if cached_at else None)
    return stats


def images_key_name(verify_images: bool) -> str:
    """How image files enter the cache key (reported, so a stale-cache risk is visible)."""
    return "content hash" if verify_images else "size+mtime"


def read_cached_statistics(
    path: Path, key: str, images: LabelledImages, verify_images: bool, fingerprints: tuple[str, str], console: Console, model_built: bool = True
) -> ClassStatistics:
    """Statistics from the cache file (refused in one line if stale or damaged). ``fingerprints``
    (weights, head) are part of ``key``, so they also hold for a file written before they were recorded."""
    stats = load_statistics(path, key=key, ids=list(images.ids))
    stats.info.weights_fingerprint = stats.info.weights_fingerprint or fingerprints[0]
    stats.info.head_fingerprint = stats.info.head_fingerprint or fingerprints[1]
    say(console, f"[green]reused cache[/] {path} (no forward pass{'' if model_built else ', no model built'})")
    stats.info.cache = CacheInfo(str(path), reused=True, images_key=images_key_name(verify_images))
    return stats


def _compute(fp: ForwardPass, images: LabelledImages, key: str, head_fingerprint: str) -> ClassStatistics:
    """The forward pass and the statistics' metadata (the caller decides about caching)."""
    adapter, opts = fp.adapter, fp.options
    stats, max_diff, rel_diff = compute_statistics(fp, images)
    stats.info = StatisticsInfo(
        key=key,
        model=adapter.info.name,
        family=adapter.info.family,
        weights=adapter.info.weights,
        weights_fingerprint=adapter.info.weights_fingerprint,
        head_fingerprint=head_fingerprint,
        head=adapter.info.head,
        baseline_source=adapter.info.baseline_source,
        notes=list(adapter.info.notes),
        identity_max_abs_diff=max_diff,
        identity_max_rel_diff=rel_diff,
        dataset=images.dataset,
        split=images.split,
        task="single_label" if images.single_label else "multi_label",
        unknown=images.unknown,
        transform=fp.desc,
        data_notes=list(images.notes),
        data_options=images.options,
        amp=opts.amp,
        device=str(fp.device),
    )
    source = "model's logits" if adapter.info.baseline_source == "model_logits" else "model's own logits (patch-average baseline, not enforced)"
    say(fp.console, f"identity: max |mean_k s - logits| = {max_diff:.2e} ({rel_diff:.2e} of the logits' scale) vs {source}")
    return stats
