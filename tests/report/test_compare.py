"""compare: results files of this schema -> one sorted table, CSV / Markdown / LaTeX; others refused."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from csra_posthoc.errors import CSRAError
from csra_posthoc.report.compare import (
    compare_rows,
    read_results_file,
    to_csv,
    to_latex,
    to_markdown,
)
from tests.helpers import write_results


def test_rows_sorted_by_dataset_then_model_with_optional_figures(tmp_path: Path) -> None:
    boot = {
        "bootstrap": {
            "n": 10,
            "seed": 0,
            "fixed": {"delta": 1.0, "low": -0.5, "high": 2.0},
            "best": {"delta": 2.0, "low": 0.5, "high": 3.0},
        }
    }
    held = {"held_out": {"select_on": "half", "lam": 0.3, "variant": "max", "score": 50.0, "delta": 0.7}}
    a = write_results(tmp_path / "a.json", "resnet50", "voc2007", 1, {**boot, **held})
    write_results(tmp_path / "b.json", "convnext", "voc2007", 2)
    write_results(tmp_path / "c.json", "alexnet", "coco2014", 3)
    rows = compare_rows([tmp_path / f"{x}.json" for x in "abc"])
    assert [(r.dataset, r.model) for r in rows] == [
        ("coco2014", "alexnet"),
        ("voc2007", "convnext"),
        ("voc2007", "resnet50"),
    ]
    r = rows[2]
    assert (
        r.baseline == a["baseline"]["mAP"]
        and r.best == a["best"]["metrics"]["mAP"]
        and r.fixed_lam == a["fixed"]["lam"]
    )
    assert r.fixed_interval == (-0.5, 2.0) and r.held_out == 50.0 and r.held_out_on == "half"
    md = to_markdown(rows)
    assert md.count("\n") == 5 and "n.s." in md  # fixed interval holds 0
    assert "[+0.50, +3.00]" in md and "50.00 (half)" in md
    tex = to_latex(rows)
    assert "\\toprule" in tex and "$\\lambda$" in tex and tex.count("\\\\") == 4
    table = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert (
        table[2]["fixed_low"] == "-0.5"
        and table[0]["fixed_low"] == ""
        and float(table[1]["baseline"]) == rows[1].baseline
    )


def test_cli_compare_writes_every_format(tmp_path: Path) -> None:
    write_results(tmp_path / "a.json", "resnet50", "voc2007", 1)
    outs = {flag: tmp_path / f"t.{ext}" for flag, ext in (("--csv", "csv"), ("--markdown", "md"), ("--latex", "tex"))}
    args = ["compare", str(tmp_path / "a.json")] + [x for flag, p in outs.items() for x in (flag, str(p))]
    res = CliRunner().invoke(app, args, terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "resnet50" in res.output and all(p.is_file() for p in outs.values())


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not JSON"),
        (json.dumps([1, 2]), "not a csra-posthoc results file"),
        (json.dumps({"predictions": []}), "not a csra-posthoc results file"),
    ],
)
def test_non_results_files_are_refused_by_name(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(CSRAError, match=message) as info:
        read_results_file(bad)
    assert str(bad) in str(info.value)
    res = CliRunner().invoke(app, ["compare", str(bad)])
    assert res.exit_code == 2 and str(bad) in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("schema, message", [(None, "no schema field"), (2, "schema 2")])
def test_other_schema_versions_are_refused(tmp_path: Path, schema, message: str) -> None:
    data = write_results(tmp_path / "r.json", "m", "d", 0)
    if schema is None:
        del data["schema"]
    else:
        data["schema"] = schema
    (tmp_path / "r.json").write_text(json.dumps(data))
    with pytest.raises(CSRAError, match=message):
        read_results_file(tmp_path / "r.json")


def test_results_dict_has_schema_one(tmp_path: Path) -> None:
    assert write_results(tmp_path / "r.json", "m", "d", 0)["schema"] == 1


def test_output_in_a_missing_folder_is_refused_before_reading(tmp_path: Path) -> None:
    write_results(tmp_path / "a.json", "m", "d", 0)
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "a.json"), "--csv", str(tmp_path / "no" / "t.csv")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_cli_module_imports_neither_torch_nor_matplotlib() -> None:
    import subprocess
    import sys

    code = "import sys, csra_posthoc.cli.app; assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
