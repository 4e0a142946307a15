"""What the browser tests share: Debian's chromium driven by playwright, the flags it needs on this closed network,
and the marks that skip a test cleanly where either is missing (.ci/run installs both).

They are a slow real-component suite (a browser and a live web UI per file, a few minutes together), so the main suite
skips them unless EXPERTKIT_BROWSER=1; `bash .ci/browser-tests` runs them (and .ci/run calls it)."""

from __future__ import annotations

import os
import shutil

import pytest

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
