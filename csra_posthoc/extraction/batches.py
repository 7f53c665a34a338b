"""The one loop over a dataset: decoded, normalised input batches (:func:`input_batches`) and the
backbone's output per batch (:func:`backbone_batches`), through a :class:`ForwardPass` (model,
device, transform and options, prepared once by :func:`forward_pass`).

The statistics (:func:`csra_posthoc.extraction.run.compute_statistics`) and the probe's features
(:func:`csra_posthoc.extraction.probe.pooled_features`) both consume it. Workers decode
(``decode``: pil, or JPEG draft) and resize, and hand back uint8 ``(H, W, 3)`` images; the main
process normalises each batch at once into ``channels_last`` (bit-equal to the model's
transform: :mod:`csra_posthoc.data.decode`). Under torchrun each rank loops over its shard and
meets the others after every batch (:mod:`csra_posthoc.extraction.distributed`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from rich.console import Console
from torch.utils.data import DataLoader, Dataset, Subset

from ..data import ImageDataset, LabelledImages
from ..data.decode import decode_key, image_loader, normalize_batch, pil_stage
from ..data.transforms import eval_transform
from ..errors import CSRAError, first_line
from ..models import ModelAdapter
from ..options import ExtractOptions
from ..progress import progress_bar
from ..text import safe
from .distributed import DistContext, Shard, check_status, current, lockstep_steps, shard_for
from .runtime import (
    amp_dtype,
    compiler_failed,
    loop_threads,
    on_device,
    resolve_device,
    torch_threads,
    weights_channels_last,
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
        raise CSRAError(
            f"backend onnxruntime runs on the CPU here, not {device}; pass device='cpu' or use the eager backend",
            param="backend",
        )
    return ForwardPass(
        adapter, transform, decode_key(options.decode, desc), device, options, console
    )  # draft decoding enters the cache keys


def image_dataset(fp: ForwardPass, images: LabelledImages) -> ImageDataset:
    """The dataset the loop's workers read: decode (``fp.options.decode``) and the transform's
    resize / crop to uint8 ``(H, W, 3)`` (the full float transform for timm's own crop modes)."""
    stage = pil_stage(fp.desc)
    loader = image_loader(fp.options.decode, fp.desc)
    return ImageDataset(images, stage or fp.transform, fp.size, loader=loader, uint8=stage is not None)


def input_batches(
    fp: ForwardPass, images: LabelledImages, indices: Sequence[int] | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
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
    part = (
        shard_for(ctx, len(images), align=fp.options.batch_size)
        if ctx.active
        else Shard(0, 1, 0, len(images), len(images))
    )
    dtype = amp_dtype(opts, device)
    amp_ctx = torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()
    label = safe(description) if not ctx.active else f"{safe(description)} ({ctx.world_size} ranks)"
    run = forward or (
        torch.compile(adapter.forward_backbone, dynamic=False) if opts.compile else adapter.forward_backbone
    )
    with (
        torch_threads(fp.threads),
        on_device(adapter, device),
        weights_channels_last(adapter, fp.channels_last and forward is None),
        progress_bar(
            fp.console, label, total=part.total
        ) as advance,  # the whole split: rank 0 counts every rank's images
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
                        if opts.compile and forward is None and compiler_failed(exc):
                            raise CSRAError(
                                f"compile: torch.compile failed ({first_line(exc)}); run without compile",
                                param="compile",
                            ) from None
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


def for_each_batch(
    batches: Generator[tuple[torch.Tensor, torch.Tensor], None, None], fn: Callable[[torch.Tensor, torch.Tensor], None]
) -> None:
    """Feed every batch of :func:`backbone_batches` to ``fn``; an error in ``fn`` is thrown back
    into the loop, so under torchrun the other ranks stop at once instead of at the timeout."""
    for index, raw in batches:
        try:
            fn(index, raw)
        except Exception as exc:
            batches.throw(exc)
            raise  # not reached: the loop re-raises what it is thrown
