"""The Data tab in a real browser: pick a dataset, clean it as a background job, read what was removed, accept the
cleaned file, and find it in the Train tab's dataset list. `expertkit webui` without a model (no chat server), on
127.0.0.1, with a dataset_dir of its own (the test writes its dataset_info.json). Screenshot: webui-data.png."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from browser_setup import BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS, keep_local, sync_playwright

pytestmark = BROWSER_MARKS
WAIT_MS = 90_000
ROWS = [
    {"instruction": "How do I file a motor claim?", "output": "Send the police report within 30 days."},
    {"instruction": "How do I file a motor claim?", "output": "Send the police report within thirty days."},
    {"instruction": "Who handles storm damage?", "output": "Mail claims@example.com or call 13812345678."},
]


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    work = tmp_path_factory.mktemp("webui-data")
    data = work / "data"
    data.mkdir()
    (data / "claims.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    (data / "dataset_info.json").write_text(json.dumps({"claims": {"file_name": "claims.jsonl"}}), encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HOME": str(work / "home"), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(work / "webui.log", "wb")  # noqa: SIM115 - closed below
    args = [f"dataset_dir={data}", f"port={port}", "saves_dir=saves", "feedback_db=feedback.sqlite"]
    proc = subprocess.Popen([sys.executable, "-m", "expertkit", "webui", *args], cwd=work, env=env, stdout=log,
                            stderr=log)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        log.close()
        pytest.fail(f"the web UI did not start:\n{(work / 'webui.log').read_text(errors='replace')[-3000:]}")
    yield url, work
    proc.terminate()
    try:
        proc.wait(30)
    finally:
        log.close()


def test_clean_a_dataset_and_accept_it_for_training(webui):
    url, work = webui
    outside: list[str] = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(WAIT_MS)
        keep_local(page, outside)
        page.goto(url)
        page.click("button[role=tab]:has-text('Data')")
        page.click("#data_clean-input input")
        page.click("#data_clean-input li:has-text('claims')")
        page.locator("#data_clean-output input, #data_clean-output textarea").first.fill(
            str(work / "data" / "claims_clean.jsonl")
        )
        page.click("#data_clean-start")
        page.wait_for_selector("#data_clean-message:has-text('started: expertkit data clean')")
        page.wait_for_selector("#data_clean-summary:has-text('near duplicate')", timeout=WAIT_MS)
        assert "3 rows read, 2 kept" in page.inner_text("#data_clean-summary").replace("*", "")
        page.wait_for_selector("#data_clean-preview:has-text('[EMAIL]')")  # the kept rows, PII masked
        page.locator("#data_clean-accept-name input, #data_clean-accept-name textarea").first.fill("claims_clean")
        page.click("#data_clean-accept")
        page.wait_for_selector("#data_clean-accept-message:has-text('registered')")
        folder = Path(os.environ.get("EXPERTKIT_SCREENSHOTS") or work)
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / "webui-data.png"), full_page=True)
        page.click("button[role=tab]:has-text('Train')")
        page.click("#train-dataset input")
        page.wait_for_selector("#train-dataset li[aria-label=claims_clean]")  # the Train tab lists it now
        browser.close()
    info = json.loads((work / "data" / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["claims_clean"] == {"file_name": "claims_clean.jsonl"}
    assert not outside, f"the page tried to load from outside: {outside}"
