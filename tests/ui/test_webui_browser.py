"""The web UI in a real browser, as a user drives it: Debian's chromium (playwright) against `expertkit webui` on
127.0.0.1 with the tiny model.

Chat streams a reply and the thumbs up and an edit land in the feedback store; with the knowledge-base toggle on, an
answer lists its sources (a knowledge base built in the test with `expertkit kb add`); a training run started from
the form draws its loss and finishes; an export of that run from the export tab writes a model. Each tab is
screenshotted: into docs/images/ with EXPERTKIT_SCREENSHOTS=docs/images, into the test's folder otherwise. The
page may load nothing but 127.0.0.1.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from browser_setup import BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS, keep_local, running_webui, sync_playwright, wait_until

pytestmark = BROWSER_MARKS
WAIT_MS = 90_000


@pytest.fixture(scope="module")
def webui(tiny_model, identity_dir, tmp_path_factory):
    """(url, work folder) of `expertkit webui` serving the tiny model; stopped with SIGTERM (and its chat server)."""
    work = tmp_path_factory.mktemp("webui")
    args = [
        f"model_name_or_path={tiny_model}",
        f"dataset_dir={identity_dir}",
        "saves_dir=saves",
        "feedback_db=feedback.sqlite",
        "kb_dir=kb",  # built by a test with `expertkit kb add`: the server opens it on the first grounded question
    ]
    with running_webui(work, args) as url:
        yield url, work


@pytest.fixture(scope="module")
def page(webui):
    """One browser page; every request that leaves 127.0.0.1 is refused and recorded."""
    url, _ = webui
    outside: list[str] = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        keep_local(page, outside)
        page.goto(url)
        page.wait_for_selector("#chat-input textarea")
        yield page
        browser.close()
    assert not outside, f"the page tried to load from outside: {outside}"


def screenshot(page, name: str, fallback: Path) -> None:
    folder = Path(os.environ.get("EXPERTKIT_SCREENSHOTS") or fallback)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name))


def fill(page, elem_id: str, value) -> None:
    page.locator(f"#{elem_id} input, #{elem_id} textarea").first.fill(str(value))


def test_chat_streams_a_reply_and_feedback_lands_in_the_store(page, webui):
    _, work = webui
    page.wait_for_selector("#chat-server:has-text('model(s)')")
    page.evaluate(
        """() => { window.lengths = []; const bot = document.querySelector('#chat-bot');
        new MutationObserver(() => { const m = bot.querySelectorAll('[data-testid=bot]');
          if (m.length) window.lengths.push(m[m.length - 1].innerText.length); window.changed = Date.now(); })
        .observe(bot, {subtree: true, childList: true, characterData: true}); }"""
    )
    fill(page, "chat-system", "You are Sail, the Yunfan Tech assistant.")
    page.locator("#chat-max-tokens input[type=number]").fill("64")
    page.locator("#chat-max-tokens input[type=number]").press("Tab")
    fill(page, "chat-input", "Who are you?")
    page.click("#chat-send")
    page.wait_for_selector("#chat-bot button[aria-label=Like]")
    page.wait_for_function("window.changed && Date.now() - window.changed > 1500")  # the answer is complete
    lengths = [n for n in page.evaluate("window.lengths") if n]
    assert len(set(lengths)) >= 2, lengths  # the answer grew on the page: streamed, not one block

    page.locator("#chat-bot button[aria-label=Like]").last.click()
    db = sqlite3.connect(work / "feedback.sqlite")
    rating = "SELECT m.role, f.rating FROM feedback f JOIN messages m ON m.id = f.message_id ORDER BY f.id DESC"
    wait_until(lambda: db.execute(rating).fetchone() == ("assistant", 1))

    page.locator("#chat-bot button[aria-label=Edit]").last.click()
    page.locator("#chat-bot textarea").fill("I am Sail, the Yunfan Tech assistant.")
    page.locator("#chat-bot button[aria-label=Submit]").click()
    edited = "SELECT rating, edited_content FROM feedback ORDER BY id DESC"
    wait_until(lambda: db.execute(edited).fetchone() == (1, "I am Sail, the Yunfan Tech assistant."))


def test_chat_with_the_knowledge_base_lists_the_sources_under_the_answer(page, webui):
    from expertkit.cli.main import main

    _, work = webui
    docs = work / "docs"
    docs.mkdir()
    (docs / "relay.md").write_text("# Zephyr-9 relay\n\nThe Zephyr-9 relay was decommissioned on 14 March 2026.\n")
    assert main(["kb", "add", str(docs), f"kb_dir={work / 'kb'}"]) == 0
    assert page.locator("#chat-web input").is_disabled()  # the UI's server was not given web=true
    page.locator("#chat-kb input").check()
    fill(page, "chat-input", "When was the Zephyr-9 relay decommissioned?")
    page.click("#chat-send")
    sources = page.locator("#chat-bot .expertkit-sources")
    sources.wait_for()
    assert "Sources" in sources.inner_text() and "relay.md" in sources.inner_text()
    assert "Zephyr-9 relay" in sources.locator("a").inner_text()
    assert sources.locator("a").get_attribute("href") == (work / "docs" / "relay.md").resolve().as_uri()
    page.wait_for_function("window.changed && Date.now() - window.changed > 1500")  # the answer is complete
    screenshot(page, "webui-chat.png", work)


def test_training_from_the_form_draws_its_loss_and_finishes(page, webui):
    _, work = webui
    page.click("button[role=tab]:has-text('Train')")
    page.click("#train-dataset input")
    page.click("#train-dataset li[aria-label=identity]")
    page.click("#train-preview-box >> text=Dataset preview")
    page.wait_for_selector("#train-preview:has-text('Yunfan Tech')")  # the dataset's first rows
    page.click("#train-preview-box >> text=Dataset preview")
    for key, value in {"max_steps": 6, "cutoff_len": 128, "gradient_accumulation_steps": 1, "lora_rank": 4}.items():
        fill(page, f"train-{key}", value)
    page.click("#train-advanced >> text=Advanced settings")
    page.wait_for_selector("#train-logging_steps input")
    page.wait_for_timeout(300)  # the accordion's fields get their values as it opens: fill them after that
    fill(page, "train-logging_steps", 1)
    fill(page, "train-learning_check_samples", 1)
    fill(page, "train-val_size", 0.25)  # one of the four rows held out: the plot gets an eval_loss line
    page.click("#train-eval_strategy input")
    page.click("#train-eval_strategy li[aria-label=steps]")
    page.click("#train-show-yaml")
    page.wait_for_selector("#train-code:has-text('logging_steps: 1')")  # what will run, as YAML
    page.click("#train-advanced >> text=Advanced settings")  # folded again for the screenshot
    lengths = "#train-lengths:has-text('cutoff_len 2048: every example fits')"  # measured by `expertkit data check`
    page.wait_for_selector(f"{lengths}:has-text('Token lengths of 4 example(s)')")  # since the dataset was picked
    page.click("#train-start")
    page.wait_for_selector("#train-message:has-text('started: expertkit train')")
    page.wait_for_selector("#train-progress:has-text('finished: step 6/6')", timeout=WAIT_MS)
    page.wait_for_selector("#train-loss-plot canvas, #train-loss-plot svg")
    page.wait_for_selector("#train-runs:has-text('finished')")
    run = next((work / "saves").rglob("expertkit_finished")).parent
    assert (run / "webui_train.log").is_file() and (run / "adapter_config.json").is_file()
    assert "loss" in page.inner_text("#train-loss-plot")
    page.wait_for_selector("#train-loss-plot svg:has-text('eval_loss')")  # the held-out loss beside the training loss
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "webui-train.png", work)


def test_export_the_run_from_its_tab(page, webui):
    _, work = webui
    run = next((work / "saves").rglob("expertkit_finished")).parent
    page.click("button[role=tab]:has-text('Export')")
    fill(page, "export-adapter_name_or_path", run)
    fill(page, "export-export_dir", work / "saves" / "merged")
    page.click("#export-start")
    page.wait_for_selector("#export-result:has-text('exported to')", timeout=WAIT_MS)
    assert (work / "saves" / "merged" / "config.json").is_file()
    screenshot(page, "webui-export.png", work)


def test_evaluate_base_vs_tuned_from_its_tab_and_see_the_report(page, webui):
    _, work = webui
    run = next((work / "saves").rglob("expertkit_finished")).parent
    page.click("button[role=tab]:has-text('Evaluate')")
    fill(page, "eval-adapter_name_or_path", run)
    fill(page, "eval-eval_dataset", "identity")
    fill(page, "eval-metrics", "rouge-l, bleu-4, contains")
    page.locator("#eval-probe input").uncheck()
    page.click("#eval-show-command")
    page.wait_for_selector("#eval-code:has-text('expertkit eval')")
    page.click("#eval-start")
    page.wait_for_selector("#eval-metrics-table:has-text('rouge-l')", timeout=WAIT_MS)
    assert "tuned" in page.inner_text("#eval-metrics-table")
    frame = page.frame_locator("#eval-report iframe")
    frame.locator("body").wait_for()
    assert "rouge-l" in frame.locator("body").inner_text()
    page.locator("#eval-metrics-table").scroll_into_view_if_needed()
    screenshot(page, "webui-eval.png", work)
