"""What the CPU is doing: the cores this process may use, and how busy other processes keep them.

The extraction loop on CPU runs its DataLoader workers and the forward's torch threads on the
same cores. On a quiet machine the workers' decoding and the forward share them well (capping
the torch threads cost about 10 % there); on a machine other jobs already load, the same
threads oversubscribe the cores and the forward ran about 3x slower. So the loop caps its
threads only when a short sample shows other processes busy (:func:`other_processes_load`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PROC_STAT = Path("/proc/stat")


def _affinity() -> set[int] | None:
    """The cores this process may run on; None where the OS has no affinity mask (macOS, Windows)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return None


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the OS has one)."""
    cores = _affinity()
    return len(cores) if cores is not None else (os.cpu_count() or 1)


def _core_times(cores: set[int] | None) -> tuple[int, int] | None:
    """(busy, total) clock ticks summed over ``cores`` (all when None) from ``/proc/stat``."""
    try:
        lines = PROC_STAT.read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or (cores is not None and int(name[3:]) not in cores):
            continue
        ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None


def other_processes_load(seconds: float = 0.1) -> float | None:
    """Cores' worth of CPU that other processes use, sampled over ``seconds`` while this one sleeps
    (Linux ``/proc/stat``, over this process's cores); None where there is no such file.

    Instantaneous rather than the load average, which lags a minute behind (a run that follows a
    finished heavy job would still read as busy)."""
    cores = _affinity()
    first = _core_times(cores)
    if first is None:
        return None
    time.sleep(seconds)
    second = _core_times(cores)
    if second is None or second[1] <= first[1]:
        return None
    return available_cores() * (second[0] - first[0]) / (second[1] - first[1])
