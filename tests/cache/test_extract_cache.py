"""Extraction and the statistics cache: reuse, invalidation, atomic writes, damage, bad images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import csra_posthoc.cache.store as cache_mod
import csra_posthoc.extraction.run as extract_mod
from csra_posthoc import CSRAError, extract, load_dataset, load_model


@pytest.fixture
def adapter():
    """Random-init test_resnet whose load-time checks run at the 64 px these tests extract at."""
    return load_model("test_resnet", random_init=True, num_classes=20, img_size=64)


def test_extraction_identity_and_statistics(voc_dir: Path, adapter) -> None:
    images = load_dataset("voc2007", voc_dir)
    stats = extract(adapter, images, img_size=64, batch_size=5, use_cache=False)
    assert stats.info.identity_max_abs_diff < 1e-4
    assert torch.allclose(stats.avg, stats.logits, atol=1e-4)
    assert stats.attn.shape == (24, 20, 7)
    # softmax averages lie between the mean and the max, increasing with T
    assert (stats.attn[..., 0] >= stats.avg - 1e-5).all() and (stats.attn[..., -1] <= stats.max + 1e-5).all()
    assert (stats.attn.diff(dim=-1) >= -1e-5).all()
    assert torch.equal(stats.labels, images.labels)


def test_second_run_reuses_cache_and_key_changes_recompute(voc_dir: Path, adapter, monkeypatch, isolated_cache) -> None:
    images = load_dataset("voc2007", voc_dir)
    first = extract(adapter, images, img_size=64)
    assert first.info.cache.reused is False
    calls = []
    real = extract_mod.compute_statistics
    monkeypatch.setattr(extract_mod, "compute_statistics", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = extract(adapter, images, img_size=64)
    assert calls == [] and second.info.cache.reused is True
    assert torch.equal(first.attn, second.attn) and second.ids == first.ids
    extract(adapter, images, img_size=72)  # transform changed -> new key
    assert calls == [1]
    other = load_dataset("voc2007", voc_dir, difficult="positive")  # labels changed -> new key
    extract(adapter, other, img_size=64)
    assert calls == [1, 1]
    assert len(list(isolated_cache.glob("*.safetensors"))) == 3


def test_interrupted_write_leaves_nothing(voc_dir: Path, adapter, monkeypatch, isolated_cache) -> None:
    images = load_dataset("voc2007", voc_dir)

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", broken_save)
    with pytest.raises(KeyboardInterrupt):
        extract(adapter, images, img_size=64)
    assert list(isolated_cache.iterdir()) == []


def test_interrupted_extraction_leaves_nothing(voc_dir: Path, adapter, monkeypatch, isolated_cache) -> None:
    images = load_dataset("voc2007", voc_dir)
    real = extract_mod.location_statistics
    seen = []

    def interrupt(*a, **k):
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(extract_mod, "location_statistics", interrupt)
    with pytest.raises(KeyboardInterrupt):
        extract(adapter, images, img_size=64, batch_size=4)
    assert not isolated_cache.exists() or list(isolated_cache.iterdir()) == []


def test_damaged_cache_is_refused(voc_dir: Path, adapter, isolated_cache) -> None:
    images = load_dataset("voc2007", voc_dir)
    extract(adapter, images, img_size=64)
    (path,) = isolated_cache.glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CSRAError, match=r"stale or damaged.*recompute=True"):
        extract(adapter, images, img_size=64)
    assert extract(adapter, images, img_size=64, recompute=True).info.cache.reused is False


def test_cache_with_other_key_inside_is_refused(voc_dir: Path, adapter, isolated_cache) -> None:
    images = load_dataset("voc2007", voc_dir)
    stats = extract(adapter, images, img_size=64)
    path = Path(stats.info.cache.path)
    stats.info.key = "something-else"
    cache_mod.save_statistics(stats, path)
    with pytest.raises(CSRAError, match="key does not match"):
        extract(adapter, images, img_size=64)


def test_corrupt_image_is_named(fresh_voc_dir: Path, adapter) -> None:
    bad = fresh_voc_dir / "VOCdevkit/VOC2007/JPEGImages/000003.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    images = load_dataset("voc2007", fresh_voc_dir)
    with pytest.raises(CSRAError, match="000003.jpg: cannot decode image"):
        extract(adapter, images, img_size=64, workers=1, use_cache=False)


def test_nan_scores_are_an_error(voc_dir: Path, adapter) -> None:
    with torch.no_grad():
        adapter.head.weight[0, 0] = float("nan")
    with pytest.raises(CSRAError, match="NaN/inf scores"):
        extract(adapter, load_dataset("voc2007", voc_dir), img_size=64, use_cache=False)


def test_class_count_mismatch(voc_dir: Path) -> None:
    adapter = load_model("test_resnet", random_init=True, num_classes=7)
    with pytest.raises(CSRAError, match="has 7 classes but voc2007 has 20: pass --checkpoint"):
        extract(adapter, load_dataset("voc2007", voc_dir), img_size=64)


def test_nan_in_cached_statistics_is_an_error_not_a_number(voc_dir: Path, adapter) -> None:
    from csra_posthoc import sweep

    stats = extract(adapter, load_dataset("voc2007", voc_dir), img_size=64)
    stats.max[0, 0] = float("nan")
    with pytest.raises(CSRAError, match="NaN.*recompute=True"):
        sweep(stats, task=stats.info.task, fixed_lam=0.2, lams=[0, 0.2], temps=[], heads=[])
    stats.labels.zero_()
    with pytest.raises(CSRAError, match="no class has a positive label.*check the labels"):
        sweep(stats, task=stats.info.task, fixed_lam=0.2, lams=[0], temps=[], heads=[])


def test_backbone_failure_is_one_line(voc_dir: Path, adapter, monkeypatch) -> None:
    def broken(x):
        raise RuntimeError(
            "Given groups=1, weight of size [24, 3, 3, 3], expected input to have 3 channels\nmore detail"
        )

    monkeypatch.setattr(adapter, "forward_backbone", broken)
    with pytest.raises(
        CSRAError, match=r"model test_resnet failed on a \(3, 64, 64\) input \(Given groups=1.*\); try another img_size"
    ) as info:
        extract(adapter, load_dataset("voc2007", voc_dir), img_size=64, use_cache=False)
    assert "\n" not in str(info.value)


def test_cache_file_of_another_format_version_is_refused(voc_dir: Path, adapter, isolated_cache) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    images = load_dataset("voc2007", voc_dir)
    path = Path(extract(adapter, images, img_size=64).info.cache.path)
    with safe_open(str(path), framework="pt") as fh:
        metadata, tensors = dict(fh.metadata()), {k: fh.get_tensor(k) for k in fh.keys()}
    for version in (None, "1", "99"):  # None: a file from before the version field
        md = {k: v for k, v in metadata.items() if k != cache_mod.VERSION_FIELD}
        save_file(tensors, str(path), metadata=md if version is None else {**md, cache_mod.VERSION_FIELD: version})
        with pytest.raises(CSRAError, match=r"format.*recompute=True") as info:
            extract(adapter, images, img_size=64)
        assert info.value.param == "recompute" and "\n" not in str(info.value)
    again = extract(adapter, images, img_size=64, recompute=True)
    assert again.info.cache.reused is False and extract(adapter, images, img_size=64).info.cache.reused is True


def test_extract_leaves_the_callers_model_and_rng_as_they_were(voc_dir: Path, adapter) -> None:
    images = load_dataset("voc2007", voc_dir)
    adapter.train()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    extract(adapter, images, img_size=64, use_cache=False, device="cpu")
    assert torch.equal(torch.rand(3), expected)
    assert adapter.training and next(adapter.parameters()).device.type == "cpu"


def test_quiet_prints_nothing_and_the_logger_still_hears(voc_dir: Path, adapter, isolated_cache, caplog) -> None:
    import logging

    from rich.console import Console

    images = load_dataset("voc2007", voc_dir)
    console = Console(record=True, width=200)
    with caplog.at_level(logging.INFO, logger="csra_posthoc"):
        extract(adapter, images, img_size=64, console=console, quiet=True)
        extract(adapter, images, img_size=64, console=console, quiet=True)
    assert console.export_text() == ""
    logged = [r.getMessage() for r in caplog.records if r.name == "csra_posthoc"]
    assert any(m.startswith("identity: max |mean_k s - logits|") for m in logged) and any(
        m.startswith("reused cache") for m in logged
    )
    extract(adapter, images, img_size=64, console=console)
    assert "reused cache" in console.export_text()
