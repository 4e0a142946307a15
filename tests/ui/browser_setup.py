"""What the browser tests share: Debian's chromium driven by playwright, the flags it needs on this closed network,
and the marks that skip a test cleanly where either is missing (.ci/run installs both).

They are a slow real-component suite (a browser and a live web UI per file, a few minutes together), so the main suite
skips them unless EXPERTKIT_BROWSER=1; `bash .ci/browser-tests` runs them (and .ci/run calls it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from live_server import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None

BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(os.environ.get("EXPERTKIT_BROWSER") != "1", reason="EXPERTKIT_BROWSER=1 (.ci/browser-tests)"),
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run does)"),
    pytest.mark.skipif(sync_playwright is None, reason="needs playwright (pip install -e '.[dev]')"),
]
# without the background-networking flags chromium tries hosts this machine cannot reach, many at a time
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def keep_local(page, outside: list[str]) -> None:
    """Let `page` load from 127.0.0.1 only (and data: / blob: URLs): any other request is refused and recorded in
    `outside`, which the test asserts is empty."""

    def only_local(route):
        if route.request.url.startswith(("http://127.0.0.1", "data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)


@contextmanager
def running_webui(work: Path, args: list[str], start_timeout: float = 90.0) -> Iterator[str]:
    """`expertkit webui ARGS port=<free port>` run in `work` (its own HOME, offline, no analytics, log in
    work/webui.log); yields its URL once it answers. At the end it is stopped with SIGTERM and must exit 0, and the
    processes it started (the chat server) must have stopped with it."""
    port = free_port()
    env = {
        **os.environ,
        "HOME": str(work / "home"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    log_path = work / "webui.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "expertkit", "webui", *args, f"port={port}"], cwd=work,
                                env=env, stdout=log, stderr=log)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            httpx.get(url, timeout=1)  # any answer: gradio listens once the whole app is built
            break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        proc.kill()
        proc.wait(30)
        pytest.fail(f"the web UI did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
    try:
        yield url
    finally:
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True)
        proc.terminate()
        assert proc.wait(30) == 0, log_path.read_text(errors="replace")[-3000:]
        for pid in children.stdout.split():  # e.g. its chat server: stopped with it
            wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), timeout=30)


def wait_until(predicate, timeout: float = 30.0) -> None:
    """Poll `predicate` every 0.1 s until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
