"""patch() / CSRAHead / load_patched: identity at lam = 0, one scoring function with the sweep, refusals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from csra_posthoc import CSRAError, patch
from csra_posthoc.evaluation.grid import attended_scores
from csra_posthoc.evaluation.results import Variant
from csra_posthoc.extraction.statistics import ClassStatistics
from csra_posthoc.heads.csra_head import CSRAHead, csra_head
from csra_posthoc.heads.location import LocationHead
from csra_posthoc.heads.scoring import csra_score, location_statistics
from csra_posthoc.patched.model import load_patched, save_patched


def _x(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _randomise_head(linear: torch.nn.Module) -> None:
    """Zero-initialised heads (timm ViTs, torchvision) would make every identity trivially 0."""
    with torch.no_grad():
        linear.weight.normal_(0, 0.5)
        linear.bias.normal_(0, 0.5)


IDENTITY_MODELS = {
    "timm test_resnet": lambda: timm.create_model("test_resnet", num_classes=7),
    "timm convnext_atto (pooled LayerNorm)": lambda: timm.create_model("convnext_atto", num_classes=7),
    "timm vit avg-pool (fc_norm)": lambda: timm.create_model(
        "vit_tiny_patch16_224", num_classes=7, img_size=64, global_pool="avg"
    ),
    "torchvision resnet18": lambda: torchvision.models.resnet18(num_classes=7),
    "torchvision mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=7),
}


SLOW_IDENTITY = {"torchvision mobilenet_v2"}  # torchvision's family is covered fast by resnet18


@pytest.mark.parametrize(
    "build",
    [pytest.param(b, id=k, marks=[pytest.mark.slow] if k in SLOW_IDENTITY else []) for k, b in IDENTITY_MODELS.items()],
)
def test_lam_zero_returns_the_models_own_logits(build) -> None:
    torch.manual_seed(0)
    model = build().eval()
    head = (
        model.get_classifier()
        if hasattr(model, "get_classifier")
        else (model.fc if hasattr(model, "fc") else model.classifier[-1])
    )
    _randomise_head(head)
    x = _x()
    with torch.no_grad():
        logits = model(x)
        got = patch(model, lam=0.0)(x)
        patched = patch(model, lam=0.5)(x)
    assert got.shape == logits.shape == (2, 7)
    assert (got - logits).abs().max() <= 1e-4 * max(1.0, float(logits.abs().max()))
    assert (patched - logits).abs().max() > 1e-3  # lam > 0 really changes the scores


def test_class_token_vit_gives_the_patch_average_not_its_logits() -> None:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=64).eval()
    _randomise_head(model.head)
    x = _x()
    with torch.no_grad():
        tokens = model.forward_features(x)[:, model.num_prefix_tokens :]  # final-norm patch tokens
        patch_average = model.head(tokens).mean(dim=1)  # the head on every patch, then the mean
        got = patch(model, lam=0.0)(x)
        own = model(x)
    assert torch.allclose(got, patch_average, atol=1e-5)
    assert (got - own).abs().max() > 1e-3


def test_patch_shares_the_backbone_instead_of_copying_it() -> None:
    model = timm.create_model("test_resnet", num_classes=3).eval()
    patched = patch(model, lam=0.2)
    assert patched.model is model
    assert patched.model.conv1[0].weight.data_ptr() == model.conv1[0].weight.data_ptr()


@pytest.mark.parametrize(
    ("kwargs", "variant"),
    [
        ({"temperature": math.inf}, Variant("max")),
        ({"temperature": 2.0}, Variant("softmax", temperature=2.0)),
        ({"heads": 4}, Variant("heads", heads=4)),
        ({"heads": 1}, Variant("heads", heads=1)),
    ],
    ids=["max", "softmax T=2", "heads H=4", "heads H=1"],
)
def test_head_module_and_sweep_statistics_score_alike(kwargs, variant) -> None:
    """The patched model's head and the sweep (on cached statistics) are one scoring function."""
    torch.manual_seed(0)
    classifier = LocationHead(torch.randn(6, 16), torch.randn(6))
    fmap = torch.randn(4, 16, 5, 5)
    head = CSRAHead(classifier, lam=0.3, **kwargs)
    s = classifier(fmap)
    stats_parts = location_statistics(s)
    stats = ClassStatistics(
        ids=[str(i) for i in range(4)],
        classes=[str(c) for c in range(6)],
        labels=torch.zeros(4, 6),
        temperatures=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0),
        logits=stats_parts["avg"],
        **stats_parts,
    )
    from_stats = csra_score(stats.avg, attended_scores(stats, variant), 0.3)
    assert torch.allclose(head(fmap), from_stats, atol=1e-6)
    assert torch.allclose(csra_head(fmap, classifier, 0.3, head.temperatures), from_stats, atol=1e-6)
    assert head.variant == variant.kind


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"lam": -0.1}, "lam"),
        ({"lam": math.nan}, "lam"),
        ({"lam": math.inf}, "lam"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -2.0}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"heads": 3}, "heads 3"),
    ],
)
def test_bad_settings_are_refused(kwargs, fragment) -> None:
    model = timm.create_model("test_resnet", num_classes=3).eval()
    with pytest.raises(CSRAError, match=f"^{fragment}") as info:  # library terms: the parameter, not the CLI flag
        patch(model, **{"lam": 0.2, **kwargs})
    assert info.value.param == fragment.split()[0]


@pytest.mark.slow
def test_unsupported_families_are_refused_with_the_reason() -> None:
    with pytest.raises(CSRAError, match="no per-location form"):
        patch(torchvision.models.vgg11(num_classes=3))
    with pytest.raises(CSRAError, match="not a timm or torchvision classifier"):
        patch(
            torch.nn.Sequential(
                torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)
            )
        )
    with pytest.raises(CSRAError, match="keeps a grid"):  # AlexNet pools to 6x6, then an MLP reads the grid
        patch(torchvision.models.alexnet(num_classes=3))


@pytest.mark.parametrize("name", ["test_resnet", pytest.param("vit_tiny_patch16_224", marks=pytest.mark.slow)])
def test_safetensors_round_trip_is_weights_only_and_exact(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    kwargs = {"img_size": 64} if name.startswith("vit") else {}
    model = timm.create_model(name, num_classes=4, **kwargs).eval()
    _randomise_head(model.get_classifier())
    patched = patch(model, heads=4, lam=0.4, classes=["a", "b", "c", "d"])
    path = tmp_path / "p.safetensors"
    save_patched(patched, path)
    assert path.read_bytes()[:8] != b"PK\x03\x04" and b"\x80\x02" not in path.read_bytes()[:16]  # no zip / pickle
    restored = load_patched(path)
    x = _x()
    with torch.no_grad():
        assert torch.equal(restored(x), patched(x))
    assert restored.classes == ["a", "b", "c", "d"] and restored.head.heads == 4 and restored.head.lam == 0.4


def test_probe_head_replaces_the_classifier(tmp_path: Path) -> None:
    from csra_posthoc.heads.head_file import save_head

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=1000).eval()
    probe = LocationHead(torch.randn(3, model.num_features), torch.randn(3))
    save_head(
        probe,
        tmp_path / "head.safetensors",
        {
            "probe": {
                "dataset": "voc2007",
                "split": "trainval",
                "num_images": 5,
                "c": 0.01,
                "classes": ["x", "y", "z"],
                "skipped_classes": [],
            },
            "model": "resnet10t",
        },
    )
    patched = patch(model, lam=0.0, head=tmp_path / "head.safetensors")
    x = _x()
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        expected = torch.nn.functional.linear(pooled, probe.weight, probe.bias)
        assert torch.allclose(patched(x), expected, atol=1e-4)
    assert patched.classes == ["x", "y", "z"] and patched.config.head == "probe"
    with pytest.raises(CSRAError, match="fitted on resnet10t"):
        patch(timm.create_model("resnet18", num_classes=10), head=tmp_path / "head.safetensors")  # 512 features too


def test_a_fitted_probe_adapter_patches_with_its_probe() -> None:
    from csra_posthoc import load_model
    from csra_posthoc.models import AdapterInfo, ProbeHeadAdapter

    torch.manual_seed(0)
    base = load_model("test_resnet", random_init=True)
    probe = base.head.with_linear(torch.randn(4, base.head.weight.shape[1]), torch.randn(4))
    fitted = ProbeHeadAdapter(
        base,
        probe,
        AdapterInfo("test_resnet", "timm-cnn", "model_logits", "random-init", head="linear probe on x train, 9 images"),
    )
    x = _x()
    with torch.no_grad():
        s, logits = fitted(x)
        patched = patch(fitted, lam=0.3)
        assert torch.allclose(patch(fitted, lam=0.0)(x), logits, atol=1e-5)  # lam 0: the probe's own logits
        assert torch.allclose(patched(x), s.mean(-1) + 0.3 * s.amax(-1), atol=1e-5)
    assert patched.config.head == "probe" and patched.config.model_num_classes == 1000
    assert patched.config.head_description.startswith("linear probe")


def test_new_settings_score_and_describe_like_a_fresh_patch() -> None:
    model = timm.create_model("test_resnet", num_classes=3).eval()
    x = _x()
    changed = patch(model, lam=0.2, heads=4).set_settings(lam=0.7)  # lam alone keeps the variant
    fresh = patch(model, lam=0.7, heads=4)
    with torch.no_grad():
        assert torch.equal(changed(x), fresh(x))
    keys = ("variant", "lam", "temperature", "heads", "temperatures")
    assert {k: getattr(changed.config, k) for k in keys} == {k: getattr(fresh.config, k) for k in keys}
    softmax = patch(model, lam=0.2).set_settings(temperature=2.0)
    assert softmax.config.temperature == 2.0 and softmax.config.variant == "softmax" and softmax.config.lam == 0.2
