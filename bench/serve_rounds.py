"""Median and range over rounds of bench/serve_throughput.py: one --json file per round, in the same order.

    python bench/serve_rounds.py serve-1.json serve-2.json serve-3.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def spread(values: list[float], unit: str = "") -> str:
    """'median (min-max)' of the rounds' values."""
    return f"{statistics.median(values):.2f}{unit} ({min(values):.2f}-{max(values):.2f}{unit})"


def main(paths: list[str]) -> int:
    rounds = [json.loads(Path(p).read_text()) for p in paths]
    rates: dict[tuple[str, int], list[float]] = {}
    for payload in rounds:
        for r in payload["results"]:
            rates.setdefault((r["system"], r["clients"]), []).append(r["completion_tokens"] / r["wall_s"])
    print(f"{len(rounds)} round(s): tok/s median (range)")
    for (system, clients), values in sorted(rates.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"  {system:<10} {clients:>2} clients  {spread(values)}")
    print("expertkit / baseline, median (range) over rounds")
    levels = sorted({int(k) for payload in rounds for k in payload["ratios"] if str(k).isdigit()})
    for clients in levels:
        per = [payload["ratios"][str(clients)] for payload in rounds if str(clients) in payload["ratios"]]
        print(
            f"  {clients:>2} clients: throughput {spread([p['throughput'] for p in per], 'x')}, "
            f"TTFT p95 {spread([p['ttft_p95'] for p in per], 'x')}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
