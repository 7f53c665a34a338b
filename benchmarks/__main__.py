"""``python -m benchmarks``: run every benchmark, print its figures, write benchmarks/RESULTS.md.

The metrics and sweep benchmarks run in this process; the others run as their own scripts
(``python -m benchmarks.<name> ...``, smaller settings with ``--quick``), their printed lines
becoming the figures. Each figure is a ratio or time measured within one run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import Figure, machine

HERE = Path(__file__).resolve().parent
PIPE = "\\|"  # a "|" inside a Markdown table cell


def script(name: str, full: list[str], quick: list[str]) -> Callable[[bool], list[Figure]]:
    """A benchmark run as ``python -m benchmarks.<name>``; each printed line is one figure."""

    def run(is_quick: bool) -> list[Figure]:
        args = quick if is_quick else full
        done = subprocess.run(
            [sys.executable, "-m", f"benchmarks.{name}", *args],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [line.rstrip() for line in done.stdout.splitlines() if line.strip()]
        for line in lines:
            print(f"  {line}", flush=True)
        if done.returncode:
            tail = done.stderr.strip().splitlines()[-1:] or ["(no message)"]
            print(f"  failed (exit {done.returncode}): {tail[0]}", flush=True)
            lines.append(f"FAILED (exit {done.returncode}): {tail[0]}")
        flags = " ".join(args)
        return [Figure(name, f"{flags}" if i == 0 else "", line) for i, line in enumerate(lines)]

    return run


def in_process(module: str) -> Callable[[bool], list[Figure]]:
    def run(is_quick: bool) -> list[Figure]:
        import importlib

        return importlib.import_module(f"benchmarks.{module}").run(quick=is_quick)

    return run


BENCHMARKS: dict[str, Callable[[bool], list[Figure]]] = {
    "metrics_vs_sklearn": in_process("metrics_vs_sklearn"),
    "ap_ideas": in_process("ap_ideas"),
    "sweep_from_cache": in_process("sweep_from_cache"),
    "extraction_overhead": script(
        "extraction_overhead", ["efficientnet_lite0", "224", "16"], ["efficientnet_lite0", "160", "8"]
    ),
    "patched_overhead": script(
        "patched_overhead",
        [
            "--models",
            "efficientnet_lite0",
            "--sizes",
            "224",
            "--classes",
            "80,1000",
            "--runtimes",
            "eager,onnx",
            "--repeats",
            "5",
        ],
        [
            "--models",
            "efficientnet_lite0",
            "--sizes",
            "224",
            "--classes",
            "80",
            "--runtimes",
            "eager",
            "--repeats",
            "3",
        ],
    ),
    "loading_speed": script("loading_speed", ["--n", "200"], ["--n", "40"]),
    "verify_images_cost": script("verify_images_cost", ["--n", "500"], ["--n", "100"]),
    "warm_run": script("warm_run", ["--num", "20", "--repeat", "3"], ["--num", "20", "--repeat", "1"]),
}


def discovered() -> dict[str, Callable[[bool], list[Figure]]]:
    """Modules of benchmarks/ missing from the table: run as scripts (``--quick`` passed in quick mode),
    so a new benchmark is never silently left out."""
    import pkgutil

    helpers = {"harness", "__main__"}
    names = sorted(
        m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name not in BENCHMARKS and m.name not in helpers
    )
    return {name: script(name, [], ["--quick"]) for name in names}


def busy_note(info: dict[str, str]) -> list[str]:
    """A line saying so when the machine ran other work (1-minute load above the core count)."""
    try:
        load, cores = (
            float(info["load average at start (1, 5, 15 min)"].split(",")[0]),
            int(info["cores (os.cpu_count)"]),
        )
    except (KeyError, ValueError):
        return []
    if load <= cores:
        return []
    return [
        "",
        f"**The machine was busy** (load {load:.1f} on {cores} cores): absolute times are inflated and noisy; compare the ratios, and re-measure on a quiet machine.",
    ]


def write_results(
    path: Path, info: dict[str, str], figures: list[Figure], args: argparse.Namespace, seconds: float
) -> None:
    lines = [
        "# Benchmark results",
        "",
        (
            f"Written by `python -m benchmarks{' --quick' if args.quick else ''}{''.join(f' --only {o}' for o in args.only or [])}` "
            f"in {seconds:.0f} s. Ratios are measured within one run (warm-up, then the median of repeats); "
            '"previous" is the implementation before issue 15 (the torch metrics, kept as `csra_posthoc.metrics.torch_reference`).'
        ),
        *busy_note(info),
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in info.items()],
        "",
        "| benchmark | case | figure |",
        "|---|---|---|",
        *[f"| {f.benchmark} | {f.name} | {f.value.replace('|', PIPE)} |" for f in figures],
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Run the benchmarks and write benchmarks/RESULTS.md."
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (about a minute)")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable; see --list)")
    p.add_argument(
        "--out",
        type=Path,
        default=HERE / "RESULTS.md",
        help="where to write the table (default: benchmarks/RESULTS.md)",
    )
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = p.parse_args(argv)
    everything = {**BENCHMARKS, **discovered()}
    if args.list:
        print("\n".join(everything))
        return
    unknown = sorted(set(args.only or []) - set(everything))
    if unknown:
        p.error(f"--only {unknown[0]}: not a benchmark; choose from {', '.join(everything)}")
    info = machine()
    print(" | ".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    figures: list[Figure] = []
    t0 = time.perf_counter()
    for name, run in everything.items():
        if args.only and name not in args.only:
            continue
        print(f"{name}:", flush=True)
        start = time.perf_counter()
        figures += run(args.quick)
        print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - t0
    write_results(args.out, info, figures, args, seconds)
    print(f"wrote {args.out} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
