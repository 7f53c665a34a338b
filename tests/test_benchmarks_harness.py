"""`python -m benchmarks`: every module of benchmarks/ is run, and RESULTS.md states machine and figures."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import BENCHMARKS, discovered, main, write_results
from benchmarks.harness import Figure, machine, median_time


def test_every_benchmark_module_is_run(capsys) -> None:
    modules = {p.stem for p in Path("benchmarks").glob("*.py")} - {"__init__", "__main__", "harness"}
    assert modules <= set(BENCHMARKS) | set(discovered())
    main(["--list"])
    assert set(capsys.readouterr().out.split()) == modules


@pytest.mark.parametrize("name", sorted(discovered()))
def test_every_discovered_script_takes_quick(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m benchmarks --quick`` passes ``--quick`` to the scripts it discovers: each must
    accept it (two did not, and their quick run failed). The script itself runs, as
    ``python -m benchmarks.<name> --quick --help`` would (in this process: no second interpreter
    start), and its parser lists ``--quick`` and exits 0 without running the benchmark."""
    monkeypatch.setattr(sys, "argv", [f"benchmarks.{name}", "--quick", "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module(f"benchmarks.{name}", run_name="__main__")
    assert done.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_results_table_names_the_machine_and_each_figure(tmp_path: Path) -> None:
    info = machine()
    assert {"CPU", "cores (os.cpu_count)", "torch threads", "torch", "numpy", "scikit-learn", "date (UTC)"} <= set(info)
    out = tmp_path / "RESULTS.md"
    figures = [
        Figure("sweep_from_cache", "COCO-size default grid", "7.5 s | 40 ms/row"),
        Figure("ap_ideas", "floor", "28 ms"),
    ]
    write_results(out, info, figures, argparse.Namespace(quick=True, only=["ap_ideas"]), 12.0)
    text = out.read_text()
    assert "python -m benchmarks --quick --only ap_ideas" in text
    assert f"| CPU | {info['CPU']} |" in text
    assert (
        "| sweep_from_cache | COCO-size default grid | 7.5 s \\| 40 ms/row |" in text
    )  # escaped: a bare "|" would break the table


def test_median_time_warms_up_then_takes_the_median() -> None:
    calls = []
    seconds, out = median_time(lambda: calls.append(1) or len(calls), repeats=3, warmup=2)
    assert len(calls) == 5 and out == 5 and seconds >= 0


def test_busy_machine_is_flagged_in_the_results() -> None:
    from benchmarks.__main__ import busy_note

    info = {"load average at start (1, 5, 15 min)": "9.5, 8.0, 7.0", "cores (os.cpu_count)": "2"}
    assert "busy" in " ".join(busy_note(info))
    assert busy_note({**info, "load average at start (1, 5, 15 min)": "0.3, 0.2, 0.1"}) == []
