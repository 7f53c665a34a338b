"""Latency of the CSRA-patched model vs the original, as ratios measured in one run.

Same batch, input, thread count and runtime for both; median of ``--repeats`` timed calls,
original and patched interleaved so drift hits both. Runtimes: eager PyTorch, TorchScript
(traced) and ONNX Runtime (both models exported the same way). The patched model's extra work
is the classifier at every location: about ``2 * C * d * H * W`` FLOPs, so the overhead grows
with the class count C (the paper's trained 8-head CSRA cost +8 % test time).

    python -m benchmarks.patched_overhead --models resnet50,efficientnet_b0 --sizes 224,448 --classes 20,80,1000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import csra_posthoc as cp


def median_times(fns: dict[str, callable], repeats: int) -> dict[str, float]:
    for fn in fns.values():
        fn()  # warm-up (allocations, lazy init, ORT graph optimisation)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def onnx_session(module: torch.nn.Module, x: torch.Tensor, path: Path, threads: int):
    import contextlib
    import io

    import onnxruntime as ort

    from csra_posthoc.extraction.backends import onnx_export

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        onnx_export(module, x, path)  # the original and the patched model exported the same way
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {session.get_inputs()[0].name: x.numpy()})


@torch.no_grad()
def run(
    model_name: str, size: int, classes: int, batch: int, repeats: int, runtimes: list[str], threads: int
) -> dict[str, tuple[float, float]]:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=classes).eval()
    patched = cp.patch(model, lam=0.2, img_size=size)
    x = torch.randn(batch, 3, size, size)
    out: dict[str, tuple[float, float]] = {}
    if "eager" in runtimes:
        t = median_times({"orig": lambda: model(x), "patched": lambda: patched(x)}, repeats)
        out["eager"] = (t["orig"], t["patched"])
    if "ts" in runtimes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            orig_ts, patched_ts = (
                torch.jit.trace(model, x, check_trace=False),
                torch.jit.trace(patched, x, check_trace=False),
            )
        t = median_times({"orig": lambda: orig_ts(x), "patched": lambda: patched_ts(x)}, repeats)
        out["torchscript"] = (t["orig"], t["patched"])
    if "onnx" in runtimes:
        with tempfile.TemporaryDirectory() as tmp:
            orig_ort = onnx_session(model, x, Path(tmp) / "orig.onnx", threads)
            patched_ort = onnx_session(patched, x, Path(tmp) / "patched.onnx", threads)
            t = median_times({"orig": orig_ort, "patched": patched_ort}, repeats)
        out["onnxruntime"] = (t["orig"], t["patched"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description="patched vs original latency ratios")
    p.add_argument("--models", default="resnet50,efficientnet_b0")
    p.add_argument("--sizes", default="224,448")
    p.add_argument("--classes", default="80,1000")
    p.add_argument("--runtimes", default="eager,ts,onnx")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runtimes = args.runtimes.split(",")
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, median of {args.repeats}; ratio = patched / original"
    )
    print(f"{'model':<18}{'size':>5}{'C':>6}  {'runtime':<12}{'orig ms':>9}{'patched ms':>11}{'ratio':>8}")
    for name in args.models.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            for classes in (int(c) for c in args.classes.split(",")):
                for runtime, (orig, patched) in run(
                    name, size, classes, args.batch, args.repeats, runtimes, args.threads
                ).items():
                    print(
                        f"{name:<18}{size:>5}{classes:>6}  {runtime:<12}{orig * 1e3:>9.1f}{patched * 1e3:>11.1f}{patched / orig:>8.3f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
