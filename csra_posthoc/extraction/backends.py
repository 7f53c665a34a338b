"""Ways to run an adapter's forward pass for extraction, each ``backend(x) -> (s, logits)``.

Every backend returns what :meth:`ModelAdapter.forward` returns: per-location scores ``s``
``(B, C, K)`` and the model's logits ``(B, C)``, in float32, so extraction's statistics
(:func:`~csra_posthoc.heads.scoring.location_statistics`) and its identity check stay the same code.

- :func:`prepare_backbone`: eager PyTorch, optionally ``channels_last`` (same numbers to float32
  rounding), ``torch.compile`` (start-up cost; pays only on large sets) and bf16 autocast of the
  backbone (NOT within 1e-4: opt-in, and only useful on CPUs with native bf16).
- :class:`OrtBackend`: ONNX Runtime on an exported backbone + location head + model head.

The caller runs backends under ``torch.inference_mode()``. Extraction
(:func:`csra_posthoc.extraction.run.compute_statistics`) takes :class:`OrtBackend` through
:func:`make_backend` for ``backend="onnxruntime"``; its eager default runs the adapter's own
backbone in :func:`~csra_posthoc.extraction.run.backbone_batches` (channels_last, optional compile,
``--amp``), and the head in float32, so the probe's feature pass shares that loop.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..errors import CSRAError
from ..models.base import ModelAdapter

BackendName = Literal["eager", "onnxruntime"]
BACKENDS: tuple[str, ...] = ("eager", "onnxruntime")
Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class EagerBackend(nn.Module):
    """The adapter's own forward, with its options: the backbone optionally under bf16 autocast,
    the location head and the model's head always in float32 (as extraction's ``--amp`` does)."""

    def __init__(self, adapter: ModelAdapter, bf16: bool = False) -> None:
        super().__init__()
        self.adapter = adapter
        self.bf16 = bf16

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bf16:
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                raw = self.adapter.forward_backbone(x)
        else:
            raw = self.adapter.forward_backbone(x)
        return self.adapter.scores_from_backbone(raw)


def prepare_backbone(adapter: ModelAdapter, *, channels_last: bool = False, compile: bool = False, bf16: bool = False) -> Forward:
    """A forward ``x -> (s, logits)`` for extraction. ``channels_last`` converts the model's
    weights in place (feed it channels_last inputs too: :func:`~csra_posthoc.data.decode.normalize_batch`);
    ``compile`` wraps it in ``torch.compile`` (compiles on the first batch, and again for a new
    batch size unless the last batch is padded)."""
    adapter = adapter.eval()
    if channels_last:
        adapter.to(memory_format=torch.channels_last)
    forward: Forward = EagerBackend(adapter, bf16=bf16)
    if compile:
        forward = torch.compile(forward, dynamic=False)
    return forward


class ScoresModule(nn.Module):
    """``x -> (s, logits)`` in float32: the graph :class:`OrtBackend` exports."""

    def __init__(self, adapter: ModelAdapter) -> None:
        super().__init__()
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.adapter.forward_backbone(x)
        return self.adapter.head(self.adapter.feature_map(raw)), self.adapter.model_logits(raw)


class OrtBackend:
    """ONNX Runtime on the exported :class:`ScoresModule` (dynamic batch, fixed image size).

    Same call signature as the eager path: ``backend(x) -> (s, logits)`` as torch tensors.
    ``threads``: ONNX Runtime's intra-op threads (default: torch's thread count).
    """

    def __init__(self, adapter: ModelAdapter, img_size: int, path: str | Path | None = None, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
            import onnxscript  # noqa: F401  (the dynamo exporter needs it)
        except ImportError:
            raise CSRAError(
                "backend 'onnxruntime' needs onnxruntime and onnxscript: pip install 'csra-posthoc[export]' (or pip install onnxruntime onnxscript)",
                param="backend",
            ) from None
        self._tmp = None
        if path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="csra-ort-")
            path = Path(self._tmp.name) / "scores.onnx"
        export_scores(adapter, img_size, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.path = Path(path)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feed = {"input": x.detach().cpu().contiguous().numpy()}
        s, logits = self.session.run(["scores", "logits"], feed)
        return torch.from_numpy(s), torch.from_numpy(logits)


def export_scores(adapter: ModelAdapter, img_size: int, path: str | Path) -> None:
    """Write ``x -> (scores (B, C, K), logits (B, C))`` as ONNX (outputs named ``scores``, ``logits``)."""
    import contextlib
    import io

    from ..patched.export import onnx_export

    module = ScoresModule(adapter.eval()).eval()
    example = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        onnx_export(module, example, path, outputs=("scores", "logits"))


def make_backend(
    adapter: ModelAdapter,
    backend: str = "eager",
    *,
    img_size: int,
    channels_last: bool = False,
    compile: bool = False,
    bf16: bool = False,
    threads: int | None = None,
) -> Forward:
    """The forward extraction calls per batch, by name (``eager`` | ``onnxruntime``; ``threads``:
    ONNX Runtime's intra-op threads, default torch's count)."""
    if backend == "eager":
        return prepare_backbone(adapter, channels_last=channels_last, compile=compile, bf16=bf16)
    if backend == "onnxruntime":
        if channels_last or compile or bf16:
            raise CSRAError("backend 'onnxruntime' takes no channels_last / compile / bf16", param="backend")
        return OrtBackend(adapter, img_size, threads=threads)
    raise CSRAError(f"backend {backend!r}: choose {' or '.join(BACKENDS)}", param="backend")
