"""The Data tab in a real browser: pick a dataset, clean it as a background job, read what was removed, accept the
cleaned file, and find it in the Train tab's dataset list. `expertkit webui` without a model (no chat server), on
127.0.0.1, with a dataset_dir of its own (the test writes its dataset_info.json). Screenshot: webui-data.png."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from browser_setup import BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS, keep_local, running_webui, sync_playwright

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
    args = [f"dataset_dir={data}", "saves_dir=saves", "feedback_db=feedback.sqlite"]
    with running_webui(work, args) as url:
        yield url, work


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
