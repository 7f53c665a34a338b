"""ONNX export of timm blocks that call scaled_dot_product_attention on 5-D tensors (Twins' locally
grouped attention): exported with the attention written out, the model's own setting restored."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import csra_posthoc as cp
from csra_posthoc.extraction.backends import unfused_attention
from csra_posthoc.patched.export import export_patched, exported_config, run_exported


def _tiny_twins() -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = dict(embed_dims=(16, 32, 32, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), sr_ratios=(2, 1, 1, 1))
    return timm.create_model("twins_svt_small", num_classes=3, img_size=64, **kwargs).eval()


def test_fused_attention_is_off_inside_and_restored_after() -> None:
    model = _tiny_twins()
    flags = [m for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    assert flags, "twins has timm attention modules"
    before = [m.fused_attn for m in flags]
    with unfused_attention(model):
        assert not any(m.fused_attn for m in flags)
    assert [m.fused_attn for m in flags] == before
    with pytest.raises(RuntimeError), unfused_attention(model):
        raise RuntimeError("export failed")
    assert [m.fused_attn for m in flags] == before  # restored on an error too


@pytest.mark.slow  # an ONNX export (a few seconds)
def test_twins_exports_to_onnx_and_scores_as_the_patched_model(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    patched = cp.patch(_tiny_twins(), lam=0.3)
    out = tmp_path / "twins.onnx"
    export_patched(patched, out)
    size = exported_config(out).preprocessing.size  # the exported graph's fixed input size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = patched(x)
    assert torch.allclose(run_exported(out, x), want, atol=1e-4 * max(1.0, float(want.abs().max())))
