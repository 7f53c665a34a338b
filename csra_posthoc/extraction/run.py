"""One forward pass per image: per-location scores -> cached per-class statistics.

Checks, on every batch: the scores are finite, and the mean over locations equals the model's
own logits (the identity CSRA's lam = 0 rests on), reported as ``identity_max_abs_diff`` and,
divided by the logits' scale (``max(1, max |logits|)``), ``identity_max_rel_diff``; the check
is relative, as in :func:`~csra_posthoc.models.verify_identity`.

:func:`backbone_batches` is the one loop over a dataset: the statistics here and the probe's
features (:func:`csra_posthoc.extraction.probe.pooled_features`) both consume it, through a
:class:`ForwardPass` (model, device, transform and options, prepared once).

The loop's input pipeline (:func:`input_batches`): workers decode (``decode``: pil, or JPEG draft)
and resize, and hand back uint8 ``(H, W, 3)`` images; the main process normalises each batch at
once into ``channels_last`` (bit-equal to the model's transform: :mod:`csra_posthoc.data.decode`).
The forward runs under ``torch.inference_mode`` with ``channels_last`` weights (eager backend), on
CPU with the caller's torch threads less one per worker (the workers decode on those cores); the
caller's thread count and weight layout are restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from rich.console import Console
from torch.utils.data import DataLoader, Dataset, Subset

from ..cache.keys import statistics_key
from ..cache.store import cache_path, cached, resolve_cache_dir, save_statistics
from ..cache.store import load_statistics as load_statistics
from ..cache.store import usable_cache_dir as usable_cache_dir
from ..data import ImageDataset, LabelledImages
from ..data.decode import decode_key, image_loader, normalize_batch, pil_stage
from ..data.transforms import eval_transform
from ..errors import CSRAError, first_line
from ..heads.scoring import CACHED_TEMPERATURES, location_statistics
from ..log import output_console, say
from ..machine import available_cores, other_processes_load
from ..models import ModelAdapter
from ..models.base import IDENTITY_TOLERANCE, identity_scale
from ..models.checkpoint import state_dict_fingerprint
from ..models.nonlinear import NONLINEAR_TOLERANCE
from ..options import ExtractOptions, amp_precision
from ..progress import progress_bar
from ..text import safe
from .distributed import DistContext, Shard, all_reduce_max, broadcast_object, check_status, current, gather_tensors, lockstep_steps, shard_for, stage
from .statistics import CacheInfo, ClassStatistics, StatisticsInfo


def resolve_device(device: str) -> torch.device:
    """``device`` as a torch device; ``cuda`` where CUDA does not exist is one line (no silent CPU fallback)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CSRAError(f"device {device}: CUDA is not available here (this PyTorch sees no GPU); use device='cpu' (or device='auto')", param="device")
    if device != "cpu" and not device.startswith("cuda"):
        raise CSRAError(f"--device {device}: choose auto, cpu or cuda", param="device")
    return torch.device(device)


AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def amp_dtype(options: ExtractOptions, device: torch.device) -> torch.dtype | None:
    """The backbone's autocast dtype, None without amp (see :func:`csra_posthoc.options.amp_precision`)."""
    name = amp_precision(options, device.type)
    return None if name is None else AMP_DTYPES[name]


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
    from .test_pool import resolve_test_pool

    return resolve_test_pool(fp.options.test_pool, fp.options.train_size, fp.size, fp.adapter.data_config.input_size)


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

    @property
    def channels_last(self) -> bool:
        """Eager PyTorch runs convolutions in channels_last (same numbers to float32 rounding, faster
        on CPU); ONNX Runtime takes plain NCHW."""
        return self.options.backend == "eager"

    @cached_property
    def threads(self) -> int | None:
        """:func:`loop_threads`, decided once per run: one CPU-load sample, and an ONNX Runtime
        session and the loop around it agree."""
        return loop_threads(self.options, self.device)


def forward_pass(adapter: ModelAdapter, single_label: bool, options: ExtractOptions, console: Console) -> ForwardPass:
    """Check the loop's options and build the transform and the device, once per run."""
    if options.batch_size < 1:
        raise CSRAError(f"batch_size {options.batch_size}: must be >= 1", param="batch_size")
    if options.workers < 0:
        raise CSRAError(f"workers {options.workers}: must be >= 0", param="workers")
    if options.img_size is not None and options.img_size < 16:
        raise CSRAError(f"img_size {options.img_size}: too small (at least 16)", param="img_size")
    transform, desc = eval_transform(adapter.data_config, options.img_size, single_label, options.transform)
    device = resolve_device(options.device)
    if options.backend == "onnxruntime" and device.type != "cpu":
        raise CSRAError(f"backend onnxruntime runs on the CPU here, not {device}; pass device='cpu' or use the eager backend", param="backend")
    return ForwardPass(adapter, transform, decode_key(options.decode, desc), device, options, console)  # draft decoding enters the cache keys


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


BUSY_CORES = 0.5  # other processes' load (in cores) above which the loop caps its torch threads


def loop_threads(options: ExtractOptions, device: torch.device, other_load: Callable[[], float | None] | None = None) -> int | None:
    """Torch threads for the loop: ``threads`` when given; else, on CPU with workers, the caller's
    count while other processes leave the cores free (the workers' decoding and the forward share
    them well), capped at the cores nobody else uses when others keep them busy (oversubscribed
    cores slowed the forward about 3x: :mod:`csra_posthoc.machine`); None: unchanged."""
    if options.threads is not None:
        return options.threads
    if device.type != "cpu" or options.workers == 0:
        return None
    load = (other_load or other_processes_load)()
    if load is None or load < BUSY_CORES:
        return None
    return max(1, min(torch.get_num_threads(), available_cores() - options.workers - round(load)))


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block, then the caller's count again (no global side effect)."""
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def weights_channels_last(module: nn.Module, enabled: bool) -> Iterator[None]:
    """4-D weights in channels_last for the block, then back to the layout they had (the caller's
    model is converted in place rather than copied, as :func:`on_device` moves it)."""
    four_d = [p for p in module.parameters() if p.dim() == 4]
    if not enabled or not four_d or all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d):
        yield
        return
    module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        module.to(memory_format=torch.contiguous_format)


def image_dataset(fp: ForwardPass, images: LabelledImages) -> ImageDataset:
    """The dataset the loop's workers read: decode (``fp.options.decode``) and the transform's
    resize / crop to uint8 ``(H, W, 3)`` (the full float transform for timm's own crop modes)."""
    stage = pil_stage(fp.desc)
    loader = image_loader(fp.options.decode, fp.desc)
    return ImageDataset(images, stage or fp.transform, fp.size, loader=loader, uint8=stage is not None)


def input_batches(fp: ForwardPass, images: LabelledImages, indices: Sequence[int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(indices, normalised float32 inputs on fp.device)`` per batch; a broken image is an error.

    Values bit-equal to ``fp.transform`` per image (with ``decode="pil"``); ``channels_last``
    layout for the eager backend. uint8 batches cross the workers' shared memory and the
    host-to-device copy (a quarter of float32's bytes) and are normalised where they land.
    """
    opts, device = fp.options, fp.device
    dataset: Dataset = image_dataset(fp, images)
    if indices is not None:  # this rank's shard (torchrun)
        dataset = Subset(dataset, list(indices))
    loader = DataLoader(
        dataset,
        batch_size=opts.batch_size,
        num_workers=opts.workers,
        shuffle=False,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if opts.workers > 0 else None,  # decoded batches queued ahead of a slow batch
        generator=torch.Generator(),  # the loader draws its workers' base seed from this, not the caller's RNG
    )
    mean, std = tuple(fp.desc["mean"]), tuple(fp.desc["std"])
    for index, x, errors in loader:
        bad = [e for e in errors if e]
        if bad:
            raise CSRAError(bad[0])  # names the file and the fix
        x = x.to(device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = normalize_batch(x, mean, std, channels_last=fp.channels_last)
        elif fp.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield index, x


def backbone_batches(
    fp: ForwardPass,
    images: LabelledImages,
    description: str,
    stage_name: str = "extract",
    ctx: DistContext | None = None,
    forward: Callable[[torch.Tensor], Any] | None = None,
) -> Generator[tuple[torch.Tensor, Any], None, None]:
    """``(indices, backbone output in fp32)`` per batch, with a progress bar; a broken image is an error.

    The one loop over a dataset; the model is on ``fp.device`` (in eval mode) while it runs.
    Under torchrun each rank loops over its own :func:`~csra_posthoc.extraction.distributed.shard` of the
    images (a ``Subset``: no image padded in twice, unlike ``DistributedSampler``), all ranks the
    same number of steps, and meets the others in a status check after every batch, so one
    rank's error (a bad image, out of memory) stops every rank at once as one line. A consumer
    whose own per-batch work fails throws the error back in (:func:`for_each_batch`) so that it
    reaches that check too. Indices are positions in ``images`` (the full dataset's).
    ``forward``: what to run per batch instead of the backbone (an ONNX Runtime backend's
    ``x -> (s, logits)``, yielded as it returns it). Inputs come from :func:`input_batches`.
    """
    opts, device, adapter = fp.options, fp.device, fp.adapter
    ctx = ctx or current()
    part = shard_for(ctx, len(images), align=fp.options.batch_size) if ctx.active else Shard(0, 1, 0, len(images), len(images))
    dtype = amp_dtype(opts, device)
    amp_ctx = torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()
    label = safe(description) if not ctx.active else f"{safe(description)} ({ctx.world_size} ranks)"
    run = forward or (torch.compile(adapter.forward_backbone, dynamic=False) if opts.compile else adapter.forward_backbone)
    with (
        torch_threads(fp.threads),
        on_device(adapter, device),
        weights_channels_last(adapter, fp.channels_last and forward is None),
        progress_bar(fp.console, label, total=part.total) as advance,  # the whole split: rank 0 counts every rank's images
    ):
        batches = input_batches(fp, images, part.indices if ctx.active else None)
        for step in range(lockstep_steps(part, opts.batch_size)):
            error: Exception | None = None
            try:
                batch = next(batches, None)  # None: this rank's shard is done (it is one image short)
                if batch is not None:
                    index, x = batch
                    try:
                        with torch.inference_mode(), amp_ctx:
                            out = run(x)
                    except (RuntimeError, AssertionError, ValueError) as exc:
                        if isinstance(exc, torch.OutOfMemoryError):
                            raise
                        if opts.compile and forward is None and _compiler_failed(exc):
                            raise CSRAError(f"compile: torch.compile failed ({first_line(exc)}); run without compile", param="compile") from None
                        raise CSRAError(
                            f"model {adapter.info.name} failed on a {tuple(x.shape[1:])} input ({first_line(exc)}); try another img_size",
                            param="img_size",
                        ) from None
                    yield index, out.float() if isinstance(out, torch.Tensor) else out
                    if not ctx.active:
                        advance(len(index))
            except Exception as exc:
                error = exc
            check_status(stage_name, ctx, error)  # single process: re-raises ``error`` as is
            if ctx.active:  # every rank finished this step: its images on all of them
                advance(sum(min(opts.batch_size, max(0, size - step * opts.batch_size)) for size in part.sizes))


def for_each_batch(batches: Generator[tuple[torch.Tensor, torch.Tensor], None, None], fn: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
    """Feed every batch of :func:`backbone_batches` to ``fn``; an error in ``fn`` is thrown back
    into the loop, so under torchrun the other ranks stop at once instead of at the timeout."""
    for index, raw in batches:
        try:
            fn(index, raw)
        except Exception as exc:
            batches.throw(exc)
            raise  # not reached: the loop re-raises what it is thrown


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
        finite = torch.isfinite(block["avg"]).all(1) & torch.isfinite(block["max"]).all(1) & torch.isfinite(block["logits"]).all(1)
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


def _compiler_failed(exc: BaseException) -> bool:
    """An error raised by torch.compile's machinery (dynamo / inductor), not by the model."""
    return type(exc).__module__.startswith(("torch._dynamo", "torch._inductor"))


@torch.no_grad()
def compute_statistics(fp: ForwardPass, images: LabelledImages, ctx: DistContext | None = None) -> tuple[ClassStatistics | None, float, float]:
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
        from .backends import make_backend

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

    from .test_pool import pool_scores

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
                    f"test_pool: {adapter.info.name}'s per-location scores have no known (h, w) grid here; run with test_pool=False", param="test_pool"
                )
            extra["test_pool"] = pool_scores(s, grid, pool_window)
        rows.add(index, {**stats, **extra, "logits": logits, "argmax": s.argmax(dim=-1).to(torch.int32)})  # the max term's location
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
    part = shard_for(ctx, len(images), align=fp.options.batch_size) if ctx.active else Shard(0, 1, 0, len(images), len(images))
    gathered = gather_tensors(fields, part, ctx)  # rank order = image order
    if gathered is None:
        return None, max_diff, rel_diff
    pool_info = {"train_size": pool.train_size, "window": list(pool_window)} if pool is not None and pool_window is not None else None
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
    from .test_pool import train_grid, unsupported

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
        reuse = broadcast_object(ctx.is_main and opts.use_cache and not opts.recompute and path.is_file(), ctx)
        if not ctx.is_main:
            if not reuse:
                _compute(fp, images, key, head_fingerprint, ctx)
            return None
        recompute = recompute or not reuse  # decided: a file written meanwhile is overwritten, not half-joined
    outcome = cached(
        path,
        use_cache=opts.use_cache,
        recompute=recompute,
        load=lambda p: read_cached_statistics(p, key, images, opts.verify_images, fingerprints, out),
        compute=lambda: _compute(fp, images, key, head_fingerprint, ctx),
        save=lambda stats, p: save_statistics(stats, p) if stats is not None else None,  # looked up at call time (tests replace it)
        console=out,
        waiting_for="extracting the same statistics",
        file_label="cache file",
    )
    stats = outcome.value
    assert stats is not None  # rank 0 or a single process
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
    say(console, f"[green]reused cache[/] {safe(path)} (no forward pass{'' if model_built else ', no model built'})")
    stats.info.cache = CacheInfo(str(path), reused=True, images_key=images_key_name(verify_images))
    return stats


def round_to_half(stats: ClassStatistics, model: str) -> None:
    """The float statistics rounded to float16 in place (kept as float32 tensors): this run sweeps
    exactly what a later run reads back from a float16 cache file."""
    for name in ("avg", "max", "attn", "logits", "test_pool"):
        if getattr(stats, name) is None:
            continue
        rounded = getattr(stats, name).half()
        if not torch.isfinite(rounded).all():
            raise CSRAError(f"cache_dtype float16: {model}'s {name} statistics exceed float16's range (65504); use float32", param="cache_dtype")
        setattr(stats, name, rounded.float())


def _compute(fp: ForwardPass, images: LabelledImages, key: str, head_fingerprint: str, ctx: DistContext | None = None) -> ClassStatistics | None:
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
    source = "model's logits" if adapter.info.baseline_source == "model_logits" else "model's own logits (patch-average baseline, not enforced)"
    ranks = (ctx or current()).world_size
    over = f", max over {ranks} ranks" if ranks > 1 else ""
    if adapter.info.location_head == "nonlinear":
        check = (
            "n/a with an exported backend (checked when the model was built)"
            if opts.backend != "eager"
            else f"{max_diff:.2e} ({rel_diff:.2e} of the logits' scale{over})"
        )
        say(fp.console, f"non-linear head: baseline = the model's logits; self-check max |head(mean_k x) - logits| = {check}")
    else:
        say(fp.console, f"identity: max |mean_k s - logits| = {max_diff:.2e} ({rel_diff:.2e} of the logits' scale{over}) vs {source}")
    return stats
