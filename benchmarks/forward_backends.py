"""Extraction's forward pass on CPU per backend, on the same ready batch of real photos.

Each option computes what extraction needs, ``x -> (s, logits)`` (backbone + per-location head +
the model's head), on one batch of scikit-image photos at 224 px (batch 16). Options:
eager fp32 under ``no_grad`` (the baseline, today's path), ``inference_mode``, ``channels_last``
(weights and input), bf16 autocast of the backbone, ``torch.compile`` (its start-up cost and the
break-even set size are printed) and ONNX Runtime on the exported graph (export cost printed).
Repeats are interleaved; medians; the max |diff| vs eager is divided by the logits' scale
``max(1, max |logits|)``. Models: EfficientNet-Lite0 with its real packaged weights, and timm
resnet50 (random init: speed only).

Usage: python -m benchmarks.forward_backends [--quick] [--models efficientnet_lite0,resnet50]
       [--batch 16] [--repeats 5] [--no-compile] [--no-onnx]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.decode_speed import write_photos
from csra_posthoc import load_model
from csra_posthoc.data.base import load_rgb
from csra_posthoc.data.transforms import build_transform, transform_description
from csra_posthoc.extraction.backends import OrtBackend
from csra_posthoc.models.base import ModelAdapter

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def prepare_backbone(
    adapter: ModelAdapter, *, channels_last: bool = False, compile: bool = False, bf16: bool = False
) -> Forward:
    """``x -> (s, logits)`` as extraction's eager loop runs it (csra_posthoc.extraction.batches.backbone_batches):
    the backbone optionally in channels_last weights (converted in place), under bf16 autocast or
    ``torch.compile``; the location head and the model's head in float32."""
    adapter = adapter.eval()
    if channels_last:
        adapter.to(memory_format=torch.channels_last)
    backbone = torch.compile(adapter.forward_backbone, dynamic=False) if compile else adapter.forward_backbone

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if bf16:
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                raw = backbone(x)
        else:
            raw = backbone(x)
        return adapter.scores_from_backbone(raw.float())

    return forward


def photo_batch(adapter, batch: int, size: int) -> torch.Tensor:
    """``batch`` real photos through the model's multi-label transform."""
    transform = build_transform(transform_description(adapter.data_config, size, single_label=False))
    with tempfile.TemporaryDirectory() as tmp:
        return torch.stack([transform(load_rgb(p)) for p in write_photos(Path(tmp), batch)])


def bench_model(name: str, args: argparse.Namespace) -> None:
    pretrained = name == "efficientnet_lite0"
    adapter = load_model(name, pretrained=True) if pretrained else load_model(name, random_init=True, num_classes=80)
    adapter.eval()
    x = photo_batch(adapter, args.batch, args.img_size)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref_s, ref_l = adapter(x)
    scale = max(1.0, float(ref_l.abs().max()))

    options: dict[str, tuple[Callable, torch.Tensor, str]] = {}  # name -> (forward, input, grad mode)
    eager = prepare_backbone(adapter)
    options["eager fp32 no_grad"] = (eager, x, "no_grad")
    options["inference_mode"] = (eager, x, "inference")
    cl_adapter = copy.deepcopy(adapter)
    cl = prepare_backbone(cl_adapter, channels_last=True)
    options["channels_last"] = (cl, x_cl, "inference")
    options["bf16 autocast" + ("" if cpu_has_native_bf16() else " (emulated)")] = (
        prepare_backbone(adapter, bf16=True),
        x,
        "inference",
    )
    setup: dict[str, float] = {}
    if not args.no_onnx:
        t0 = time.perf_counter()
        ort = OrtBackend(adapter, args.img_size)
        ort(x)
        setup["onnxruntime"] = time.perf_counter() - t0
        options["onnxruntime"] = (ort, x, "inference")
    if not args.no_compile:
        for label, model, inp in (("compile", adapter, x), ("compile+channels_last", cl_adapter, x_cl)):
            fn = prepare_backbone(copy.deepcopy(model), compile=True, channels_last=inp is x_cl)
            t0 = time.perf_counter()
            try:
                with torch.inference_mode():
                    fn(inp)
            except Exception as exc:
                print(f"{label}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
                continue
            setup[label] = time.perf_counter() - t0
            options[label] = (fn, inp, "inference")

    diffs, times = {}, {k: [] for k in options}
    for key, (fn, inp, mode) in options.items():  # warm-up and the numbers' check
        with torch.inference_mode() if mode == "inference" else torch.no_grad():
            s, logits = fn(inp)
        diffs[key] = max(float((s - ref_s).abs().max()), float((logits - ref_l).abs().max())) / scale
    for _ in range(args.repeats):
        for key, (fn, inp, mode) in options.items():
            with torch.inference_mode() if mode == "inference" else torch.no_grad():
                t0 = time.perf_counter()
                fn(inp)
                times[key].append(time.perf_counter() - t0)
    base = statistics.median(times["eager fp32 no_grad"])
    print(f"\n{name} ({'packaged ImageNet weights' if pretrained else 'random init'}) @ {args.img_size}px, batch {args.batch}, "
          f"median of {args.repeats} interleaved repeats, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'option':28s} {'img/s':>7s} {'x eager':>8s} {'max rel diff':>13s} {'setup s':>8s}")
    for key in options:
        t = statistics.median(times[key])
        print(f"{key:28s} {args.batch / t:7.1f} {base / t:8.2f} {diffs[key]:13.2e} {setup.get(key, 0):8.1f}")
        if key in setup and t < base:
            per_image_gain = (base - t) / args.batch
            print(f"{'':28s} break-even after {setup[key] / per_image_gain:,.0f} images (5,000-image set: "
                  f"{'pays' if setup[key] < 5000 * per_image_gain else 'does not pay'})")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="EfficientNet-Lite0 only, 3 repeats, no torch.compile")
    p.add_argument("--models", default="efficientnet_lite0,resnet50")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-onnx", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.repeats, args.no_compile = "efficientnet_lite0", 3, True
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}; "
          "machine shared with other jobs: ratios only")  # fmt: skip
    for name in args.models.split(","):
        bench_model(name.strip(), args)


if __name__ == "__main__":
    main()
