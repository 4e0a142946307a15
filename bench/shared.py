"""Shared by the benchmarks: the ~27M-parameter model they run on, its topics, percentiles, waiting for a
server subprocess to become healthy, and the --set KEY=VALUE option."""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

TOPICS = [
    "tides", "compilers", "photosynthesis", "the printing press", "volcanoes", "TCP handshakes", "bread yeast",
    "glaciers", "vaccines", "binary search", "the Silk Road", "solar panels", "coral reefs", "RSA keys",
    "jet engines", "honeybees", "inflation", "lighthouses", "SQL indexes", "monsoons", "the abacus", "lasers",
    "tea ceremonies", "black holes", "wind turbines", "git rebase", "tectonic plates", "sourdough", "radar",
    "the immune system", "bridges", "hash tables",
]  # fmt: skip


def prepare_model(work: Path) -> Path:
    """WORK/model-small (bench/train_throughput.py's model), built once with expertkit.model.tiny when absent."""
    model = work / "model-small"
    if not (model / "config.json").is_file():
        from expertkit.model.tiny import build_tiny_model

        texts = [f"In two sentences, what is {t}? {t.capitalize()} are a topic people ask about." for t in TOPICS]
        build_tiny_model(model, texts, size="small", vocab_size=8000)
    return model


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), 0 for no data."""
    if not xs:
        return 0.0
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (k - lo)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, limit_s: float = 300, poll_s: float = 0.2) -> None:
    """Return once `url`/health answers 200; exit with the server log's tail if it dies or takes over limit_s."""
    import httpx

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-5000:]
            raise SystemExit(f"FAIL start: the server exited with {proc.returncode}; its log:\n{tail}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(poll_s)
    proc.kill()
    raise SystemExit(f"FAIL start: not healthy after {limit_s:.0f} s; its log:\n{log.read_text()[-5000:]}")


def add_set_option(p: argparse.ArgumentParser, help: str) -> None:
    """--set KEY=VALUE, repeatable, into args.overrides (a list of the strings; check each has "=")."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)
