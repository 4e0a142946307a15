"""core/feedback.py: ordered migrations, feedback where the latest counts, and export as training data."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from expertkit.core.errors import ExpertkitError
from expertkit.core.feedback import MIGRATIONS, FeedbackStore, default_feedback_db


def chat(store: FeedbackStore, system: str | None = "You are Sail.") -> tuple[str, str, str]:
    """(conversation, first answer, second answer) of a two-turn conversation."""
    cid = store.start_conversation(model="sail", system=system)
    store.add_message(cid, "user", "Who are you?")
    a1 = store.add_message(cid, "assistant", "I am a model.", reasoning="The user asks my name.", model="sail")
    store.add_message(cid, "user", "Who made you?")
    a2 = store.add_message(cid, "assistant", "Nobody.", model="sail", options={"temperature": 0.7})
    return cid, a1, a2


def test_migrations_run_once_in_order_and_an_old_file_is_brought_up_to_date(tmp_path):
    path = tmp_path / "f.sqlite"
    store = FeedbackStore(path)
    assert store.migrate() == []  # already applied by the constructor
    store.close()
    names = [r[0] for r in sqlite3.connect(path).execute("SELECT name FROM _migrations ORDER BY rowid")]
    assert names == [m.__name__ for m in MIGRATIONS] and names[0] == "m001_initial"

    def m999_extra(db):
        db.execute("ALTER TABLE feedback ADD COLUMN source TEXT")

    MIGRATIONS.append(m999_extra)
    try:
        store = FeedbackStore(path)  # an older file gains the new migration only
        assert "source" in [r[1] for r in store._read("PRAGMA table_info(feedback)")]
        assert store.migrate() == []
    finally:
        MIGRATIONS.remove(m999_extra)


def test_latest_feedback_counts_and_keeps_the_other_half(tmp_path):
    store = FeedbackStore(tmp_path / "f.sqlite")
    _, a1, _ = chat(store)
    store.record_feedback(a1, rating=-1)
    store.record_feedback(a1, edited_content="I am Sail, the Yunfan Tech assistant.")
    assert store.feedback(a1)["rating"] == -1  # the edit kept the rating
    store.record_feedback(a1, rating=1)
    now = store.feedback(a1)
    assert now["rating"] == 1 and now["edited_content"] == "I am Sail, the Yunfan Tech assistant."
    assert store.counts() == {"conversations": 1, "messages": 4, "up": 1, "down": 0, "edited": 1}
    with pytest.raises(ExpertkitError, match="no message"):
        store.record_feedback("missing", rating=1)
    with pytest.raises(ValueError):
        store.record_feedback(a1, rating=5)


def test_export_keeps_liked_and_edited_answers_with_their_history(tmp_path):
    store = FeedbackStore(tmp_path / "f.sqlite")
    _, a1, a2 = chat(store)
    _, b1, _ = chat(store, system=None)
    store.record_feedback(a1, edited_content="I am Sail.")  # edited: kept, with the edit as the answer
    store.record_feedback(a2, rating=1)  # liked: kept, after the edited first answer
    store.record_feedback(b1, rating=-1)  # disliked, not edited: left out
    out = tmp_path / "out" / "feedback.jsonl"
    assert store.export_jsonl(out) == 2
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["messages"] == [
        {"role": "system", "content": "You are Sail."},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am Sail."},
    ]
    assert [m["content"] for m in rows[1]["messages"]] == [
        "You are Sail.",
        "Who are you?",
        "I am Sail.",
        "Who made you?",
        "Nobody.",
    ]


def test_a_liked_answer_keeps_its_reasoning_and_the_export_is_training_data(tmp_path):
    from expertkit.data.load import load_dataset
    from expertkit.train.config import TrainConfig

    store = FeedbackStore(tmp_path / "f.sqlite")
    _, a1, _ = chat(store)
    store.record_feedback(a1, rating=1)
    out = tmp_path / "feedback.jsonl"
    store.export_jsonl(out)
    answer = json.loads(out.read_text(encoding="utf-8"))["messages"][-1]["content"]
    assert answer == "<think>\nThe user asks my name.\n</think>\n\nI am a model."
    config = TrainConfig(model_name_or_path="m", dataset=[str(out)])
    loaded = load_dataset(str(out), config)
    assert loaded.format == "openai" and len(loaded.conversations) == 1 and not loaded.problems


def test_default_path_is_under_the_home_and_a_bad_path_is_explained(tmp_path):
    assert default_feedback_db() == Path(os.environ["HOME"]) / ".expertkit" / "feedback.sqlite"  # the isolated home
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExpertkitError, match="cannot open the feedback store"):
        FeedbackStore(tmp_path / "file" / "f.sqlite")
