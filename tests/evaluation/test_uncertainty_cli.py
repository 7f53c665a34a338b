"""sweep's honesty flags end to end: --select-on, --bootstrap / --no-bootstrap, --seed, --plot (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from csra_posthoc.data.fixtures import random_voc_annotations, write_voc
from csra_posthoc.options import OutputOptions, SweepOptions
from tests.helpers import one_line_error, sweep_argv

runner = CliRunner()
BASE = sweep_argv(lams="0,0.1,0.5,1", temps=1, heads=2)


def sweep(data_dir: Path, *args: str):
    return runner.invoke(app, [*BASE, "--data-dir", str(data_dir), *args])


@pytest.fixture
def voc_two_splits(tmp_path: Path) -> Path:
    """A VOC2007 folder with test (evaluated) and trainval (lam chosen on it) splits, no shared image."""
    root = tmp_path / "data"
    write_voc(root, random_voc_annotations(24))
    write_voc(root, {f"t{k}": v for k, v in random_voc_annotations(24, seed=1).items()}, split="trainval", seed=1)
    return root


def test_held_out_row_intervals_json_and_plot(voc_dir: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "r.json", tmp_path / "curve.png"
    res = sweep(voc_dir, "--bootstrap", "200", "--seed", "3", "--out", str(out), "--plot", str(png))
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    held, boot = data["held_out"], data["bootstrap"]
    assert (
        {"select_on", "lam", "variant", "score", "delta"} <= set(held)
        and held["select_on"] == "half"
        and held["seed"] == 3
    )
    assert {"n", "seed", "fixed", "best", "held_out"} <= set(boot) and (boot["n"], boot["seed"]) == (200, 3)
    base = data["baseline"]["mAP"]
    # the bootstrap's point figures are the table's deltas; each interval holds its delta's resamples
    assert boot["best"]["delta"] == pytest.approx(data["best"]["metrics"]["mAP"] - base, abs=1e-9)
    assert boot["fixed"]["delta"] == pytest.approx(data["fixed"]["metrics"]["mAP"] - base, abs=1e-9)
    assert boot["held_out"]["delta"] == pytest.approx(held["delta"], abs=1e-9)
    for name in ("best", "fixed", "held_out"):
        assert set(boot[name]) == {"delta", "low", "high"} and boot[name]["low"] <= boot[name]["high"]
    # the table: the optimistic best, the held-out row, the interval column, n.s. for each interval holding 0
    assert "best λ (optimistic)" in res.output and "held-out λ (half)" in res.output and "95 % CI of Δ" in res.output
    not_significant = sum(boot[n]["low"] <= 0 <= boot[n]["high"] for n in ("best", "fixed", "held_out"))
    assert res.output.count("n.s.") == not_significant + 1  # + the footnote that explains it
    held_line = next(ln for ln in res.output.splitlines() if "held-out λ (half)" in ln)
    assert (
        f"{held['score']:.2f}" in held_line
        and f"[{boot['held_out']['low']:+.2f}, {boot['held_out']['high']:+.2f}]" in held_line
    )
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 400


def test_seed_changes_the_half_split_and_the_resamples(voc_dir: Path, tmp_path: Path) -> None:
    runs = []
    for seed in ("0", "0", "1"):
        out = tmp_path / f"r{len(runs)}.json"
        assert sweep(voc_dir, "--bootstrap", "100", "--seed", seed, "--out", str(out)).exit_code == 0
        runs.append(json.loads(out.read_text()))
    assert runs[0]["bootstrap"] == runs[1]["bootstrap"] and runs[0]["held_out"] == runs[1]["held_out"]
    assert runs[0]["bootstrap"]["fixed"] != runs[2]["bootstrap"]["fixed"]


def test_off_switches(voc_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = sweep(voc_dir, "--select-on", "none", "--no-bootstrap", "--out", str(out))
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["held_out"] is None and data["bootstrap"] is None
    assert "held-out" not in res.output and "95 % CI" not in res.output and "best λ (optimistic)" in res.output


def test_select_on_another_split_reuses_both_caches(voc_two_splits: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    first = sweep(voc_two_splits, "--select-on", "trainval", "--bootstrap", "100", "--out", str(out))
    assert first.exit_code == 0, first.output
    held = json.loads(out.read_text())["held_out"]
    assert (
        held["select_on"] == "trainval" and held["lam"] is not None and held["variant"] in ("max", "softmax", "heads")
    )
    assert "held-out λ (trainval)" in first.output
    warm = sweep(voc_two_splits, "--select-on", "trainval", "--bootstrap", "100", "--out", str(out))
    assert warm.exit_code == 0 and warm.output.count("no model built") == 2, warm.output
    assert json.loads(out.read_text())["held_out"] == held


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--bootstrap", "0"], ["--bootstrap 0", "integer >= 1"]),
        (["--bootstrap", "-5"], ["--bootstrap -5", "integer >= 1"]),
        (["--select-on", "nosuchsplit"], ["--select-on nosuchsplit", "nosuchsplit.txt", "use half"]),
        (["--select-on", "test"], ["--select-on test", "is the evaluated split"]),
        (["--plot", "{tmp}/missing/curve.png"], ["--plot", "does not exist"]),
        (["--plot", "{tmp}/curve.jpg"], ["--plot", ".png, .svg, .pdf"]),
        (["--seed", "-1"], ["--seed -1"]),
    ],
)
def test_bad_input_is_one_line(voc_dir: Path, tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    res = sweep(voc_dir, *[a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 2, res.output
    one_line_error(res, *fragments)
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1, (
        res.output
    )  # refused before any model or data work


def test_options_check_in_library_terms() -> None:
    from csra_posthoc.errors import CSRAError

    with pytest.raises(CSRAError, match="bootstrap 0") as exc:
        SweepOptions(bootstrap=0)
    assert exc.value.param == "bootstrap"
    with pytest.raises(CSRAError) as exc:
        SweepOptions(select_on="a/b")
    assert exc.value.param == "select_on"
    with pytest.raises(CSRAError, match="does not exist") as exc:
        OutputOptions(plot="/nonexistent-folder/c.svg")
    assert exc.value.param == "plot"
    assert SweepOptions().select_on == "half" and SweepOptions().bootstrap == 1000 and SweepOptions().seed == 0


def test_too_few_images_for_halves_is_a_note_not_an_error(tmp_path: Path) -> None:
    """The default --select-on half on three images: no held-out row, a note saying why, the rest of the report."""
    root = tmp_path / "tiny"
    write_voc(root, {"a": [("cat", 0)], "b": [("dog", 0)], "c": [("cat", 0), ("dog", 0)]})
    out = tmp_path / "r.json"
    res = sweep(root, "--bootstrap", "50", "--out", str(out))
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["held_out"] is None and data["bootstrap"]["n"] == 50 and "held_out" not in data["bootstrap"]
    assert "no held-out row" in res.output and "at least 4 images" in data["uncertainty_notes"][0]


def test_compare_reads_what_sweep_writes(voc_dir: Path, tmp_path: Path) -> None:
    """sweep --out -> compare --csv: the intervals and the held-out figure reach the paper table."""
    import csv

    out, table = tmp_path / "r.json", tmp_path / "t.csv"
    assert sweep(voc_dir, "--bootstrap", "100", "--out", str(out)).exit_code == 0
    res = runner.invoke(app, ["compare", str(out), "--csv", str(table)])
    assert res.exit_code == 0, res.output
    (row,) = list(csv.DictReader(table.open()))
    data = json.loads(out.read_text())
    assert row["held_out_on"] == "half" and float(row["held_out_delta"]) == pytest.approx(data["held_out"]["delta"])
    for name in ("best", "fixed", "held_out"):
        assert float(row[f"{name}_low"]) == pytest.approx(data["bootstrap"][name]["low"])
        assert float(row[f"{name}_high"]) == pytest.approx(data["bootstrap"][name]["high"])
