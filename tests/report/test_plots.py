"""Figures are written headless (Agg), to .png / .svg, and a bad path is one line naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from csra_posthoc.errors import CSRAError
from csra_posthoc.evaluation.bootstrap import lam_band
from csra_posthoc.evaluation.grid import sweep
from csra_posthoc.report.plots import check_plot_path, plot_attention, plot_lam_curve
from tests.helpers import make_stats


def test_lam_curve_png_and_svg(tmp_path: Path) -> None:
    stats = make_stats()
    result = sweep(stats, task="multi_label", fixed_lam=0.2, lams=[0, 0.1, 0.5], temps=[1], heads=[2])
    band = lam_band(stats.avg, stats.max, stats.labels, [0, 0.1, 0.2, 0.5], n=20)
    png = plot_lam_curve(result, tmp_path / "c.png", band=band, title="t")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 400
    svg = plot_lam_curve(result, tmp_path / "c.svg")
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert not list(tmp_path.glob(".*.tmp"))


def test_attention_png(tmp_path: Path) -> None:
    image = np.random.default_rng(0).random((64, 48, 3))
    maps = np.random.default_rng(1).standard_normal((2, 4, 3))
    out = plot_attention(image, maps, ["cat", "dog"], [0.1, -0.2], [1.5, 0.3], tmp_path / "a.png")
    with Image.open(out) as im:
        assert im.format == "PNG"


@pytest.mark.parametrize(
    "name, message", [("missing/c.png", "does not exist"), ("c.jpg", "ending in .png"), ("adir.png", "is a directory")]
)
def test_bad_plot_paths(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "adir.png").mkdir()
    with pytest.raises(CSRAError, match=message) as info:
        check_plot_path(tmp_path / name, param="plot")
    assert info.value.param == "plot" and "\n" not in str(info.value)


@pytest.mark.slow  # a fresh interpreter importing matplotlib
def test_headless_machine_needs_no_display(tmp_path: Path) -> None:
    """A fresh interpreter with no DISPLAY and an interactive backend requested still writes the figure."""
    code = (
        "import numpy as np; from csra_posthoc.report.plots import plot_attention;"
        f"plot_attention(np.zeros((8, 8, 3)), np.ones((1, 2, 2)), ['a'], [0.0], [1.0], r'{tmp_path / 'h.png'}')"
    )
    env = {"PATH": "/usr/bin:/bin", "MPLBACKEND": "TkAgg", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "h.png").stat().st_size > 0
