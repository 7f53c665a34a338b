"""Heads are refused for what they do (not a raw einsum error), and the identity check is relative."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from csra_posthoc import CSRAError, extract, load_dataset, load_model, sweep
from csra_posthoc.heads.location import LocationHead
from csra_posthoc.models import verify_identity


@pytest.mark.parametrize("name", ["ghostnet_100", "mobilenetv3_small_100"])
def test_conv_head_after_pooling_is_the_labelled_nonlinear_variant(name: str) -> None:
    """pool -> conv_head -> activation -> linear: no longer refused (issue #22 part 2), labelled."""
    adapter = load_model(name, random_init=True, num_classes=20)
    assert adapter.info.location_head == "nonlinear" and "conv_head" in adapter.info.head


@pytest.mark.slow
def test_head_without_a_per_location_form_is_refused_by_what_it_does() -> None:
    with pytest.raises(CSRAError) as info:
        load_model("torchvision:vgg11", random_init=True, num_classes=20)
    msg = str(info.value)
    assert (
        "model torchvision:vgg11: torchvision VGG's classifier reads the whole 7x7 grid" in msg
        and "no per-location form" in msg
    )
    assert "einsum" not in msg and "\n" not in msg


def test_classifier_that_does_not_fit_the_map_is_described_in_shapes() -> None:
    adapter = load_model("test_resnet", random_init=True, num_classes=20)
    adapter.head = LocationHead(torch.randn(20, 100))  # a classifier for 100-wide features on a 512-channel map
    with pytest.raises(CSRAError) as info:
        verify_identity(adapter)
    msg = str(info.value)
    assert (
        "its classifier cannot be applied per location: the feature map has 96 channels but the classifier takes 100 inputs"
        in msg
    )
    assert "einsum" not in msg and "subscript" not in msg


def test_head_scaled_by_1e30_keeps_the_identity(tmp_path: Path, voc_dir: Path) -> None:
    torch.manual_seed(0)
    sd = timm.create_model("test_resnet", num_classes=20).state_dict()
    torch.save(sd, tmp_path / "plain.pth")
    big = {**sd, "fc.weight": sd["fc.weight"] * 1e30, "fc.bias": sd["fc.bias"] * 1e30}
    assert torch.isfinite(big["fc.weight"]).all()  # 1e30 fits float32 (max 3.4e38)
    torch.save(big, tmp_path / "big.pth")
    images = load_dataset("voc2007", voc_dir)
    plain = extract(load_model("test_resnet", checkpoint=tmp_path / "plain.pth"), images, img_size=64, use_cache=False)
    scaled = extract(load_model("test_resnet", checkpoint=tmp_path / "big.pth"), images, img_size=64, use_cache=False)
    assert scaled.logits.abs().max() > 1e28 and torch.isfinite(scaled.logits).all()
    assert scaled.info.identity_max_abs_diff > 1e-3  # an absolute tolerance would have refused it
    assert scaled.info.identity_max_rel_diff < 1e-6
    # scaling every logit by a positive constant changes no ranking: the same APs as the plain head
    a = sweep(plain, task=plain.info.task, fixed_lam=0.02, lams=[0], temps=[], heads=[]).baseline.per_class_ap
    b = sweep(scaled, task=scaled.info.task, fixed_lam=0.02, lams=[0], temps=[], heads=[]).baseline.per_class_ap
    assert torch.allclose(a, b, equal_nan=True)


def test_non_linear_head_is_still_refused_relatively(voc_dir: Path, monkeypatch) -> None:
    adapter = load_model("test_resnet", random_init=True, num_classes=20)
    real = adapter.model_logits
    monkeypatch.setattr(adapter, "model_logits", lambda raw: real(raw) * 1e6 + real(raw).pow(2) * 1e6)
    with pytest.raises(
        CSRAError, match=r"of the logits' scale, > 0.001\), so its head is not linear after average pooling"
    ):
        extract(adapter, load_dataset("voc2007", voc_dir), img_size=64, use_cache=False)
