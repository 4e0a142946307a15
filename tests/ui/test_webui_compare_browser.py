"""Accounts and the Compare tab in a real browser (Debian's chromium through playwright) against `expertkit webui
users=...` chatting with the live tiny-model server: the login page first; a rater sees chat and compare only, asks
one question, gets two anonymous answers, votes, sees who was who, and the vote is stored with the rater's name; a
trainer sees the train and promote tabs and the A/B statistics. The Compare tab is screenshotted: into docs/images/
with EXPERTKIT_SCREENSHOTS=docs/images, into the test's folder otherwise. The page may load nothing but 127.0.0.1.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import httpx
import pytest
from browser_setup import BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS, keep_local, running_webui, sync_playwright, wait_until

from expertkit.ui.accounts import add_user

pytestmark = BROWSER_MARKS
WAIT_MS = 60_000
LIVE_KEY = "sk-test-local"  # the key of conftest.py's live server


@pytest.fixture(scope="module")
def webui(live_server, tmp_path_factory):
    """(url, work folder) of `expertkit webui users=users.yaml` chatting with the live server: alice is a trainer,
    bob a rater."""
    _, server_url = live_server
    work = tmp_path_factory.mktemp("webui-accounts")
    add_user(work / "users.yaml", "alice", "alice-pw", "trainer")
    add_user(work / "users.yaml", "bob", "bob-pw", "rater")
    args = [f"server_url={server_url}/v1", f"api_key={LIVE_KEY}", "users=users.yaml", "saves_dir=saves",
            "feedback_db=feedback.sqlite"]  # fmt: skip
    with running_webui(work, args) as url:
        yield url, work


@pytest.fixture(scope="module")
def browser():
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        browser.outside = outside
        yield browser
        browser.close()
    assert not outside, f"the page tried to load from outside: {outside}"


def open_page(browser, url: str):
    """A fresh page (its own cookies) that may load nothing but 127.0.0.1."""

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    keep_local(page, browser.outside)
    page.goto(url)
    return page


def log_in(page, user: str, password: str) -> None:
    page.wait_for_selector("h2:has-text('Login')")
    page.locator("input[data-testid=textbox]").fill(user)
    page.locator("input[type=password]").fill(password)
    page.click("button:has-text('Login')")


def tab(page, name: str):
    return page.locator(f"button[role=tab]:has-text('{name}')")


def test_a_rater_logs_in_sees_chat_and_compare_only_and_votes_in_the_arena(browser, webui):
    url, work = webui
    assert httpx.get(f"{url}/config").status_code == 401  # nothing of the page without a login
    page = open_page(browser, url)
    log_in(page, "bob", "wrong")
    page.wait_for_selector("text=/incorrect credentials/i")
    log_in(page, "bob", "bob-pw")
    page.wait_for_selector("#user-line:has-text('bob')")
    assert "rater" in page.inner_text("#user-line")
    assert tab(page, "Chat").is_visible() and tab(page, "Compare").is_visible()
    assert tab(page, "Train").count() == 0 or not tab(page, "Train").is_visible()
    assert tab(page, "Promote").count() == 0 or not tab(page, "Promote").is_visible()

    page.wait_for_selector("#chat-server:has-text('model(s)')")
    page.locator("#chat-max-tokens input[type=number]").fill("16")
    page.locator("#chat-max-tokens input[type=number]").press("Tab")
    page.locator("#chat-input textarea").fill("Who made you?")
    page.click("#chat-send")
    page.locator("#chat-bot button[aria-label=Like]").last.click()
    db = sqlite3.connect(work / "feedback.sqlite")
    rated = "SELECT rating, rater FROM feedback ORDER BY id DESC"
    wait_until(lambda: db.execute(rated).fetchone() == (1, "bob"))  # a thumbs up records who gave it

    tab(page, "Compare").click()
    page.wait_for_function("document.querySelector('#compare-b-model input').value !== ''")  # the served names
    page.locator("#compare-max-tokens input[type=number]").fill("24")
    page.locator("#compare-max-tokens input[type=number]").press("Tab")
    page.locator("#compare-input textarea").fill("Who are you?")
    page.click("#compare-ask")
    page.wait_for_selector("#compare-vote-a:not([disabled])")
    assert "was" not in page.inner_text("#compare-result")  # anonymous until the vote
    page.click("#compare-vote-a")
    page.wait_for_selector("#compare-result:has-text('was')")
    page.screenshot(path=str(_shots(work) / "webui-compare.png"))
    assert "Your vote: A is better" in page.inner_text("#compare-result")
    assert page.locator("#compare-vote-b").is_disabled()  # one vote per pair
    assert db.execute("SELECT winner, rater FROM votes").fetchall() == [("a", "bob")]
    assert db.execute("SELECT count(*) FROM conversations WHERE source = 'arena'").fetchone() == (2,)
    page.context.close()


def test_a_trainer_sees_every_tab_and_the_ab_statistics(browser, webui):
    url, _ = webui
    page = open_page(browser, url)
    log_in(page, "alice", "alice-pw")
    page.wait_for_selector("#user-line:has-text('alice')")
    tab(page, "Promote").wait_for()
    assert tab(page, "Train").is_visible()
    tab(page, "Promote").click()
    # the table from `expertkit feedback stats --json`, or (a checkout without it) the command's own error
    page.wait_for_selector("#ab-verdicts:has-text('feedback')")
    page.wait_for_selector("#promote-status:has-text('not started')")
    page.context.close()


def _shots(fallback: Path) -> Path:
    folder = Path(os.environ.get("EXPERTKIT_SCREENSHOTS") or fallback)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
