"""Every adapter family: mean of per-location scores == the model's logits (or is reported)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torchvision.models as tvm

from csra_posthoc import CSRAError, load_model
from csra_posthoc.models.timm_models import build_timm_adapter
from csra_posthoc.models.torchvision_models import build_torchvision_adapter


def randomise_linear_heads(model: nn.Module) -> None:
    """Random init zero-fills some heads (torchvision ViT); give every linear/norm a non-trivial value."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.LayerNorm)):
            m.weight.data = torch.randn(m.weight.shape, generator=g) * 0.5 + (
                1.0 if isinstance(m, nn.LayerNorm) else 0.0
            )
            if m.bias is not None:
                m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.5


def identity_diff(adapter, size: int) -> tuple[float, float]:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        s, logits = adapter(x)
    assert s.shape[:2] == logits.shape
    return float((s.mean(-1) - logits).abs().max()), float(logits.abs().max())


@pytest.mark.parametrize(
    "arch,size",
    [
        ("test_resnet", 64),
        ("efficientnet_lite0", 64),
        ("mobilenetv2_050", 64),
        ("regnetx_002", 64),
        ("convnext_atto", 64),
    ],
)
def test_timm_cnn_identity(arch: str, size: int) -> None:
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=7).eval()
    randomise_linear_heads(model)
    adapter = build_timm_adapter(model, arch, "random-init")
    assert adapter.info.baseline_source == "model_logits"
    diff, scale = identity_diff(adapter, size)
    assert scale > 1e-2  # logits are not trivially zero
    assert diff < 1e-4


def test_convnext_norm_after_pool_is_handled_not_ignored() -> None:
    """Applying only the linear layer per location would break the identity for ConvNeXt's head."""
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=5).eval()
    randomise_linear_heads(model)
    adapter = build_timm_adapter(model, "convnext_atto", "random-init")
    assert adapter.head.pooled_norm
    adapter.head.pooled_norm = False
    assert identity_diff(adapter, 64)[0] > 1e-2


def test_timm_vit_class_token_reports_patch_average() -> None:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=6, img_size=64).eval()
    adapter = build_timm_adapter(model, "vit_tiny_patch16_224", "random-init")
    assert adapter.info.baseline_source == "patch_average"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        s, logits = adapter(x)
        tokens = model.forward_features(x)
        per_patch = model.head(tokens[:, model.num_prefix_tokens :])  # (1, 16, 6)
    assert s.shape == (1, 6, 16)
    assert torch.allclose(s, per_patch.transpose(1, 2), atol=1e-5)
    assert torch.allclose(logits, model(x), atol=1e-5)


def test_timm_vit_avg_pool_identity_holds() -> None:
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", num_classes=6, img_size=64, global_pool="avg", class_token=False
    ).eval()
    randomise_linear_heads(model)
    adapter = build_timm_adapter(model, "vit_tiny_patch16_224", "random-init")
    assert adapter.info.baseline_source == "model_logits"
    assert identity_diff(adapter, 64)[0] < 1e-4


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "efficientnet_b0"])
def test_torchvision_cnn_identity(arch: str) -> None:
    torch.manual_seed(0)
    model = tvm.get_model(arch, weights=None, num_classes=5).eval()
    randomise_linear_heads(model)
    adapter = build_torchvision_adapter(model, f"torchvision:{arch}", arch, "random-init")
    diff, scale = identity_diff(adapter, 64)
    assert scale > 1e-2 and diff < 1e-4
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        assert torch.allclose(adapter(x)[1], model(x), atol=1e-5)  # logits are the model's own


@pytest.mark.slow  # end to end (sweep, export or subprocess): the full suite runs it
def test_torchvision_vit_patch_average() -> None:
    torch.manual_seed(0)
    model = tvm.vit_b_16(weights=None, num_classes=4, image_size=32).eval()
    randomise_linear_heads(model)
    adapter = build_torchvision_adapter(model, "torchvision:vit_b_16", "vit_b_16", "random-init")
    assert adapter.info.baseline_source == "patch_average"
    with torch.no_grad():
        x = torch.randn(1, 3, 32, 32)
        s, logits = adapter(x)
        assert torch.allclose(logits, model(x), atol=1e-5)
    assert s.shape == (1, 4, 4)


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "torchvision:mobilenet_v3_small"])
def test_nonlinear_heads_load_as_the_labelled_variant(name: str) -> None:
    """Issue #22 part 2: no longer refused; tests/models/test_nonlinear_head.py checks the scores."""
    info = load_model(name, random_init=True, num_classes=3).info
    assert (info.location_head, info.baseline_source) == ("nonlinear", "model_logits")


def test_unknown_model_and_missing_weight_source() -> None:
    with pytest.raises(CSRAError, match="unknown timm model"):
        load_model("resnet_does_not_exist", random_init=True)
    with pytest.raises(CSRAError, match="unknown torchvision"):
        load_model("torchvision:nope", random_init=True)
    with pytest.raises(CSRAError, match="exactly one weight source"):
        load_model("test_resnet")


def test_random_init_is_seeded_without_touching_the_callers_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    first = load_model("test_resnet", random_init=True, num_classes=5)
    assert torch.equal(torch.rand(4), expected)  # the caller's stream went on as if nothing had drawn from it
    second = load_model("test_resnet", random_init=True, num_classes=5)
    assert (
        first.info.weights_fingerprint == second.info.weights_fingerprint
    )  # still reproducible (the cache relies on it)
