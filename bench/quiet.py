"""Shared by the benchmarks: is the machine quiet? On 2 cores any other job skews the figures."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of the machine have used since boot (/proc/stat; None where there is none)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user..steal; guest time is inside user


def wait_for_idle(
    limit_s: float,
    own_seconds: Callable[[], float] = lambda: 0.0,
    indent: str = "  ",
    see: str = "see 'other processes' below",
) -> None:
    """Wait (up to limit_s) for a 2-second window in which other processes (not our own) use < 0.15 cores."""
    deadline, warned = time.monotonic() + limit_s, False
    while True:
        before, own_before = busy_cpu_seconds(), own_seconds()
        time.sleep(2.0)
        after, own_after = busy_cpu_seconds(), own_seconds()
        if before is None or after is None or ((after - before) - (own_after - own_before)) / 2.0 < 0.15:
            return
        if time.monotonic() > deadline:
            print(f"{indent}warning: the machine is still busy; measuring anyway ({see})", flush=True)
            return
        if not warned:
            print(f"{indent}waiting up to {limit_s:.0f} s for other processes to finish ...", flush=True)
            warned = True
