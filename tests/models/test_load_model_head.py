"""``cp.load_model(..., head=FILE)``: a saved probe head replaces the classifier (issue #24: the README's
Python API offers a way to pass a probe head), checked against the model it was fitted on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import csra_posthoc as cp
from csra_posthoc.errors import CSRAError
from csra_posthoc.heads.head_file import save_head


def _probe_file(adapter, path: Path, classes: int, model: str) -> cp.LocationHead:
    g = torch.Generator().manual_seed(1)
    dim = adapter.head.weight.shape[1]
    head = cp.LocationHead(torch.randn(classes, dim, generator=g), torch.randn(classes, generator=g))
    save_head(
        head,
        path,
        {
            "probe": {"dataset": "voc2007", "split": "trainval", "classes": [f"c{i}" for i in range(classes)]},
            "model": model,
        },
    )
    return head


def test_a_probe_head_file_becomes_the_classifier(tmp_path: Path) -> None:
    base = cp.load_model("test_resnet", random_init=True, num_classes=5)
    head = _probe_file(base, tmp_path / "head.safetensors", 3, "test_resnet")
    adapter = cp.load_model("test_resnet", random_init=True, num_classes=5, head=tmp_path / "head.safetensors")
    assert adapter.num_classes == 3 and adapter.info.head == "linear probe on voc2007 trainval"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        feats = base.feature_map(base.forward_backbone(x)).float()  # (B, D, H, W)
        expected = torch.einsum("bdhw,cd->bc", feats, head.weight) / (feats.shape[2] * feats.shape[3]) + head.bias
        locations, logits = adapter(x)
        patched = cp.patch(adapter, lam=0.0)
        assert torch.allclose(logits, expected, atol=1e-4)
        assert torch.allclose(
            locations.mean(dim=-1), expected, atol=1e-4
        )  # per-location probe scores average to its logits
        assert torch.allclose(patched(x), expected, atol=1e-4)  # lam = 0: the probe's own logits
        assert patched.config.head == "probe" and patched.config.num_classes == 3


def test_a_head_fitted_on_another_model_is_refused(tmp_path: Path) -> None:
    base = cp.load_model("test_resnet", random_init=True, num_classes=5)
    _probe_file(base, tmp_path / "head.safetensors", 3, "resnet18")
    with pytest.raises(CSRAError, match="fitted on resnet18"):
        cp.load_model("test_resnet", random_init=True, num_classes=5, head=tmp_path / "head.safetensors")
