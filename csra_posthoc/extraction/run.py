"""One forward pass per image: per-location scores -> cached per-class statistics.

Checks, on every batch: the scores are finite, and the mean over locations equals the model's
own logits (the identity CSRA's lam = 0 rests on), reported as ``identity_max_abs_diff`` and,
divided by the logits' scale (``max(1, max |logits|)``), ``identity_max_rel_diff``; the check
is relative, as in :func:`~csra_posthoc.models.verify_identity`.

The stages: :mod:`.runtime` (device, amp, threads, weight layout) -> :mod:`.batches` (the loop
over the images) -> :func:`compute_statistics` here (per-batch statistics, gathered across ranks)
-> :func:`extract` (the cache key, reuse or compute, write).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..cache.keys import statistics_key
from ..cache.store import cache_path, cached, load_statistics, resolve_cache_dir, save_statistics
from ..data import LabelledImages
from ..errors import CSRAError
from ..heads.scoring import CACHED_TEMPERATURES, location_statistics
from ..log import output_console, say
from ..models import ModelAdapter
from ..models.base import IDENTITY_TOLERANCE, identity_scale
from ..models.checkpoint import state_dict_fingerprint
from ..models.nonlinear import NONLINEAR_TOLERANCE
from ..options import ExtractOptions, amp_precision
from ..text import safe
from .backends import make_backend
from .batches import ForwardPass, backbone_batches, for_each_batch, forward_pass
from .distributed import (
    DistContext,
    Shard,
    all_reduce_max,
    current,
    gather_tensors,
    main_decides_reuse,
    shard_for,
    stage,
)
from .runtime import on_device
from .statistics import CacheInfo, ClassStatistics, StatisticsInfo
from .test_pool import pool_scores, resolve_test_pool, train_grid, unsupported


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
    amp: bool | str,
    keep_maps: bool,
    verify_images: bool = False,
    head_fingerprint: str | None = None,
    cache_dtype: str = "float32",
    test_pool: int | None = None,
) -> str:
    """The statistics key of a built model (``head_fingerprint``: when the caller has it already;
    ``transform``: :attr:`ForwardPass.desc`, the decode policy folded in; ``test_pool``: the
    test-time pooling statistic's training size, :func:`pool_setting`)."""
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
        cache_dtype=cache_dtype,
        location_head=adapter.info.location_head,
        test_pool=test_pool,
    )


def pool_setting(fp: ForwardPass) -> Any:
    """timm's test-time pooling for this pass (:func:`csra_posthoc.extraction.test_pool.resolve_test_pool`), or None."""
    return resolve_test_pool(fp.options.test_pool, fp.options.train_size, fp.size, fp.adapter.data_config.input_size)


FLUSH_EVERY = 8  # batches of statistics kept on the device between two copies to the host


class _Rows:
    """Per-batch statistics gathered on the compute device and moved to the host every
    :data:`FLUSH_EVERY` batches with non-blocking copies: no host sync per batch, and the device
    holds a few batches of statistics (small: ``B x C x 10`` floats each), never the whole split.
    The non-finite check runs at each flush, on the device, naming the first bad image."""

    def __init__(self, names: tuple[str, ...], device: torch.device, on_bad: Callable[[int], None]) -> None:
        self.names, self.device, self.on_bad = names, device, on_bad
        self.pending: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.host: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.indices: list[torch.Tensor] = []  # positions in the dataset of the pending rows

    def add(self, index: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        for n in self.names:
            self.pending[n].append(values[n])
        self.indices.append(index)
        if len(self.indices) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self.indices:
            return
        block = {n: torch.cat(self.pending[n]) for n in self.names}
        finite = (
            torch.isfinite(block["avg"]).all(1)
            & torch.isfinite(block["max"]).all(1)
            & torch.isfinite(block["logits"]).all(1)
        )
        if not bool(finite.all()):  # one sync per flush, not per batch
            self.on_bad(int(torch.cat(self.indices)[int((~finite).nonzero()[0])]))
        for n in self.names:
            self.host[n].append(block[n].to("cpu", non_blocking=True))
            self.pending[n].clear()
        self.indices.clear()

    def result(self) -> dict[str, torch.Tensor]:
        self.flush()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the non-blocking copies have landed
        return {n: torch.cat(self.host[n]) if self.host[n] else torch.empty(0) for n in self.names}


def score_grid(adapter: ModelAdapter, raw: torch.Tensor | None, locations: int) -> list[int] | None:
    """``[h, w]`` of the per-location scores' ``locations`` = h * w: from the adapter's feature map
    (``raw``: the backbone's output, eager), else (an exported backend hands back flat scores) the
    square grid when ``locations`` is a square; None when unknown (no pointing game then)."""
    if raw is not None:
        with torch.autocast(device_type=raw.device.type, enabled=False):
            h, w = (int(v) for v in adapter.feature_map(raw.float()).shape[-2:])
        return [h, w] if h * w == locations else None
    side = math.isqrt(locations)
    return [side, side] if side * side == locations else None


@torch.no_grad()
def compute_statistics(
    fp: ForwardPass, images: LabelledImages, ctx: DistContext | None = None
) -> tuple[ClassStatistics | None, float, float]:
    """Run the model over ``images``; returns the statistics and the identity's max abs and relative diffs (no caching).

    Under torchrun each rank computes its shard and rank 0 receives every rank's rows in the
    original image order (the statistics equal a single process's); the other ranks get None.
    """
    adapter, size = fp.adapter, fp.size
    ctx = ctx or current()
    keep_maps = fp.options.keep_maps
    diff = torch.zeros((), device=fp.device)
    scale = torch.zeros((), device=fp.device)
    maps: list[torch.Tensor] = []
    backend = None
    if fp.options.backend != "eager":  # eager: the adapter's own backbone and head, below
        with on_device(adapter, fp.device):  # export needs eval mode; the caller's mode comes back
            backend = make_backend(adapter, fp.options.backend, img_size=size, threads=fp.threads)

    def non_finite(index: int) -> None:
        raise CSRAError(
            f"model {adapter.info.name} produced NaN/inf scores on {images.paths[index]} "
            f"at input size {size}; check the weights, the input size, or run without amp (amp=False)",
            param="amp" if fp.options.amp else None,
        )

    pool, pool_window, pool_note = _test_pool_window(fp)
    names = ("avg", "max", "attn", "logits", "argmax") + (("test_pool",) if pool_window is not None else ())
    rows = _Rows(names, fp.device, non_finite)
    grid: list[int] | None = None
    nonlinear = adapter.info.location_head == "nonlinear"  # avg := the logits; checked: head(pooled) == logits

    def one_batch(index: torch.Tensor, out: Any) -> None:
        nonlocal diff, scale, grid
        s, logits = out if backend is not None else adapter.scores_from_backbone(out)
        if grid is None:  # once: the feature map's (h, w), which the flat argmax indexes row-major
            grid = score_grid(adapter, out if backend is None else None, int(s.shape[-1]))
        stats = location_statistics(s)
        if nonlinear:  # models.nonlinear: the baseline is the logits; the self-check is the head on the pooled vector
            check = logits if backend is not None else adapter.head.pooled(adapter.feature_map(out.float()))  # type: ignore[operator]
            stats["avg"] = logits
        else:
            check = stats["avg"]
        diff = torch.maximum(diff, (check - logits).abs().amax())  # on the device: no sync per batch
        scale = torch.maximum(scale, logits.abs().amax())
        extra = {}
        if pool_window is not None:  # timm's test-time pooling, from the same scores (extraction.test_pool)
            if grid is None:
                raise CSRAError(
                    f"test_pool: {adapter.info.name}'s per-location scores have no known (h, w) grid here; run with test_pool=False",
                    param="test_pool",
                )
            extra["test_pool"] = pool_scores(s, grid, pool_window)
        rows.add(
            index, {**stats, **extra, "logits": logits, "argmax": s.argmax(dim=-1).to(torch.int32)}
        )  # the max term's location
        if keep_maps:  # the largest tensor: to the host every batch
            maps.append(s.half().cpu())

    batches = backbone_batches(fp, images, f"extract {adapter.info.name}", "extract", ctx, forward=backend)
    for_each_batch(batches, one_batch)
    with stage("extract", ctx):  # the last flush's non-finite check
        mine = rows.result()
    max_diff, max_logit = all_reduce_max([float(diff), float(scale)], ctx)  # the whole split's, on every rank
    rel_diff = max_diff / identity_scale(max_logit)
    with stage("identity check", ctx):  # the same verdict on every rank: said once
        if nonlinear and rel_diff > NONLINEAR_TOLERANCE:
            raise CSRAError(
                f"model {adapter.info.name}: its non-linear head applied to the pooled features differs from the model's logits by "
                f"{max_diff:.3g} ({rel_diff:.2g} of the logits' scale, > {NONLINEAR_TOLERANCE:g}) on these inputs, so it is not the model's head"
            )
        if not nonlinear and adapter.info.baseline_source == "model_logits" and rel_diff > IDENTITY_TOLERANCE:
            raise CSRAError(
                f"model {adapter.info.name}: mean of per-location scores differs from the model's logits by "
                f"{max_diff:.3g} ({rel_diff:.2g} of the logits' scale, > {IDENTITY_TOLERANCE:g}), so its head is not "
                "linear after average pooling on these inputs and CSRA's identity does not hold"
            )
    fields: dict[str, torch.Tensor | None] = {**mine, "maps": torch.cat(maps) if keep_maps else None}
    part = (
        shard_for(ctx, len(images), align=fp.options.batch_size)
        if ctx.active
        else Shard(0, 1, 0, len(images), len(images))
    )
    gathered = gather_tensors(fields, part, ctx)  # rank order = image order
    if gathered is None:
        return None, max_diff, rel_diff
    pool_info = (
        {"train_size": pool.train_size, "window": list(pool_window)}
        if pool is not None and pool_window is not None
        else None
    )
    result = ClassStatistics(
        info=StatisticsInfo(grid=grid, test_pool=pool_info, notes=[pool_note] if pool_note else []),
        argmax=gathered["argmax"],
        test_pool=gathered.get("test_pool"),
        ids=list(images.ids),
        classes=list(images.classes),
        labels=images.labels.clone(),
        avg=gathered["avg"],  # type: ignore[arg-type]
        max=gathered["max"],  # type: ignore[arg-type]
        attn=gathered["attn"],  # type: ignore[arg-type]
        temperatures=CACHED_TEMPERATURES,
        logits=gathered["logits"],  # type: ignore[arg-type]
        maps=gathered["maps"],
    )
    return result, max_diff, rel_diff


def _test_pool_window(fp: ForwardPass) -> tuple[Any, tuple[int, int] | None, str | None]:
    """The test-time pooling setting, its window (the feature map at the training size) and, when the
    head cannot have it, the note that says so (an error when it was asked for explicitly)."""
    pool = pool_setting(fp)
    if pool is None:
        return None, None, None
    reason = unsupported(fp.adapter.head, fp.adapter.info.baseline_source)
    if reason is not None:
        if pool.explicit:
            raise CSRAError(f"test_pool: {fp.adapter.info.name}: {reason}; run without test_pool", param="test_pool")
        return pool, None, f"no test-pool row (timm's test-time pooling): {reason}"
    with on_device(fp.adapter, fp.device):
        return pool, train_grid(fp.adapter, pool.train_size, fp.device), None


def extract(
    adapter: ModelAdapter,
    images: LabelledImages,
    options: ExtractOptions | None = None,
    *,
    console: Console | None = None,
    **overrides,
) -> ClassStatistics | None:
    """Statistics for ``adapter`` on ``images``, from the cache when the key matches.

    ``overrides`` are :class:`ExtractOptions` fields (``extract(adapter, images, img_size=448)``).
    Under torchrun every rank calls it; rank 0 alone reads, locks and writes the cache (under the
    full dataset's key, the single-process one) and returns the statistics; the other ranks
    extract their shard and return None.
    """
    opts = replace(options or ExtractOptions(), **overrides)
    out = output_console(console, opts.quiet)
    check_class_count(adapter, images)
    fp = forward_pass(adapter, images.single_label, opts, out)
    head_fingerprint = state_dict_fingerprint(adapter.head.state_dict())
    pool = pool_setting(fp)
    key = extraction_key(
        adapter, images, fp.desc, amp_precision(opts, fp.device.type) or False, opts.keep_maps, opts.verify_images, head_fingerprint, opts.cache_dtype,
        pool.key() if pool is not None else None,
    )  # fmt: skip
    path = cache_path(resolve_cache_dir(opts.cache_dir), adapter.info.name, images.dataset, images.split, key)
    fingerprints = (adapter.info.weights_fingerprint, head_fingerprint)
    ctx = current()
    recompute = opts.recompute
    if ctx.active:  # rank 0 decides reuse; the others follow (no rank reads or locks the cache but rank 0)
        reuse = main_decides_reuse(ctx, lambda: opts.use_cache and not opts.recompute and path.is_file())
        if not ctx.is_main:
            if not reuse:
                _compute(fp, images, key, head_fingerprint, ctx)
            return None
        recompute = recompute or not reuse  # decided: a file written meanwhile is overwritten, not half-joined
    outcome = cached(
        path,
        use_cache=opts.use_cache,
        recompute=recompute,
        load=partial(
            read_cached_statistics,
            key=key,
            images=images,
            verify_images=opts.verify_images,
            fingerprints=fingerprints,
            console=out,
        ),
        compute=partial(_compute, fp, images, key, head_fingerprint, ctx),
        save=_save,
        console=out,
        waiting_for="extracting the same statistics",
        file_label="cache file",
    )
    stats = outcome.value
    assert stats is not None  # rank 0 or a single process
    if not outcome.reused:
        cached_at = str(outcome.path) if outcome.path is not None else None
        stats.info.cache = CacheInfo(
            cached_at, reused=False, images_key=images_key_name(opts.verify_images) if cached_at else None
        )
    return stats


def images_key_name(verify_images: bool) -> str:
    """How image files enter the cache key (reported, so a stale-cache risk is visible)."""
    return "content hash" if verify_images else "size+mtime"


def read_cached_statistics(
    path: Path,
    key: str,
    images: LabelledImages,
    verify_images: bool,
    fingerprints: tuple[str, str],
    console: Console,
    model_built: bool = True,
) -> ClassStatistics:
    """Statistics from the cache file (refused in one line if stale or damaged). ``fingerprints``
    (weights, head) are part of ``key``, so they also hold for a file written before they were recorded."""
    stats = load_statistics(path, key=key, ids=list(images.ids))
    stats.info.weights_fingerprint = stats.info.weights_fingerprint or fingerprints[0]
    stats.info.head_fingerprint = stats.info.head_fingerprint or fingerprints[1]
    say(console, f"[green]reused cache[/] {safe(path)} (no forward pass{'' if model_built else ', no model built'})")
    stats.info.cache = CacheInfo(str(path), reused=True, images_key=images_key_name(verify_images))
    return stats


def _save(stats: ClassStatistics | None, path: Path) -> None:
    """Write computed statistics to the cache file (a single process and rank 0 always have them)."""
    if stats is not None:
        save_statistics(stats, path)


def round_to_half(stats: ClassStatistics, model: str) -> None:
    """The float statistics rounded to float16 in place (kept as float32 tensors): this run sweeps
    exactly what a later run reads back from a float16 cache file."""
    for name in ("avg", "max", "attn", "logits", "test_pool"):
        if getattr(stats, name) is None:
            continue
        rounded = getattr(stats, name).half()
        if not torch.isfinite(rounded).all():
            raise CSRAError(
                f"cache_dtype float16: {model}'s {name} statistics exceed float16's range (65504); use float32",
                param="cache_dtype",
            )
        setattr(stats, name, rounded.float())


def _compute(
    fp: ForwardPass, images: LabelledImages, key: str, head_fingerprint: str, ctx: DistContext | None = None
) -> ClassStatistics | None:
    """The forward pass and the statistics' metadata (the caller decides about caching); None on ranks but 0."""
    adapter, opts = fp.adapter, fp.options
    stats, max_diff, rel_diff = compute_statistics(fp, images, ctx)
    if stats is None:
        return None
    if opts.cache_dtype == "float16":
        round_to_half(stats, adapter.info.name)
    stats.info = StatisticsInfo(
        key=key,
        model=adapter.info.name,
        family=adapter.info.family,
        weights=adapter.info.weights,
        weights_fingerprint=adapter.info.weights_fingerprint,
        head_fingerprint=head_fingerprint,
        head=adapter.info.head,
        baseline_source=adapter.info.baseline_source,
        location_head=adapter.info.location_head,
        notes=list(adapter.info.notes) + list(stats.info.notes),
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
        amp_dtype=amp_precision(opts, fp.device.type),
        device=str(fp.device),
        grid=stats.info.grid,
        test_pool=stats.info.test_pool,
        cache_dtype=opts.cache_dtype,
    )
    source = (
        "model's logits"
        if adapter.info.baseline_source == "model_logits"
        else "model's own logits (patch-average baseline, not enforced)"
    )
    ranks = (ctx or current()).world_size
    over = f", max over {ranks} ranks" if ranks > 1 else ""
    if adapter.info.location_head == "nonlinear":
        check = (
            "n/a with an exported backend (checked when the model was built)"
            if opts.backend != "eager"
            else f"{max_diff:.2e} ({rel_diff:.2e} of the logits' scale{over})"
        )
        say(
            fp.console,
            f"non-linear head: baseline = the model's logits; self-check max |head(mean_k x) - logits| = {check}",
        )
    else:
        say(
            fp.console,
            f"identity: max |mean_k s - logits| = {max_diff:.2e} ({rel_diff:.2e} of the logits' scale{over}) vs {source}",
        )
    return stats
