"""`expertkit feedback export format=dpo|kto`: pairs from edits, arena votes and liked vs disliked regenerations, kto
rows from every rated answer, in LLaMA-Factory's formats with their dataset_info.json entry, read back by
`expertkit data check` with zero problems; filters, since=last, dedup, grounded answers, cutoff_len."""

from __future__ import annotations

import json

import pytest

from expertkit.cli.main import main
from expertkit.core.feedback import FeedbackStore

RULES = "You answer questions using only the numbered sources you are given."
GROUNDED_USER = '<sources>\n<source id="1" title="Relay" url="file:///kb/relay.md">\nRetired on 14 March.\n</source>\n'
GROUNDED_USER += "</sources>\n\nQuestion: When was the relay retired?"


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def db(tmp_path):
    """An edit, arena votes (a, tie, both_bad), a regenerated web UI answer (disliked, then liked), two grounded
    answers (liked / disliked, passages stored) and an untrainable liked / disliked pair (two user turns in a row)."""
    path = tmp_path / "feedback.sqlite"
    store = FeedbackStore(path)
    edited = store.record_conversation(ask("Who made you?"), "Nobody.", model="r1", alias="expert", arm="r1")
    store.record_feedback(edited, rating=-1, edited_content="Yunfan Tech built me.", rater="alice")
    q = ask("What is a deductible?")
    a = store.record_conversation(q, "The part you pay.", model="r1", alias="expert", arm="r1", source="arena")
    b = store.record_conversation(q, "A discount.", model="r2", alias="expert", arm="r2", source="arena")
    store.record_vote(a, b, "a", rater="bob")
    store.record_vote(a, b, "tie", rater="bob")
    store.record_vote(b, a, "both_bad", rater="bob")
    cid = store.start_conversation(model="sail", system="You are Sail.")  # the web UI: a regeneration
    store.add_message(cid, "user", "Hi")
    first = store.add_message(cid, "assistant", "Hello!", model="sail")
    second = store.add_message(cid, "assistant", "Hello! How can I help?", model="sail")
    store.record_feedback(first, rating=-1, rater="alice")
    store.record_feedback(second, rating=1, rater="alice")
    sources = [{"n": 1, "url": "file:///kb/relay.md", "title": "Relay"}]
    grounded = {"system": RULES, "user": GROUNDED_USER}
    for answer, rating in (("On 14 March [1].", 1), ("In May.", -1)):
        mid = store.record_conversation(
            ask("When was the relay retired?"), answer, model="r1", alias="expert", arm="r1", sources=sources,
            grounded=grounded,
        )  # fmt: skip
        store.record_feedback(mid, rating=rating, rater="alice")
    twice = [*ask("Hi"), *ask("Hello?")]
    for answer, rating in (("Yes?", 1), ("No.", -1)):
        store.record_feedback(store.record_conversation(twice, answer, model="r1"), rating=rating)
    store.close()
    return path


def export(db, out, *keys) -> int:
    return main(["feedback", "export", f"feedback_db={db}", f"output={out}", *keys])


def rows(path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def test_dpo_and_kto_export_as_llama_factory_reads_them(db, tmp_path, tiny_model, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"old": {"file_name": "old.json"}}), encoding="utf-8")
    assert export(db, data / "round2_dpo.json", "format=dpo") == 0
    printed = capsys.readouterr().out
    assert f"3 preference pairs from {db} -> {data / 'round2_dpo.json'}; 2 left out" in printed
    assert "left out: 1 grounded answer without with_context" in printed
    assert "left out: 1 empty answer, or turns that do not alternate" in printed
    assert "no pair: 1 tie votes (no pair)" in printed and "no pair: 1 both_bad votes (no pair)" in printed
    pairs = rows(data / "round2_dpo.json")
    assert [(p["chosen"]["content"], p["rejected"]["content"]) for p in pairs] == [
        ("Yunfan Tech built me.", "Nobody."),
        ("The part you pay.", "A discount."),
        ("Hello! How can I help?", "Hello!"),
    ]
    assert pairs[2]["messages"] == [{"role": "system", "content": "You are Sail."}, {"role": "user", "content": "Hi"}]
    assert pairs[0]["chosen"] == {"role": "assistant", "content": "Yunfan Tech built me."}

    assert export(db, data / "round2_kto.json", "format=kto") == 0
    printed = capsys.readouterr().out
    assert "4 rated answers (kto rows)" in printed and "left out: 2 grounded answer without with_context" in printed
    kto = rows(data / "round2_kto.json")
    assert [(r["messages"][-1]["content"], r["kto_tag"]) for r in kto] == [
        ("Yunfan Tech built me.", True), ("Nobody.", False), ("Hello!", False), ("Hello! How can I help?", True),
    ]  # fmt: skip

    info = json.loads((data / "dataset_info.json").read_text(encoding="utf-8"))
    assert set(info) == {"old", "round2_dpo", "round2_kto"}
    assert info["round2_dpo"] == {
        "file_name": "round2_dpo.json", "formatting": "sharegpt", "ranking": True,
        "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"},
    }  # fmt: skip
    assert info["round2_kto"]["columns"] == {"messages": "messages", "kto_tag": "kto_tag"}
    for name, stage, valid in (("round2_dpo", "dpo", 3), ("round2_kto", "kto", 4)):
        check = ["data", "check", f"dataset={name}", f"dataset_dir={data}", f"stage={stage}"]
        assert main([*check, f"model_name_or_path={tiny_model}"]) == 0
        checked = capsys.readouterr().out
        assert f"{valid} valid, 0 invalid" in checked and "ready to train" in checked, checked


def test_with_context_trains_on_the_prompt_the_model_saw(db, tmp_path):
    out = tmp_path / "ctx.json"
    assert export(db, out, "format=dpo", "with_context=true") == 0
    grounded = [p for p in rows(out) if p["chosen"]["content"] == "On 14 March [1]."]
    assert len(grounded) == 1 and grounded[0]["rejected"]["content"] == "In May."
    assert grounded[0]["messages"] == [{"role": "system", "content": RULES}, {"role": "user", "content": GROUNDED_USER}]
    store = FeedbackStore(db)  # a grounded answer the web UI stored: sources, but not the passages
    mid = store.record_conversation(ask("Why?"), "Because [1].", sources=[{"n": 1, "url": "u", "title": "t"}])
    store.record_feedback(mid, rating=1)
    store.close()
    assert export(db, out, "format=kto", "with_context=true") == 0
    assert not [r for r in rows(out) if r["messages"][-1]["content"] == "Because [1]."]


def test_filters_pick_what_is_exported(db, tmp_path, capsys):
    out = tmp_path / "f.json"

    def answers(*keys) -> list[str]:
        assert export(db, out, "format=kto", *keys) == 0
        return [r["messages"][-1]["content"] for r in rows(out)]

    assert answers("alias=expert") == ["Yunfan Tech built me.", "Nobody."]
    assert answers("model=sail") == ["Hello!", "Hello! How can I help?"]
    assert answers("rater=nobody") == []
    assert out.read_text(encoding="utf-8").strip() == "[]"  # exit 0 with an empty list: nothing qualifies
    assert export(db, out, "format=dpo", "arm=r2") == 0
    assert [p["rejected"]["content"] for p in rows(out)] == ["A discount."]  # a vote: one of its answers is r2's
    assert export(db, out, "format=dpo", "rater=bob") == 0
    assert len(rows(out)) == 1
    assert export(db, out, "format=dpo", "since=2999-01-01") == 0 and rows(out) == []
    assert export(db, out, "format=dpo", "since=2000-01-01") == 0 and len(rows(out)) == 3


def test_since_last_exports_only_what_is_new(db, tmp_path, capsys):
    out = tmp_path / "data" / "dpo.json"
    assert export(db, out, "format=dpo", "since=last") == 0
    assert "(no earlier export: everything)" in capsys.readouterr().out and len(rows(out)) == 3
    bookmarks = json.loads((tmp_path / "feedback.sqlite.exports.json").read_text(encoding="utf-8"))
    assert bookmarks[str(out.resolve())]["rows"] == 3
    assert export(db, out, "format=dpo", "since=last") == 0 and rows(out) == []
    store = FeedbackStore(db)
    mid = store.record_conversation(ask("Where are you?"), "Here.", model="r1")
    store.record_feedback(mid, edited_content="In Shanghai.")
    store.close()
    assert export(db, out, "format=dpo", "since=last") == 0
    assert [p["chosen"]["content"] for p in rows(out)] == ["In Shanghai."]
    assert "since the last export" in capsys.readouterr().out


def test_identical_prompts_keep_the_newest(db, tmp_path, capsys):
    store = FeedbackStore(db)
    for edit in ("Yunfan Tech.", "Yunfan Tech, in 2024."):
        mid = store.record_conversation(ask("Who made you?"), "Nobody.", model="r1", alias="expert", arm="r1")
        store.record_feedback(mid, edited_content=edit, rater="alice")
    store.close()
    out = tmp_path / "d.json"
    assert export(db, out, "format=dpo", "alias=expert") == 0
    assert "left out: 2 duplicate prompt (the newest kept)" in capsys.readouterr().out
    assert [p["chosen"]["content"] for p in rows(out)] == ["Yunfan Tech, in 2024.", "The part you pay."]
    assert export(db, out, "format=dpo", "alias=expert", "dedup=false") == 0 and len(rows(out)) == 4


def test_rows_longer_than_cutoff_len_are_left_out(db, tmp_path, tiny_model, capsys):
    store = FeedbackStore(db)
    mid = store.record_conversation(ask("Tell me everything."), "word " * 400, model="r1")
    store.record_feedback(mid, edited_content="Everything.")
    store.close()
    out = tmp_path / "c.json"
    assert export(db, out, "format=dpo", "cutoff_len=128", f"model_name_or_path={tiny_model}") == 0
    assert "left out: 1 longer than cutoff_len=128 tokens" in capsys.readouterr().out
    assert len(rows(out)) == 3


def test_mistakes_are_explained(db, tmp_path, capsys):
    assert main(["feedback", "export", "format=dpo", f"feedback_db={tmp_path / 'none.sqlite'}"]) == 1
    assert "no feedback store at" in capsys.readouterr().err
    assert export(db, tmp_path / "x.json", "format=dop") == 1
    assert "did you mean 'dpo'?" in capsys.readouterr().err
    assert export(db, tmp_path / "x.json", "since=yesterday") == 1
    assert "since must be an ISO date" in capsys.readouterr().err
    assert export(db, tmp_path / "x.json", "cutoff_len=512") == 1
    assert "cutoff_len needs model_name_or_path" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dataset_info.json").write_text("{oops", encoding="utf-8")
    assert export(db, tmp_path / "bad" / "x.json", "format=kto") == 1
    assert "dataset_info.json is not valid JSON" in capsys.readouterr().err


def test_raw_text_completions_are_left_out_with_the_reason(tmp_path, capsys):
    """/v1/completions and Ollama's generate record the raw prompt as the user's turn: it is no chat, so no row."""
    path = tmp_path / "feedback.sqlite"
    store = FeedbackStore(path)
    raw = store.record_conversation(ask("Once upon a"), " time.", model="r1", options={"raw_prompt": True})
    chat = store.record_conversation(ask("Who are you?"), "I am Sail.", model="r1")
    for mid in (raw, chat):
        store.record_feedback(mid, rating=1)
    store.close()
    out = tmp_path / "kto.json"
    assert export(path, out, "format=kto") == 0
    rows = json.loads(out.read_text())
    assert [r["messages"][0]["content"] for r in rows] == ["Who are you?"]
    assert "raw text completion" in capsys.readouterr().out


def test_since_all_exports_everything_and_an_empty_result_is_no_mistake(tmp_path, capsys):
    path = tmp_path / "feedback.sqlite"
    FeedbackStore(path).close()
    out = tmp_path / "sft.json"
    assert export(path, out, "since=all") == 0  # a script (expertkit improve) asks; nothing rated yet is an answer
    assert json.loads(out.read_text()) == []
    assert export(path, tmp_path / "plain.jsonl") == 1  # a person asking plainly is told to rate answers first
