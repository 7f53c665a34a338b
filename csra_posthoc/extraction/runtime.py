"""Where and how the forward pass runs: the device, autocast, torch threads and the weights'
memory layout, each set for one loop and restored after it (no global side effect).

On CPU with decoding workers the loop takes the caller's torch threads, less the cores other
processes keep busy (:func:`loop_threads`); the eager backend runs its convolutions with
``channels_last`` weights (:func:`weights_channels_last`); ``amp`` autocasts the backbone
(:func:`amp_dtype`). The model is moved to the device in place and put back afterwards
(:func:`on_device`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from ..errors import CSRAError
from ..machine import available_cores, other_processes_load
from ..options import ExtractOptions, amp_precision


def resolve_device(device: str) -> torch.device:
    """``device`` as a torch device; ``cuda`` where CUDA does not exist is one line (no silent CPU fallback)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CSRAError(
            f"device {device}: CUDA is not available here (this PyTorch sees no GPU); use device='cpu' (or device='auto')",
            param="device",
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise CSRAError(f"--device {device}: choose auto, cpu or cuda", param="device")
    return torch.device(device)


AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def amp_dtype(options: ExtractOptions, device: torch.device) -> torch.dtype | None:
    """The backbone's autocast dtype, None without amp (see :func:`csra_posthoc.options.amp_precision`)."""
    name = amp_precision(options, device.type)
    return None if name is None else AMP_DTYPES[name]


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


def loop_threads(
    options: ExtractOptions, device: torch.device, other_load: Callable[[], float | None] | None = None
) -> int | None:
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


def compiler_failed(exc: BaseException) -> bool:
    """An error raised by torch.compile's machinery (dynamo / inductor), not by the model."""
    return type(exc).__module__.startswith(("torch._dynamo", "torch._inductor"))
