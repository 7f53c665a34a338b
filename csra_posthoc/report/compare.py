"""``csra-posthoc compare``: many results files, one Table-1 style table (terminal, CSV, Markdown, LaTeX).

Reads the JSON that ``sweep --out`` writes (``"schema": 1``); the bootstrap interval and the
held-out figure are shown where the file has them. Rows are sorted by dataset, then model.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..atomic import atomic_write
from ..errors import CSRAError
from ..outputs import check_outputs
from ..text import plain, safe
from .tables import report_console

SCHEMA = 1
REQUIRED = ("model", "dataset", "primary_metric", "baseline", "best", "fixed")


@dataclass
class CompareRow:
    """One results file: the figures of one model on one dataset split (metric in percent)."""

    model: str
    dataset: str
    split: str | None
    metric: str
    num_images: int | None
    baseline: float
    best_lam: float
    best: float
    fixed_lam: float
    fixed: float
    best_interval: tuple[float, float] | None = None
    fixed_interval: tuple[float, float] | None = None
    held_out: float | None = None
    held_out_delta: float | None = None
    held_out_on: str | None = None
    held_out_interval: tuple[float, float] | None = None
    source: str = ""

    @property
    def best_delta(self) -> float:
        return self.best - self.baseline

    @property
    def fixed_delta(self) -> float:
        return self.fixed - self.baseline


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows to {value}")
    return value


def read_results_json(path: str | Path, *, required: Sequence[str], param: str, label: str = "") -> dict[str, Any]:
    """A sweep's results JSON of schema :data:`SCHEMA` with the ``required`` keys, else one line
    naming the file and what is wrong: the one reader (and the one schema rule) behind ``compare``
    and ``apply``'s ``from_results``. NaN / Infinity (which Python's json would accept) and numbers
    that overflow to infinity are refused: a figure that is not a number is never shown or written.
    ``label`` prefixes the path in messages (e.g. ``"from_results"``)."""
    path = Path(path)
    where = f"{label} {path}" if label else str(path)
    hint = "pass the results file a sweep wrote (run_sweep's `out`)"
    if not path.is_file():
        raise CSRAError(f"{where}: no such results file", param=param)
    try:
        data = json.loads(path.read_text(), parse_constant=_refuse_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CSRAError(f"{where}: not JSON ({exc}); {hint}", param=param) from None
    except ValueError as exc:  # NaN / Infinity / overflow
        raise CSRAError(
            f"{where}: holds a value that is not a finite number ({exc}); the file is damaged or was edited: re-run the sweep", param=param
        ) from None
    if not isinstance(data, dict) or not all(k in data for k in required):
        raise CSRAError(f"{where}: not a csra-posthoc results file (no {' / '.join(required)}); {hint}", param=param)
    if data.get("schema") != SCHEMA:
        found = "no schema field (written before schema 1)" if "schema" not in data else f"schema {data['schema']!r}"
        raise CSRAError(f"{where}: {found}, this version reads schema {SCHEMA}; re-run the sweep with this version", param=param)
    return data


def read_results_file(path: str | Path) -> dict[str, Any]:
    """A results JSON of this schema version, else one line naming the file and what is wrong."""
    return read_results_json(path, required=REQUIRED, param="paths")


def _interval(block: Any) -> tuple[float, float] | None:
    if isinstance(block, dict) and "low" in block and "high" in block:
        return float(block["low"]), float(block["high"])
    return None


def compare_row(data: dict[str, Any], source: str = "") -> CompareRow:
    """The table row of one results dict (as :func:`read_results_file` returns it)."""
    p = data["primary_metric"]
    boot = data.get("bootstrap") or {}
    held = data.get("held_out") or None
    try:
        return CompareRow(
            model=str(data["model"]),
            dataset=str(data["dataset"]),
            split=data.get("split"),
            metric=p,
            num_images=data.get("num_images"),
            baseline=float(data["baseline"][p]),
            best_lam=float(data["best"]["lam"]),
            best=float(data["best"]["metrics"][p]),
            fixed_lam=float(data["fixed"]["lam"]),
            fixed=float(data["fixed"]["metrics"][p]),
            best_interval=_interval(boot.get("best")),
            fixed_interval=_interval(boot.get("fixed")),
            held_out=None if held is None else float(held["score"]),
            held_out_delta=None if held is None else float(held["delta"]),
            held_out_on=None if held is None else str(held.get("select_on")),
            held_out_interval=_interval(boot.get("held_out")),
            source=source,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CSRAError(f"{source or 'results'}: malformed results file ({exc!r} missing or not a number); re-run sweep --out", param="paths") from None


def compare_rows(paths: Sequence[str | Path]) -> list[CompareRow]:
    """One row per file, sorted by dataset, then model, then split."""
    if not paths:
        raise CSRAError("compare: give at least one results JSON file", param="paths")
    rows = [compare_row(read_results_file(p), str(p)) for p in paths]
    return sorted(rows, key=lambda r: (r.dataset, r.model, r.split or ""))


def _signed(x: float) -> str:
    return f"{x:+.2f}"


def _with_interval(delta: float, interval: tuple[float, float] | None) -> str:
    """``+1.23 [+0.40, +2.10]``, with ``n.s.`` when the interval holds 0 (not significant)."""
    if interval is None:
        return _signed(delta)
    low, high = interval
    if math.isnan(low):
        return _signed(delta)
    mark = "" if (low > 0 or high < 0) else " n.s."
    return f"{_signed(delta)} [{_signed(low)}, {_signed(high)}]{mark}"


COLUMNS = ("model", "dataset", "metric", "baseline", "best λ", "best", "Δ best (optimistic)", "fixed λ", "fixed", "Δ fixed", "held-out", "Δ held-out")


def table_cells(row: CompareRow) -> list[str]:
    """The formatted cells of one row, in :data:`COLUMNS` order (the terminal, Markdown and LaTeX tables)."""
    dataset = row.dataset if row.split is None else f"{row.dataset} {row.split}"
    held = "-" if row.held_out is None else f"{row.held_out:.2f} ({row.held_out_on})"
    held_delta = "-" if row.held_out_delta is None else _with_interval(row.held_out_delta, row.held_out_interval)
    return [
        row.model, dataset, row.metric, f"{row.baseline:.2f}",
        f"{row.best_lam:g}", f"{row.best:.2f}", _with_interval(row.best_delta, row.best_interval),
        f"{row.fixed_lam:g}", f"{row.fixed:.2f}", _with_interval(row.fixed_delta, row.fixed_interval),
        held, held_delta,
    ]  # fmt: skip


def print_compare(console: Console, rows: Sequence[CompareRow]) -> None:
    table = Table(title="CSRA across models and datasets (Δ: variant − baseline, % points; [95 % bootstrap]; n.s.: interval holds 0)", title_justify="left")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("model", "dataset", "metric") else "right")
    for row in rows:
        table.add_row(*(Text(plain(cell)) for cell in table_cells(row)))
    console.print(table)
    console.print("best λ is chosen on the evaluated images themselves (optimistic, as in the paper); held-out chooses it elsewhere")


def to_csv(rows: Sequence[CompareRow]) -> str:
    """Plain numbers (no formatting), one column per figure; empty cells where a figure is absent."""
    fields = [
        "model", "dataset", "split", "metric", "num_images", "baseline", "best_lam", "best", "best_delta", "best_low", "best_high",
        "fixed_lam", "fixed", "fixed_delta", "fixed_low", "fixed_high", "held_out_on", "held_out", "held_out_delta", "held_out_low", "held_out_high", "source",
    ]  # fmt: skip
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    for r in rows:
        bi, fi, hi = r.best_interval or (None, None), r.fixed_interval or (None, None), r.held_out_interval or (None, None)
        values = [
            r.model, r.dataset, r.split, r.metric, r.num_images, r.baseline, r.best_lam, r.best, r.best_delta, *bi,
            r.fixed_lam, r.fixed, r.fixed_delta, *fi, r.held_out_on, r.held_out, r.held_out_delta, *hi, r.source,
        ]  # fmt: skip
        writer.writerow(["" if v is None else v for v in values])
    return buf.getvalue()


def to_markdown(rows: Sequence[CompareRow]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(COLUMNS))) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in table_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("$", r"\$"),
        ("#", r"\#"),
        ("_", r"\_"),
        ("{", r"\{"),
        ("}", r"\}"),
        ("~", r"\textasciitilde{}"),
        ("^", r"\textasciicircum{}"),
    ):
        text = text.replace(a, b)
    return text.replace("λ", r"$\lambda$").replace("Δ", r"$\Delta$").replace("−", "-")


def to_latex(rows: Sequence[CompareRow]) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    spec = "lll" + "r" * (len(COLUMNS) - 3)
    out = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule", " & ".join(_latex_escape(c) for c in COLUMNS) + " \\\\", "\\midrule"]
    out += [" & ".join(_latex_escape(c) for c in table_cells(r)) + " \\\\" for r in rows]
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


def _check_out(path: str | Path | None, param: str) -> None:
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise CSRAError(f"{path}: is a directory; give a file name", param=param)
    if not path.parent.is_dir():
        raise CSRAError(f"{path}: folder {path.parent} does not exist; create it first", param=param)


def run_compare(
    paths: Sequence[str | Path],
    *,
    csv_out: str | Path | None = None,
    markdown_out: str | Path | None = None,
    latex_out: str | Path | None = None,
    console: Console | None = None,
) -> list[CompareRow]:
    """Read, print and write the comparison table; returns its rows."""

    console = console or report_console()
    for out, param in ((csv_out, "csv_out"), (markdown_out, "markdown_out"), (latex_out, "latex_out")):
        _check_out(out, param)
    check_outputs({"csv_out": csv_out, "markdown_out": markdown_out, "latex_out": latex_out}, {"paths": list(paths)})  # README: Outputs
    rows = compare_rows(paths)
    print_compare(console, rows)
    for out, render in ((csv_out, to_csv), (markdown_out, to_markdown), (latex_out, to_latex)):
        if out is not None:
            text = render(rows)

            def write(tmp: str, text: str = text) -> None:
                Path(tmp).write_text(text, encoding="utf-8")

            atomic_write(Path(out), write)
            console.print(f"wrote {safe(out)}", soft_wrap=True)
    return rows
