"""Issue #22's remaining timm families, at tiny widths and small inputs: the runtime identity (or the
documented patch average, or the non-linear variant's self-check) holds, and what stays refused
names the operation that prevents it."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

timm = pytest.importorskip("timm")

from csra_posthoc import patch  # noqa: E402
from csra_posthoc.errors import CSRAError  # noqa: E402
from csra_posthoc.models.nonlinear import pooled_head_difference  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning)

# (timm name, constructor overrides that make it tiny, input size, expected form)
CASES: list[tuple[str, dict[str, Any], int, str]] = [
    (
        "crossvit_tiny_240",
        dict(embed_dim=(24, 48), depth=((1, 1, 0),), num_heads=(2, 2), mlp_ratio=(1, 1, 1)),
        240,
        "patch average",
    ),
    (
        "crossvit_9_dagger_240",
        dict(embed_dim=(24, 48), depth=((1, 1, 0),), num_heads=(2, 2), mlp_ratio=(1, 1, 1)),
        240,
        "patch average",
    ),
    (
        "coat_tiny",
        dict(embed_dims=(32, 32, 32, 32), serial_depths=(1, 1, 1, 1), parallel_depth=1, num_heads=8),
        64,
        "patch average",
    ),
    ("efficientvim_m1", dict(embed_dim=(16, 24, 32), depths=(1, 1, 1)), 64, "supported"),
    ("efficientvim_m1_dist", dict(embed_dim=(16, 24, 32), depths=(1, 1, 1)), 64, "supported"),
    ("pit_ti_224", dict(base_dims=(16, 16, 16), depth=(1, 1, 1), heads=(1, 1, 1), img_size=64), 64, "patch average"),
    (
        "pit_ti_distilled_224",
        dict(base_dims=(16, 16, 16), depth=(1, 1, 1), heads=(1, 1, 1), img_size=64),
        64,
        "patch average",
    ),
    ("cpubone_nano", dict(depth_list=[0, 1, 1, 1, 1], head_widths=(48, 40)), 64, "non-linear head"),
    (
        "lowformer_b0",
        dict(width_list=[8, 8, 16, 16, 32], depth_list=[0, 1, 1, 1, 1], head_widths=(48, 40)),
        64,
        "non-linear head",
    ),
    ("convnext_atto_rms", dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)), 64, "non-linear head"),
    ("test_vit4", dict(depth=1), 64, "non-linear head"),
    ("visformer_tiny", dict(embed_dim=48, depth=(1, 1, 1), num_heads=2, init_channels=8, img_size=64), 64, "supported"),
]


def _build(name: str, overrides: dict[str, Any], size: int) -> Any:
    torch.manual_seed(0)
    overlay = {"input_size": (3, size, size)}
    return timm.create_model(name, num_classes=7, pretrained_cfg_overlay=overlay, **overrides).eval()


@pytest.mark.parametrize(("name", "overrides", "size", "form"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.slow
def test_identity_or_documented_form(name: str, overrides: dict[str, Any], size: int, form: str) -> None:
    model = _build(name, overrides, size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
        patched = patch(model, lam=0, name=name)
        scores = patched(x)
        adapter = patched.adapter
        info = adapter.info
        if form == "patch average":
            assert info.baseline_source == "patch_average"
            reference = adapter.patch_average_reference(x)
        else:
            assert info.baseline_source == "model_logits"
            reference = logits
        assert (info.location_head == "nonlinear") == (form == "non-linear head")
        scale = max(1.0, float(reference.abs().max()))
        assert float((scores - reference).abs().max()) <= 1e-4 * scale
        if form == "non-linear head":  # the variant's own check: the head on the pooled vector is the logits
            diff, top = pooled_head_difference(adapter, adapter.forward_backbone(x))
            assert diff <= 1e-4 * max(1.0, top)
        else:  # the per-location scores average to the reference (not just lam = 0 echoing it)
            s, _ = adapter(x)
            assert float((s.mean(-1) - reference).abs().max()) <= 1e-4 * scale
            assert s.shape[-1] >= 2


def test_pre_pool_head_scores_the_map_its_pool_averages() -> None:
    model = _build("cpubone_nano", dict(head_widths=(48, 40)), 64)
    adapter = patch(model, lam=0, name="cpubone_nano").adapter
    fmap = adapter.feature_map(adapter.forward_backbone(torch.randn(1, 3, 64, 64)))
    assert fmap.shape[1] == 48  # in_conv's output, not forward_features' 192 channels
    assert "head.in_conv" in " ".join(adapter.info.notes)
    assert adapter.pre_chain is not None  # hook-free: torch.export and ONNX trace it


def test_multistream_locations_are_the_union_of_the_streams() -> None:
    model = _build("efficientvim_m1", dict(embed_dim=(16, 24, 32), depths=(1, 1, 1)), 64)
    adapter = patch(model, lam=0, name="efficientvim_m1").adapter
    with torch.no_grad():
        streams = model.forward_features(torch.randn(1, 3, 64, 64))
        fmap = adapter.feature_map(adapter.forward_backbone(torch.randn(1, 3, 64, 64)))
    assert fmap.shape[1] == sum(t.shape[1] for t in streams)
    assert fmap.shape[-1] == sum(t.shape[-1] for t in streams)


def _volo() -> Any:  # volo_d1_224's layers cannot be overridden through create_model
    from timm.models.volo import VOLO

    torch.manual_seed(0)
    return VOLO(
        layers=[1, 1, 1, 1], embed_dims=[16, 16, 16, 16], num_heads=[1, 1, 1, 1], stem_hidden_dim=8, num_classes=7
    ).eval()


# what stays refused: one line naming the operation that prevents it
REFUSED: list[tuple[str, Any, str]] = [
    (
        "test_vit3",
        lambda: _build("test_vit3", dict(depth=1), 64),
        r"pooling 'map' is not an average over locations \('attn_pool",
    ),
    ("volo_d1_224", _volo, r"'aux_head' \(Linear\) reads the whole map after it"),
]


@pytest.mark.parametrize(("name", "build", "message"), REFUSED, ids=[c[0] for c in REFUSED])
def test_refusals_name_the_operation(name: str, build: Any, message: str) -> None:
    with pytest.raises(CSRAError, match=message):
        patch(build(), lam=0, name=name)


def test_multistream_non_affine_combination_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _build("efficientvim_m1", dict(embed_dim=(16, 24, 32), depths=(1, 1, 1)), 64)
    own = model.forward_head
    monkeypatch.setattr(model, "forward_head", lambda x: torch.tanh(own(x)))
    with pytest.raises(CSRAError, match="combines its 4 streams' pooled vectors non-linearly"):
        patch(model, lam=0, name="efficientvim_m1")


def test_multistream_stream_read_by_max_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _build("efficientvim_m1", dict(embed_dim=(16, 24, 32), depths=(1, 1, 1)), 64)
    own = model.forward_head
    monkeypatch.setattr(model, "forward_head", lambda x: own([x[0].amax(-1, keepdim=True).expand_as(x[0]), *x[1:]]))
    with pytest.raises(CSRAError, match=r"does not average stream 0 .* nor read only its class token"):
        patch(model, lam=0, name="efficientvim_m1")


def test_saved_architecture_kwargs_rebuild_a_family_without_dynamic_img_size() -> None:
    from csra_posthoc.models.instance import architecture_kwargs

    model = _build("pit_ti_224", dict(base_dims=(16, 16, 16), depth=(1, 1, 1), heads=(1, 1, 1), img_size=64), 64)
    kwargs = architecture_kwargs(model)
    assert kwargs == {"img_size": [64, 64]}  # PiT takes no dynamic_img_size: load_patched would fail on it
    timm.create_model("pit_ti_224", num_classes=7, **kwargs)
