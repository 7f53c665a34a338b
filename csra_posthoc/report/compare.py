"""``csra-posthoc compare``: many results files, one Table-1 style table (terminal, CSV, Markdown, LaTeX).

Reads the JSON that ``sweep --out`` writes (:class:`~csra_posthoc.report.results_file.ResultsFile`); the bootstrap interval and the
held-out figure are shown where the file has them. Rows are sorted by dataset, then model.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..atomic import atomic_write
from ..errors import CSRAError
from ..outputs import check_outputs
from ..text import plain, safe
from .results_file import ResultsFile, ResultsRow
from .tables import report_console

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


def read_results_file(path: str | Path) -> ResultsFile:
    """A results JSON of this schema version (:meth:`ResultsFile.read`), else one line naming the file and what is wrong."""
    return ResultsFile.read(path, required=REQUIRED, param="paths")


def compare_row(results: ResultsFile, source: str = "") -> CompareRow:
    """The table row of one results file."""
    p = str(results.primary_metric)
    held = results.extra.get("held_out") or None
    try:
        best, fixed = ResultsRow.from_json(results.extra["best"]), ResultsRow.from_json(results.extra["fixed"])
        return CompareRow(
            model=results.model,
            dataset=str(results.dataset),
            split=results.split,
            metric=p,
            num_images=results.num_images,
            baseline=float(results.baseline[p]),
            best_lam=best.lam,
            best=best.metric(p),
            fixed_lam=fixed.lam,
            fixed=fixed.metric(p),
            best_interval=results.interval("best"),
            fixed_interval=results.interval("fixed"),
            held_out=None if held is None else float(held["score"]),
            held_out_delta=None if held is None else float(held["delta"]),
            held_out_on=None if held is None else str(held.get("select_on")),
            held_out_interval=results.interval("held_out"),
            source=source,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CSRAError(
            f"{source or 'results'}: malformed results file ({exc!r} missing or not a number); re-run sweep --out",
            param="paths",
        ) from None


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


COLUMNS = (
    "model",
    "dataset",
    "metric",
    "baseline",
    "best λ",
    "best",
    "Δ best (optimistic)",
    "fixed λ",
    "fixed",
    "Δ fixed",
    "held-out",
    "Δ held-out",
)


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
    table = Table(
        title="CSRA across models and datasets (Δ: variant − baseline, % points; [95 % bootstrap]; n.s.: interval holds 0)",
        title_justify="left",
    )
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("model", "dataset", "metric") else "right")
    for row in rows:
        table.add_row(*(Text(plain(cell)) for cell in table_cells(row)))
    console.print(table)
    console.print(
        "best λ is chosen on the evaluated images themselves (optimistic, as in the paper); held-out chooses it elsewhere"
    )


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
        bi, fi, hi = (
            r.best_interval or (None, None),
            r.fixed_interval or (None, None),
            r.held_out_interval or (None, None),
        )
        values = [
            r.model, r.dataset, r.split, r.metric, r.num_images, r.baseline, r.best_lam, r.best, r.best_delta, *bi,
            r.fixed_lam, r.fixed, r.fixed_delta, *fi, r.held_out_on, r.held_out, r.held_out_delta, *hi, r.source,
        ]  # fmt: skip
        writer.writerow(["" if v is None else v for v in values])
    return buf.getvalue()


def to_markdown(rows: Sequence[CompareRow]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if i < 3 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
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
    out = [
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(_latex_escape(c) for c in COLUMNS) + " \\\\",
        "\\midrule",
    ]
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
    check_outputs(
        {"csv_out": csv_out, "markdown_out": markdown_out, "latex_out": latex_out}, {"paths": list(paths)}
    )  # README: Outputs
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
