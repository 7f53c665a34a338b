"""Other ways than eager PyTorch to run an adapter's forward pass for extraction: ONNX Runtime.

A backend ``backend(x) -> (s, logits)`` returns what :meth:`ModelAdapter.forward` returns:
per-location scores ``s`` ``(B, C, K)`` and the model's logits ``(B, C)``, in float32, so
extraction's statistics (:func:`~csra_posthoc.heads.scoring.location_statistics`) and its identity
check stay the same code. :class:`OrtBackend` runs an exported backbone + location head + model
head on ONNX Runtime; :func:`onnx_export` is the one ONNX export call (this backend's and the
patched-model exporter's).

The caller runs backends under ``torch.inference_mode()``. Extraction
(:func:`csra_posthoc.extraction.run.compute_statistics`) takes :class:`OrtBackend` through
:func:`make_backend` for ``backend="onnxruntime"``; its eager default runs the adapter's own
backbone in :func:`~csra_posthoc.extraction.batches.backbone_batches` (``channels_last`` weights,
optional ``torch.compile``, ``amp`` autocast: :mod:`csra_posthoc.extraction.runtime`), and the head
in float32, so the probe's feature pass shares that loop.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import get_args

import torch
from torch import nn

from ..errors import CSRAError
from ..models.base import ModelAdapter
from ..options import Backend

ONNX_OPSET = 18  # the ONNX files written here and by the patched-model exporter (csra_posthoc.patched.export)
Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def dynamic_batch() -> dict:
    """``dynamic_shapes`` for a ``forward(x)`` whose batch axis stays free in the exported program."""
    from torch.export import Dim

    return {"x": {0: Dim("batch", min=1, max=4096)}}


def onnx_export(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: str | Path,
    opset: int = ONNX_OPSET,
    outputs: Sequence[str] = ("scores",),
) -> None:
    """``module`` as ONNX (dynamo exporter, input ``input``, outputs named ``outputs``, dynamic batch):
    the one export call of the ONNX Runtime extraction backend and the patched-model exporter
    (:mod:`csra_posthoc.patched.export`)."""
    with unfused_attention(module):
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=True,
            input_names=["input"],
            output_names=list(outputs),
            dynamic_shapes=dynamic_batch(),
            opset_version=opset,
            external_data=False,
        )


@contextlib.contextmanager
def unfused_attention(module: nn.Module) -> Iterator[None]:
    """timm attention written out (matmul, softmax) instead of ``scaled_dot_product_attention`` while
    exporting: ONNX's SDPA takes only 4-D query / key / value, and some timm blocks (Twins' locally
    grouped attention) call it on 5-D tensors. The same product in other words; restored after."""
    fused = [m for m in module.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    before = [m.fused_attn for m in fused]
    try:
        for m in fused:
            setattr(m, "fused_attn", False)  # noqa: B010  (a plain bool attribute, not a submodule)
        yield
    finally:
        for m, flag in zip(fused, before, strict=True):
            setattr(m, "fused_attn", flag)  # noqa: B010


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

    def __init__(
        self, adapter: ModelAdapter, img_size: int, path: str | Path | None = None, threads: int | None = None
    ) -> None:
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

    module = ScoresModule(adapter.eval()).eval()
    example = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        onnx_export(module, example, path, outputs=("scores", "logits"))


def make_backend(
    adapter: ModelAdapter, backend: Backend, *, img_size: int, threads: int | None = None
) -> Forward | None:
    """What extraction runs per batch instead of the adapter's backbone, by name: None for ``eager``
    (the loop runs the adapter itself, :func:`~csra_posthoc.extraction.batches.backbone_batches`), an
    :class:`OrtBackend` for ``onnxruntime`` (``threads``: its intra-op threads, default torch's count)."""
    if backend == "eager":
        return None
    if backend == "onnxruntime":
        return OrtBackend(adapter, img_size, threads=threads)
    raise CSRAError(f"backend {backend!r}: choose {' or '.join(get_args(Backend))}", param="backend")
