"""The Compare tab's logic without a browser (two anonymous answers, a vote stored with its rater, the reveal), the
A/B statistics table from `expertkit feedback stats --json`, and the promote job's states (exit 3 = refused)."""

from __future__ import annotations

import random
import sys
import time

import pytest

from expertkit.core.errors import ExpertkitError
from expertkit.core.feedback import FeedbackStore
from expertkit.ui import compare, improve_tab, jobs
from expertkit.ui.client import ChatClient, Delta
from expertkit.ui.compare import Arena, alias_arms
from expertkit.ui.improve_tab import job_status, promote_args, promote_job, start_promote, stats_table, stats_verdicts
from expertkit.ui.labels import labels

L = labels("en")
LIVE_KEY = "sk-test-local"  # the key of conftest.py's live server

# exactly the shape LOOP.md's contract 2 gives `expertkit feedback stats --json`
STATS = {
    "feedback_db": "/srv/feedback.sqlite",
    "aliases": [
        {
            "alias": "expert",
            "arms": [
                {"arm": "round1", "requests": 120, "rated": 40, "thumbs_up": 30, "thumbs_up_rate": 0.75,
                 "thumbs_up_ci": [0.60, 0.86], "edited": 3, "edit_rate": 0.075, "edit_rate_ci": [0.03, 0.2],
                 "turns": 1.4},
                {"arm": "round2", "requests": 14, "rated": 10, "thumbs_up": 9, "thumbs_up_rate": 0.9,
                 "thumbs_up_ci": [0.6, 0.98], "edited": 0, "edit_rate": 0.0, "edit_rate_ci": [0.0, 0.28],
                 "turns": 1.1},
            ],
            "test": {"metric": "thumbs_up_rate", "arms": ["round1", "round2"], "difference": 0.15, "p_value": 0.31,
                     "significant": False, "ratings_needed": 84},
        },
        {"alias": "stable", "arms": [{"arm": "round1", "requests": 3, "rated": 0, "thumbs_up": 0,
                                      "thumbs_up_rate": None, "thumbs_up_ci": None, "edited": 0, "edit_rate": None,
                                      "edit_rate_ci": None, "turns": 1.0}], "test": None},
    ],
}  # fmt: skip


class TwoModels:
    """Streams a different answer per model, in two pieces."""

    def stream(self, model, messages, retrieval=None, **params):
        self.params = params
        if model == "broken":
            raise ExpertkitError("model 'broken' is not served")
        yield Delta(content=f"<think>about {messages[-1]['content']}</think>")
        yield Delta(content=f"answer from {model}")


def test_two_anonymous_answers_a_vote_with_its_rater_then_the_reveal(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "FRAME_S", 0.01)
    store = FeedbackStore(tmp_path / "f.sqlite")
    arena = Arena(TwoModels(), store, L, rng=random.Random(0))
    orders = {tuple(m for m, _ in arena.contenders("base", "sail", None, None)) for _ in range(20)}
    assert orders == {("base", "sail"), ("sail", "base")}  # a random order: the page does not tell who is who

    pair = arena.contenders("base", "sail", None, None)
    frames = list(arena.ask("Who are you?", pair, max_tokens=32))
    state = frames[-1]
    assert state.ready and [s.content for s in state.sides] == [f"answer from {m}" for m, _ in pair]
    assert state.sides[0].reasoning == "about Who are you?"
    a, b = (store.message(s.message_id) for s in state.sides)
    assert a["model"] == pair[0][0] and a["role"] == "assistant" and a["reasoning"] == "about Who are you?"
    conversations = store._read("SELECT source, alias, arm FROM conversations ORDER BY arm")
    assert conversations == [("arena", None, "base"), ("arena", None, "sail")]

    text = arena.vote(state, "b", rater="bob")
    assert f"**A** was `{pair[0][0]}`, **B** was `{pair[1][0]}`" in text and "B is better" in text
    (vote,) = store.votes()
    assert (vote["message_a"], vote["message_b"], vote["winner"], vote["rater"]) == (
        state.sides[0].message_id, state.sides[1].message_id, "b", "bob",
    )  # fmt: skip
    with pytest.raises(ExpertkitError, match="ask a question first"):
        arena.vote(state, "a")  # one vote per pair of answers
    for mistake, message in [(("base", "base"), "two different"), (("base", None), "pick two models")]:
        with pytest.raises(ExpertkitError, match=message):
            arena.contenders(*mistake, None, None)
    with pytest.raises(ExpertkitError, match="nothing was stored"):
        list(arena.ask("Hi", [("base", None), ("broken", None)]))
    assert len(store.votes()) == 1 and len(store._read("SELECT id FROM conversations")) == 2


def test_an_alias_sends_its_two_heaviest_arms_and_both_answers_record_it(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "FRAME_S", 0.01)
    models = tmp_path / "models.yaml"
    models.write_text(
        "base: Qwen/Qwen2.5-0.5B-Instruct\n"
        "models: {round1: {}, round2: {}, round3: {}}\n"
        "aliases: {expert: {round1: 0.7, round2: 0.05, round3: 0.25}, stable: round1}\n"
    )
    assert alias_arms(str(models)) == {"expert": ["round1", "round3", "round2"]}  # plain aliases are not offered
    store = FeedbackStore(tmp_path / "f.sqlite")
    arena = Arena(TwoModels(), store, L)
    pair = arena.contenders(None, None, "expert", str(models))
    assert sorted(pair) == [("round1", "expert"), ("round3", "expert")]
    state = list(arena.ask("Hi", pair))[-1]
    assert "(arms of `expert`)" in arena.vote(state, "tie", rater=None)
    rows = store._read("SELECT alias, arm FROM conversations ORDER BY arm")
    assert rows == [("expert", "round1"), ("expert", "round3")] and store.votes()[0]["winner"] == "tie"
    with pytest.raises(ExpertkitError, match="no two arms"):
        arena.contenders(None, None, "stable", str(models))


def test_the_arena_against_the_live_tiny_model(live_server, tmp_path):
    _, url = live_server
    client = ChatClient(url + "/v1", api_key=LIVE_KEY)
    names = client.models()
    store = FeedbackStore(tmp_path / "f.sqlite")
    arena = Arena(client, store, L)
    state = list(arena.ask("Who are you?", arena.contenders(names[0], names[1], None, None), max_tokens=16))[-1]
    assert state.ready and all(s.content for s in state.sides)
    arena.vote(state, "both_bad", rater="alice")
    assert store.votes()[0]["rater"] == "alice" and store.votes()[0]["winner"] == "both_bad"


def test_the_ab_table_and_verdicts_from_the_stats_json():
    table = stats_table(STATS)
    assert list(table["arm"]) == ["round1", "round2", "round1"] and list(table["alias"])[0] == "expert"
    row = table.iloc[0].tolist()
    assert row[2:] == [120, 40, "75% [60%, 86%]", "8% [3%, 20%]", "1.40"]
    assert table.iloc[2]["thumbs up (95% CI)"] == ""  # nothing rated: no rate, no interval
    text = stats_verdicts(STATS, L)
    assert "`expert`: round2 vs round1: +15.0% thumbs_up_rate, p = 0.31: not significant yet (about 84 more" in text
    assert "`stable`: fewer than two arms with ratings" in text and "/srv/feedback.sqlite" in text
    significant = {**STATS["aliases"][0], "test": {**STATS["aliases"][0]["test"], "significant": True}}
    assert "**significant**" in stats_verdicts({"aliases": [significant]}, L)
    assert "no alias has recorded requests yet" in stats_verdicts({"aliases": []}, L)


def test_the_stats_command_runs_live_or_its_error_is_shown(tmp_path):
    FeedbackStore(tmp_path / "f.sqlite").record_conversation([{"role": "user", "content": "Hi"}], "Hello")
    try:
        data = improve_tab.load_stats(str(tmp_path / "f.sqlite"))
    except ExpertkitError as e:  # a checkout without `expertkit feedback stats`: the page shows the command's words
        assert "`expertkit feedback stats --json feedback_db=" in str(e) and "failed:" in str(e)
    else:
        assert data["feedback_db"].endswith("f.sqlite") and isinstance(data["aliases"], list)
        stats_table(data), stats_verdicts(data, L)


@pytest.mark.parametrize("code, word", [(0, "finished"), (3, "refused by the gate"), (1, "failed")])
def test_a_promote_job_refused_by_the_gate_is_shown_as_refused(tmp_path, monkeypatch, code, word):
    monkeypatch.setattr(jobs, "expertkit_command", lambda args: [sys.executable, "-c", f"raise SystemExit({code})"])
    job = promote_job(str(tmp_path / "saves"))
    args = promote_args("saves/round2", "expert", "models.yaml", "eval.yaml", "0.1")
    assert args == ["promote", "candidate=saves/round2", "alias=expert", "models=models.yaml", "eval=eval.yaml",
                    "canary=0.1"]  # fmt: skip
    start_promote(job, args)
    deadline = time.monotonic() + 30
    while job.state() == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert word in job_status(job, L) and "`expertkit promote candidate=saves/round2" in job_status(job, L)
    assert "canary: '0.1'" in job.config_path.read_text()
    with pytest.raises(ExpertkitError, match="fill in eval"):
        promote_args("saves/round2", "expert", "models.yaml", "", "")
    assert improve_tab.rollback_args("expert", "models.yaml") == [
        "promote", "--rollback", "alias=expert", "models=models.yaml",
    ]  # fmt: skip
