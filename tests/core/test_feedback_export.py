"""`expertkit feedback export`: the store (web UI and server records alike) as training data that `expertkit data
check` accepts; only=good|edited|all; mistakes explained."""

from __future__ import annotations

import json

import pytest

from expertkit.cli.main import main
from expertkit.core.errors import ExpertkitError
from expertkit.core.feedback import FeedbackStore


@pytest.fixture
def db(tmp_path):
    """A store with a liked, an edited-and-disliked, a disliked, an unrated and an untrainable answer."""
    path = tmp_path / "feedback.sqlite"
    store = FeedbackStore(path)
    cid = store.start_conversation(model="sail", system="You are Sail.")  # as the web UI writes
    store.add_message(cid, "user", "Who are you?")
    liked = store.add_message(cid, "assistant", "I am Sail.", reasoning="A name question.", model="sail")
    store.record_feedback(liked, rating=1)
    asked = [{"role": "user", "content": "Who made you?"}]  # as the server records
    edited = store.record_conversation(asked, "Nobody.", model="sail", completion_id="chatcmpl-1")
    store.record_feedback(edited, rating=-1, edited_content="Yunfan Tech built me.")
    disliked = store.record_conversation(asked, "A cat.", model="sail", completion_id="chatcmpl-2")
    store.record_feedback(disliked, rating=-1)
    store.record_conversation([{"role": "user", "content": "Hi"}], "Hello!", model="sail", completion_id="chatcmpl-3")
    twice = [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hello?"}]  # a client may send this
    untrainable = store.record_conversation(twice, "Yes?", model="sail", completion_id="chatcmpl-4")
    store.record_feedback(untrainable, rating=1)
    store.close()
    return path


def answers(path) -> list[str]:
    return [json.loads(line)["messages"][-1]["content"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_writes_liked_and_edited_answers_that_data_check_accepts(db, tmp_path, tiny_model, capsys):
    out = tmp_path / "data" / "round2.jsonl"
    assert main(["feedback", "export", f"feedback_db={db}", f"output={out}"]) == 0
    printed = capsys.readouterr().out
    assert f"2 liked or edited answers from {db} -> {out}; 1 left out" in printed
    assert "the store holds 5 conversation(s), 2 liked, 2 disliked, 1 edited answer(s)" in printed
    assert answers(out) == ["<think>\nA name question.\n</think>\n\nI am Sail.", "Yunfan Tech built me."]
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert main(["data", "check", f"model_name_or_path={tiny_model}", f"dataset={out}"]) == 0
    checked = capsys.readouterr().out
    assert "2 valid, 0 invalid" in checked and "verdict: ready to train" in checked


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["only=edited"], ["Yunfan Tech built me."]),
        (["only=all", "with_reasoning=false"], ["I am Sail.", "Yunfan Tech built me.", "A cat.", "Hello!"]),
    ],
)
def test_only_picks_which_answers(db, tmp_path, keys, expected):
    out = tmp_path / "out.jsonl"
    assert main(["feedback", "export", f"feedback_db={db}", f"output={out}", *keys]) == 0
    assert answers(out) == expected


def test_mistakes_are_explained(db, tmp_path, capsys):
    assert main(["feedback", "export", f"feedback_db={tmp_path / 'none.sqlite'}"]) == 1
    err = capsys.readouterr().err
    assert "no feedback store at" in err and "store_conversations=true" in err
    assert main(["feedback", "export", f"feedback_db={db}", "only=best"]) == 1
    assert "only" in capsys.readouterr().err
    empty = tmp_path / "empty.sqlite"
    FeedbackStore(empty).close()
    assert main(["feedback", "export", f"feedback_db={empty}", f"output={tmp_path / 'x.jsonl'}"]) == 1
    assert "no liked or edited answers to export" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_arms_raters_and_votes_are_stored(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.sqlite")
    question = [{"role": "user", "content": "Who are you?"}]
    a = store.record_conversation(question, "I am Sail.", model="r1", alias="expert", arm="r1", source="arena")
    b = store.record_conversation(question, "Hello.", model="r2", alias="expert", arm="r2", source="arena")
    store.record_feedback(a, rating=1, rater="alice")
    assert store.feedback(a)["rater"] == "alice"
    vote = store.record_vote(a, b, "a", rater="bob")
    assert store.votes() == [
        {
            "id": vote,
            "message_a": a,
            "message_b": b,
            "winner": "a",
            "rater": "bob",
            "created": store.votes()[0]["created"],
        }
    ]
    with pytest.raises(ValueError, match="winner must be"):
        store.record_vote(a, b, "c")
    with pytest.raises(ExpertkitError, match="no message"):
        store.record_vote(a, "missing", "tie")
    rows = store._read("SELECT alias, arm FROM conversations ORDER BY rowid")
    assert rows == [("expert", "r1"), ("expert", "r2")]
