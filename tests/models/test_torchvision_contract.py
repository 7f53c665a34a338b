"""torchvision classifiers by their traced forward (issue 22): one small model per family, each
split at its global average pool, its per-location scores checked against the model's own
``model(x)`` (the identity), or, for a non-linear head, the head on the pooled map against
``model(x)`` and on each location against the head written out by hand; the refusals name the
operation that prevents a per-location form."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
import torchvision.models as tvm
from torchvision.models.convnext import CNBlockConfig
from torchvision.models.regnet import BlockParams

from csra_posthoc.errors import CSRAError
from csra_posthoc.models.base import DataConfig, ModelAdapter
from csra_posthoc.models.torchvision_models import build_torchvision_adapter, graph_adapter

SIZE = 64
CLASSES = 5


def _randomise(model: nn.Module) -> nn.Module:
    """Random init leaves flat heads (zero biases, unit norms): give them values the check can see."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.LayerNorm, nn.Conv2d)) and m.weight.shape[0] == CLASSES:
                m.weight.normal_(0, 0.5, generator=g)
            if isinstance(m, (nn.Linear, nn.LayerNorm)):
                if isinstance(m, nn.LayerNorm):
                    m.weight.uniform_(0.5, 1.5, generator=g)
                if m.bias is not None:
                    m.bias.normal_(0, 0.5, generator=g)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return model.eval()


# one small model per family; (its name, the per-location scores written out by hand or None)
FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "densenet": lambda: tvm.DenseNet(8, (1, 1, 1, 1), 8, num_classes=CLASSES),
    "mnasnet": lambda: tvm.mnasnet0_5(num_classes=CLASSES),
    "shufflenet": lambda: tvm.ShuffleNetV2([1, 1, 1], [8, 16, 24, 32, 48], num_classes=CLASSES),
    "squeezenet": lambda: tvm.squeezenet1_1(num_classes=CLASSES),
    "regnet": lambda: tvm.RegNet(BlockParams.from_init_params(3, 8, 8.0, 2.0, 8, se_ratio=0.25), CLASSES, 8),
    "googlenet": lambda: tvm.googlenet(num_classes=CLASSES, aux_logits=False, init_weights=False, transform_input=True),
    "convnext": lambda: tvm.ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=CLASSES),
    "swin": lambda: tvm.SwinTransformer([4, 4], 16, [1, 1], [1, 2], [4, 4], num_classes=CLASSES),
    "swin_v2": lambda: tvm.swin_transformer.SwinTransformer(
        [4, 4],
        16,
        [1, 1],
        [1, 2],
        [4, 4],
        num_classes=CLASSES,
        block=tvm.swin_transformer.SwinTransformerBlockV2,
        downsample_layer=tvm.swin_transformer.PatchMergingV2,
    ),
    # families with their own adapter (torchvision_models): the traced contract gives them too
    "resnet": lambda: tvm.ResNet(tvm.resnet.BasicBlock, [1, 1, 1, 1], num_classes=CLASSES),
    "mobilenet_v2": lambda: tvm.mobilenet_v2(num_classes=CLASSES, width_mult=0.25),
}


def _adapter(model: nn.Module, family: str, size: int = SIZE) -> ModelAdapter:
    return graph_adapter(model, f"torchvision:{family}", "random-init", DataConfig(input_size=size))


def _x(size: int = SIZE) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.slow
def test_identity_per_family(family: str) -> None:
    torch.manual_seed(0)
    model = _randomise(FAMILIES[family]())
    adapter = _adapter(model, family)
    assert adapter.info.location_head == "linear" and adapter.info.baseline_source == "model_logits"
    x = _x()
    with torch.no_grad():
        s, logits = adapter(x)
        own = model(x)
    assert s.shape[:2] == (2, CLASSES) and s.shape[2] >= 4  # a grid of locations, not one
    assert _rel(logits, own) < 1e-5  # the split forward is the model's own
    assert _rel(s.mean(-1), own) < 1e-4  # the identity


def test_squeezenet_scores_are_its_conv_map() -> None:
    """SqueezeNet's head runs per location before the pool: each location's score is known exactly."""
    model = _randomise(tvm.squeezenet1_1(num_classes=CLASSES))
    adapter = _adapter(model, "squeezenet")
    x = _x()
    with torch.no_grad():
        s, _ = adapter(x)
        by_hand = model.classifier[:3](model.features(x)).flatten(2)
    assert _rel(s, by_hand) < 1e-5


def test_convnext_norm_after_pool_is_per_location_with_pooled_statistics() -> None:
    model = _randomise(FAMILIES["convnext"]())
    adapter = _adapter(model, "convnext")
    assert adapter.head.pooled_norm
    x = _x()
    with torch.no_grad():
        fmap = model.features(x).flatten(2)  # (B, d, K)
        ln, fc = model.classifier[0], model.classifier[2]
        pooled = fmap.mean(-1, keepdim=True)
        mu, var = pooled.mean(1, keepdim=True), pooled.var(1, unbiased=False, keepdim=True)
        normed = (fmap - mu) / torch.sqrt(var + ln.eps) * ln.weight[:, None] + ln.bias[:, None]
        by_hand = torch.einsum("cd,bdk->bck", fc.weight, normed) + fc.bias[:, None]
        s, _ = adapter(x)
    assert _rel(s, by_hand) < 1e-5


def test_maxvit_is_the_labelled_nonlinear_variant() -> None:
    model = _randomise(tvm.MaxVit((SIZE, SIZE), 8, 2, [8, 16], [1, 1], 4, 0.0, num_classes=CLASSES))
    adapter = _adapter(model, "maxvit")
    assert adapter.info.location_head == "nonlinear" and "Tanh" in " ".join(adapter.info.notes)
    x = _x()
    with torch.no_grad():
        raw = adapter.forward_backbone(x)
        s, logits = adapter.scores_from_backbone(raw)
        own = model(x)
        by_hand = model.classifier[2:](raw.flatten(2).transpose(1, 2)).transpose(1, 2)  # norm -> MLP at each location
        assert _rel(adapter.head.pooled(raw), own) < 1e-4  # type: ignore[operator]
        # random init gives a near-flat map: on a spread-out one too, the head runs at each location
        fmap = torch.randn(raw.shape, generator=torch.Generator().manual_seed(2)) * 3
        spread = adapter.head(fmap)
        spread_by_hand = model.classifier[2:](fmap.flatten(2).transpose(1, 2)).transpose(1, 2)
        pooled = model.classifier(fmap)
    assert _rel(logits, own) < 1e-5 and _rel(s, by_hand) < 1e-5 and _rel(spread, spread_by_hand) < 1e-5
    assert _rel(spread.mean(-1), pooled) > 1e-3  # non-linear: the mean of location scores is not the logits


@pytest.mark.slow
def test_inception_v3_through_the_family_dispatch() -> None:
    """build_torchvision_adapter sends a family it has no rule for to the traced contract."""
    model = _randomise(tvm.inception_v3(num_classes=CLASSES, aux_logits=False, init_weights=False))
    adapter = build_torchvision_adapter(model, "torchvision:inception_v3", "inception_v3", "random-init")
    x = _x(80)
    with torch.no_grad():
        s, _ = adapter(x)
        own = model(x)
    assert adapter.info.family == "torchvision-traced" and _rel(s.mean(-1), own) < 1e-4


def test_planning_leaves_the_callers_mode() -> None:
    model = _randomise(FAMILIES["mnasnet"]()).train()
    _adapter(model, "mnasnet")  # traced in eval mode (no dropout, batch-norm statistics untouched)
    assert all(m.training for m in model.modules())


class _MaxPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 8, 3)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class _AvgMax(_MaxPool):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.fc(torch.cat([f.amax((2, 3)), f.mean((2, 3))], 1))


class _DataDependent(_MaxPool):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if f.sum() > 0:
            f = f * 2
        return self.fc(f.mean((2, 3)))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: tvm.alexnet(num_classes=CLASSES),
            r"'avgpool' \(AdaptiveAvgPool2d\(output_size=\(6, 6\)\)\) keeps a grid",
        ),
        (_MaxPool, "no global average pooling"),
        (_AvgMax, r"its head \('cat'\) also takes 'amax', computed before its average pooling"),
        (_DataDependent, "cannot be traced"),
    ],
)
@pytest.mark.slow
def test_refusals_name_the_operation(make: Callable[[], nn.Module], match: str) -> None:
    with pytest.raises(CSRAError, match=match) as info:
        _adapter(make().eval(), "x")
    assert "\n" not in str(info.value)


def test_vgg_and_pre_logits_vit_stay_refused() -> None:
    with pytest.raises(CSRAError, match="reads the whole 7x7 grid"):
        with torch.device("meta"):  # refused by its class before any forward: no 129 M parameters to fill
            vgg = tvm.vgg11(num_classes=CLASSES).eval()
        build_torchvision_adapter(vgg, "torchvision:vgg11", "vgg11", "random-init")
    vit = tvm.VisionTransformer(32, 8, 1, 2, 16, 32, representation_size=8, num_classes=CLASSES).eval()
    with pytest.raises(CSRAError, match="tanh pre-logits"):
        build_torchvision_adapter(vit, "torchvision:vit_b_16", "vit_b_16", "random-init")


def test_models_check_cli_on_a_torchvision_pattern(tmp_path) -> None:
    """`csra-posthoc models torchvision:PATTERN --check`: supported, the identity measured against
    model(x) by the check itself."""
    import json
    import warnings

    from typer.testing import CliRunner

    from csra_posthoc.cli.app import app

    out = tmp_path / "checks.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(app, ["models", "torchvision:squeezenet1_1", "--check", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["models"]
    assert [r["name"] for r in rows] == ["torchvision:squeezenet1_1"]
    assert all(r["status"] == "supported" and r["rel_diff"] < 1e-4 for r in rows), rows


@pytest.mark.parametrize(
    "arch",
    ["convnext_tiny", "swin_t", "maxvit_t", "mobilenet_v3_small", "densenet121", "squeezenet1_1"],
)
@pytest.mark.slow
def test_num_classes_is_read_off_a_checkpoint_of_every_family(arch: str, tmp_path) -> None:
    """``load_model(torchvision:ARCH, checkpoint=...)`` infers the class count from the classifier's key."""
    from csra_posthoc.models.factory import _infer_num_classes
    from csra_posthoc.models.torchvision_models import TORCHVISION_CLASSIFIER_KEYS

    with torch.device("meta"):
        sd = tvm.get_model(arch, weights=None, num_classes=7).state_dict()
    assert _infer_num_classes(sd, TORCHVISION_CLASSIFIER_KEYS, tmp_path / "x.pth") == 7
