"""The GPU path's pieces that run anywhere (amp dtype, device refusals, the statistics' host
flushes), and the CUDA checks themselves, skipped where this PyTorch sees no GPU (never failed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import csra_posthoc.extraction.run as extract_mod
from csra_posthoc import CSRAError, extract, load_dataset, load_model
from csra_posthoc.cli.app import app
from csra_posthoc.options import ExtractOptions, amp_precision
from tests.helpers import sweep_argv

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def adapter():
    """Random-init test_resnet whose load-time checks run at the 64 px these tests extract at."""
    return load_model("test_resnet", random_init=True, num_classes=20, img_size=64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
def test_device_cuda_without_cuda_is_one_line(voc_dir: Path) -> None:
    run = CliRunner().invoke(app, sweep_argv(img_size=None, data_dir=voc_dir, device="cuda"))
    assert run.exit_code == 2
    lines = run.output.strip().splitlines()
    assert lines == [
        "error: --device cuda: CUDA is not available here (this PyTorch sees no GPU); use --device cpu (or --device auto)"
    ]


def test_amp_dtype_resolution_and_refusals() -> None:
    assert amp_precision(ExtractOptions(), "cuda") is None
    assert amp_precision(ExtractOptions(amp=True), "cuda") == "fp16"
    assert amp_precision(ExtractOptions(amp=True), "cpu") == "bf16"
    assert amp_precision(ExtractOptions(amp=True, amp_dtype="bf16"), "cuda") == "bf16"
    assert amp_precision(ExtractOptions(amp=True, amp_dtype="fp16"), "cpu") == "fp16"
    with pytest.raises(CSRAError, match="amp_dtype bf16 needs amp=True") as info:
        ExtractOptions(amp_dtype="bf16")
    assert info.value.param == "amp_dtype"
    with pytest.raises(CSRAError, match="amp_dtype fp8: choose auto, fp16 or bf16"):
        ExtractOptions(amp=True, amp_dtype="fp8")  # type: ignore[arg-type]


def test_amp_dtype_enters_the_cache_key_and_the_head_stays_fp32(voc_dir: Path, adapter, isolated_cache: Path) -> None:
    images = load_dataset("voc2007", voc_dir)
    full = extract(adapter, images, img_size=64, batch_size=8)
    bf16 = extract(adapter, images, img_size=64, batch_size=8, amp=True, amp_dtype="bf16")
    auto = extract(adapter, images, img_size=64, batch_size=8, amp=True)  # auto on CPU: bf16, the same entry
    fp16 = extract(adapter, images, img_size=64, batch_size=8, amp=True, amp_dtype="fp16")
    assert len({full.info.key, bf16.info.key, fp16.info.key}) == 3
    assert auto.info.key == bf16.info.key and auto.info.cache.reused
    assert (bf16.info.amp, bf16.info.amp_dtype, full.info.amp_dtype) == (True, "bf16", None)
    assert bf16.avg.dtype == torch.float32 and adapter.head.weight.dtype == torch.float32
    assert not torch.equal(bf16.avg, full.avg)  # reduced precision really ran
    assert torch.allclose(bf16.logits, full.logits, atol=0.05 * float(full.logits.abs().max()))
    assert len(list(isolated_cache.glob("*.safetensors"))) == 3


def test_cli_amp_dtype_implies_amp(voc_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = sweep_argv(data_dir=voc_dir, device="cpu")
    run = CliRunner().invoke(app, [*args, "--amp-dtype", "bf16", "--quiet", "--out", str(out)])
    assert run.exit_code == 0, run.output
    run = CliRunner().invoke(app, [*args, "--amp", "--amp-dtype", "fp8"])
    assert run.exit_code == 2 and "--amp-dtype fp8: choose auto, fp16 or bf16" in run.output


def test_statistics_flushed_in_blocks_equal_one_block(voc_dir: Path, adapter, monkeypatch: pytest.MonkeyPatch) -> None:
    images = load_dataset("voc2007", voc_dir)
    whole = extract(adapter, images, img_size=64, batch_size=4, use_cache=False)
    monkeypatch.setattr(extract_mod, "FLUSH_EVERY", 2)  # 24 images / 4 = 6 batches: 3 flushes
    flushed = extract(adapter, images, img_size=64, batch_size=4, use_cache=False)
    for name in ("avg", "max", "attn", "logits"):
        assert torch.equal(getattr(whole, name), getattr(flushed, name)), name


def test_nan_found_at_a_flush_names_the_image(voc_dir: Path, adapter, monkeypatch: pytest.MonkeyPatch) -> None:
    images = load_dataset("voc2007", voc_dir)
    real = adapter.scores_from_backbone

    def poisoned(raw):  # a NaN in the 6th image's scores (the second batch of 4)
        s, logits = real(raw)
        if not hasattr(poisoned, "calls"):
            poisoned.calls = 0  # type: ignore[attr-defined]
        poisoned.calls += 1  # type: ignore[attr-defined]
        if poisoned.calls == 2:  # type: ignore[attr-defined]
            s = s.clone()
            s[1, 3, 0] = float("nan")
        return s, logits

    monkeypatch.setattr(adapter, "scores_from_backbone", poisoned)
    with pytest.raises(CSRAError, match=f"NaN/inf scores on .*{images.ids[5]}"):
        extract(adapter, images, img_size=64, batch_size=4, use_cache=False)


@needs_cuda
@pytest.mark.parametrize("amp", [False, True])
def test_cuda_statistics_match_cpu(voc_dir: Path, adapter, amp: bool) -> None:
    images = load_dataset("voc2007", voc_dir)
    cpu = extract(adapter, images, img_size=64, batch_size=8, use_cache=False, device="cpu")
    gpu = extract(adapter, images, img_size=64, batch_size=8, use_cache=False, device="cuda", amp=amp)
    assert gpu.avg.device.type == "cpu" and gpu.info.device.startswith("cuda")  # built on the host
    assert gpu.info.amp_dtype == ("fp16" if amp else None)
    tol = 0.05 if amp else 1e-3
    assert torch.allclose(gpu.logits, cpu.logits, atol=tol * float(cpu.logits.abs().max()))
    assert next(adapter.parameters()).device.type == "cpu"  # the caller's model is back where it was


@needs_cuda
def test_cuda_memory_stays_near_one_batch(voc_dir: Path, adapter) -> None:
    images = load_dataset("voc2007", voc_dir)
    torch.cuda.reset_peak_memory_stats()
    extract(adapter, images, img_size=64, batch_size=4, use_cache=False, device="cuda")
    small = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    extract(adapter, images, img_size=64, batch_size=4, use_cache=False, device="cuda", keep_maps=True)
    assert torch.cuda.max_memory_allocated() < 2 * small + (1 << 20)  # maps go to the host every batch
