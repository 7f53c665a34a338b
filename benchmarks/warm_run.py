"""Wall time of a fully cached ``csra-posthoc demo`` as a multiple of ``python -c "import torch"``.

torch is the floor (the cache is safetensors, the metrics are torch); everything above it is what
a warm run costs. Builds a small demo once (its own temporary cache), then times the warm run and
the bare torch import in the same process tree, median of ``--repeat`` runs each.

Usage: python -m benchmarks.warm_run [--num 40] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=40, help="trainval and test mosaics")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as cache:
        demo = [
            sys.executable,
            "-m",
            "csra_posthoc.cli.app",
            "demo",
            "--num-train",
            str(args.num),
            "--num-test",
            str(args.num),
            "--cache-dir",
            cache,
        ]
        cold = wall(demo, env)
        warm = [wall(demo, env) for _ in range(args.repeat)]
        torch_only = [wall([sys.executable, "-c", "import torch"], env) for _ in range(args.repeat)]
    w, t = statistics.median(warm), statistics.median(torch_only)
    print(
        f"demo {args.num}/{args.num} mosaics: cold {cold:.1f} s; warm median {w:.2f} s; python -c 'import torch' median {t:.2f} s"
    )
    print(f"warm / import torch = {w / t:.2f}")


if __name__ == "__main__":
    main()
