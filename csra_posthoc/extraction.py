"""One forward pass per image: per-location scores -> cached per-class statistics.

Checks, on every batch: the scores are finite, and the mean over locations equals the model's
own logits (the identity CSRA's lam = 0 rests on), reported as ``identity_max_abs_diff`` and,
divided by the logits' scale (``max(1, max |logits|)``), ``identity_max_rel_diff``; the check
is relative, as in :func:`~csra_posthoc.adapters.verify_identity`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import torch
from rich.console import Console
from torch.utils.data import DataLoader

from .adapters import ModelAdapter
from .adapters.base import IDENTITY_TOLERANCE, identity_scale
from .cache import cache_path, resolve_cache_dir, key_lock, load_statistics, open_cache_dir, remove_orphans, save_statistics
from .checkpoint import state_dict_fingerprint
from .data import ImageDataset, LabelledImages
from .data.transforms import eval_transform
from .errors import CSRAError, first_line
from .keys import statistics_key
from .options import ExtractOptions
from .progress import progress_bar
from .scoring import CACHED_TEMPERATURES, location_statistics
from .class_statistics import CacheInfo, ClassStatistics, StatisticsInfo


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CSRAError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise CSRAError(f"--device {device}: choose auto, cpu or cuda")
    return torch.device(device)


def check_class_count(adapter: ModelAdapter, images: LabelledImages) -> None:
    if adapter.num_classes != len(images.classes):
        raise CSRAError(
            f"model {adapter.info.name} has {adapter.num_classes} classes but {images.dataset} has "
            f"{len(images.classes)}: pass --checkpoint with a head trained on these classes "
            "(or add --head probe to fit a linear probe on the training split)"
        )


def extraction_key(
    adapter: ModelAdapter, images: LabelledImages, transform: dict, amp: bool, keep_maps: bool, verify_images: bool = False
) -> str:
    return statistics_key(
        model=adapter.info.name,
        weights_fingerprint=adapter.info.weights_fingerprint,
        head_fingerprint=state_dict_fingerprint(adapter.head.state_dict()),
        baseline_source=adapter.info.baseline_source,
        transform=transform,
        dataset=images.dataset,
        split=images.split,
        data_fingerprint=images.fingerprint(content=verify_images),
        temperatures=CACHED_TEMPERATURES,
        amp=amp,
        keep_maps=keep_maps,
    )


def backbone_batches(
    adapter: ModelAdapter,
    images: LabelledImages,
    transform,
    size: int,
    options: ExtractOptions,
    device: torch.device,
    console: Console | None,
    description: str,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(indices, backbone output in fp32)`` per batch, with a progress bar; a broken image is an error."""
    loader = DataLoader(
        ImageDataset(images, transform, size),
        batch_size=options.batch_size,
        num_workers=options.workers,
        shuffle=False,
        pin_memory=device.type == "cuda",
    )
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    amp_ctx = torch.autocast(device_type=device.type, dtype=amp_dtype) if options.amp else nullcontext()
    with progress_bar(console, description, total=len(images)) as advance:
        for index, x, errors in loader:
            bad = [e for e in errors if e]
            if bad:
                raise CSRAError(bad[0])  # names the file and the fix
            try:
                with amp_ctx:
                    raw = adapter.forward_backbone(x.to(device, non_blocking=True))
            except (RuntimeError, AssertionError, ValueError) as exc:
                raise CSRAError(
                    f"model {adapter.info.name} failed on a {tuple(x.shape[1:])} input ({first_line(exc)}); try another --img-size"
                ) from None
            yield index, raw.float()
            advance(len(index))


@torch.no_grad()
def compute_statistics(
    adapter: ModelAdapter,
    images: LabelledImages,
    transform,
    size: int,
    options: ExtractOptions,
    device: torch.device,
    console: Console | None = None,
) -> tuple[ClassStatistics, float, float]:
    """Run the model over ``images``; returns the statistics and the identity's max abs and relative diffs (no caching)."""
    adapter = adapter.to(device).eval()
    parts: dict[str, list[torch.Tensor]] = {"avg": [], "max": [], "attn": [], "logits": [], "maps": []}
    max_diff, max_logit = 0.0, 0.0
    batches = backbone_batches(adapter, images, transform, size, options, device, console, f"extract {adapter.info.name}")
    for index, raw in batches:
        s, logits = adapter.scores_from_backbone(raw)
        if not torch.isfinite(s).all() or not torch.isfinite(logits).all():
            row = int((~torch.isfinite(s)).flatten(1).any(1).nonzero()[0]) if not torch.isfinite(s).all() else 0
            raise CSRAError(
                f"model {adapter.info.name} produced NaN/inf scores on {images.paths[int(index[row])]} "
                f"at input size {size}; check the weights, the input size, or drop --amp"
            )
        stats = location_statistics(s)
        max_diff = max(max_diff, float((stats["avg"] - logits).abs().max()))
        max_logit = max(max_logit, float(logits.abs().max()))
        for name in ("avg", "max", "attn"):
            parts[name].append(stats[name].cpu())
        parts["logits"].append(logits.cpu())
        if options.keep_maps:
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
        maps=torch.cat(parts["maps"]) if options.keep_maps else None,
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
    console = console or Console(stderr=True)
    check_class_count(adapter, images)
    if opts.batch_size < 1 or opts.workers < 0:
        raise CSRAError("--batch-size must be >= 1 and --workers >= 0")
    if opts.img_size is not None and opts.img_size < 16:
        raise CSRAError(f"--img-size {opts.img_size}: too small (at least 16)")
    transform, transform_desc = eval_transform(adapter.data_config, opts.img_size, images.single_label, opts.transform)  # type: ignore[arg-type]
    size = transform_desc["size"]
    key = extraction_key(adapter, images, transform_desc, opts.amp, opts.keep_maps, opts.verify_images)
    cache_dir = resolve_cache_dir(opts.cache_dir)
    path = cache_path(cache_dir, adapter.info.name, images.dataset, images.split, key)
    if opts.use_cache and not opts.recompute and path.is_file():  # reading needs no write access
        remove_orphans(cache_dir)
        return _reuse(path, key, images, opts, console, adapter)
    use_cache = opts.use_cache and usable_cache_dir(cache_dir, console)
    if not use_cache:
        stats = _compute(adapter, images, transform, size, transform_desc, key, opts, console)
        stats.info.cache = CacheInfo()
        return stats

    def waiting(lock: Path) -> None:
        console.print(f"[yellow]waiting for another run extracting the same statistics[/] (lock {lock})", soft_wrap=True)

    with key_lock(path, waiting):
        if not opts.recompute and path.is_file():  # the run we waited for wrote it
            return _reuse(path, key, images, opts, console, adapter)
        stats = _compute(adapter, images, transform, size, transform_desc, key, opts, console)
        try:
            save_statistics(stats, path)
        except OSError as exc:
            console.print(f"[yellow]warning:[/] could not write the cache file {path} ({first_line(exc, 120)}): going on without caching", soft_wrap=True)
            stats.info.cache = CacheInfo()
            return stats
    stats.info.cache = CacheInfo(str(path), reused=False, images_key=images_key_name(opts.verify_images))
    return stats


def images_key_name(verify_images: bool) -> str:
    """How image files enter the cache key (reported, so a stale-cache risk is visible)."""
    return "content hash" if verify_images else "size+mtime"


_warned_cache_dirs: set[str] = set()  # the probe and the extraction of one run share the warning


def usable_cache_dir(cache_dir: Path, console: Console) -> bool:
    """True when the cache folder can be written; otherwise one warning, and the run goes on uncached."""
    problem = open_cache_dir(cache_dir)
    if problem is not None and str(cache_dir) not in _warned_cache_dirs:
        _warned_cache_dirs.add(str(cache_dir))
        console.print(f"[yellow]warning:[/] cache dir {cache_dir} is not writable ({problem}): going on without caching", soft_wrap=True)
    return problem is None


def _reuse(path: Path, key: str, images: LabelledImages, opts: ExtractOptions, console: Console, adapter: ModelAdapter) -> ClassStatistics:
    fingerprints = (adapter.info.weights_fingerprint, state_dict_fingerprint(adapter.head.state_dict()))
    return read_cached_statistics(path, key, images, opts.verify_images, fingerprints, console)


def read_cached_statistics(
    path: Path, key: str, images: LabelledImages, verify_images: bool, fingerprints: tuple[str, str], console: Console, model_built: bool = True
) -> ClassStatistics:
    """Statistics from the cache file (refused in one line if stale or damaged). ``fingerprints``
    (weights, head) are part of ``key``, so they also hold for a file written before they were recorded."""
    stats = load_statistics(path, key=key, ids=list(images.ids))
    stats.info.weights_fingerprint = stats.info.weights_fingerprint or fingerprints[0]
    stats.info.head_fingerprint = stats.info.head_fingerprint or fingerprints[1]
    console.print(f"[green]reused cache[/] {path} (no forward pass{'' if model_built else ', no model built'})")
    stats.info.cache = CacheInfo(str(path), reused=True, images_key=images_key_name(verify_images))
    return stats


def _compute(
    adapter: ModelAdapter,
    images: LabelledImages,
    transform,
    size: int,
    transform_desc: dict,
    key: str,
    opts: ExtractOptions,
    console: Console,
) -> ClassStatistics:
    """The forward pass and the statistics' metadata (the caller decides about caching)."""
    dev = resolve_device(opts.device)
    stats, max_diff, rel_diff = compute_statistics(adapter, images, transform, size, opts, dev, console)
    stats.info = StatisticsInfo(
        key=key,
        model=adapter.info.name,
        family=adapter.info.family,
        weights=adapter.info.weights,
        weights_fingerprint=adapter.info.weights_fingerprint,
        head_fingerprint=state_dict_fingerprint(adapter.head.state_dict()),
        head=adapter.info.head,
        baseline_source=adapter.info.baseline_source,
        notes=list(adapter.info.notes),
        identity_max_abs_diff=max_diff,
        identity_max_rel_diff=rel_diff,
        dataset=images.dataset,
        split=images.split,
        task="single_label" if images.single_label else "multi_label",
        unknown=images.unknown,
        transform=transform_desc,
        data_notes=list(images.notes),
        data_options=images.options,
        amp=opts.amp,
        device=str(dev),
    )
    source = "model's logits" if adapter.info.baseline_source == "model_logits" else "model's own logits (patch-average baseline, not enforced)"
    console.print(f"identity: max |mean_k s - logits| = {max_diff:.2e} ({rel_diff:.2e} of the logits' scale) vs {source}")
    return stats
