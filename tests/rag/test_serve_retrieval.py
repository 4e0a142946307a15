"""The server's opt-in retrieval: `"retrieval": true` grounds a chat answer in the knowledge base (and the web when
the server allows it) and returns the numbered sources, through the official openai SDK."""

from __future__ import annotations

import json

import httpx
import pytest
from openai import OpenAI
from rag_reader import reader_server
from rag_site import FACT

from expertkit.cli.main import main

QUESTION = "When was the Zephyr-9 relay decommissioned?"


@pytest.fixture
def kb_dir(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "relay.md").write_text(f"# Zephyr-9 relay\n\nThe relay links the northern substations.\n\n{FACT}\n")
    (docs / "claims.txt").write_text("A claim above 10,000 EUR needs a second reviewer before payment.\n")
    assert main(["kb", "add", str(docs), f"kb_dir={tmp_path / 'kb'}"]) == 0
    return tmp_path / "kb"


def test_grounded_chat_returns_the_sources_whole_and_streamed(kb_dir):
    with reader_server(kb_dir=str(kb_dir)) as (engine, url):
        client = OpenAI(base_url=url, api_key="unused")
        messages = [{"role": "user", "content": QUESTION}]
        plain = client.chat.completions.create(model="reader", messages=messages)
        assert "sources" not in (plain.model_extra or {}) and "I don't know" in plain.choices[0].message.content
        grounded = client.chat.completions.create(model="reader", messages=messages, extra_body={"retrieval": True})
        assert "14 March 2026" in grounded.choices[0].message.content
        sources = grounded.model_extra["sources"]
        assert sources[0]["n"] == 1 and sources[0]["url"].endswith("relay.md") and sources[0]["title"]
        assert '<source id="1"' in engine.prompts[-1]
        stream = client.chat.completions.create(
            model="reader", messages=messages, stream=True, extra_body={"retrieval": {"kb": True, "top_k": 1}}
        )
        chunks = list(stream)
        assert [s["url"] for s in chunks[0].model_extra["sources"]] == [sources[0]["url"]]  # top_k=1: one source
        assert "14 March 2026" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_retrieval_errors_are_400_naming_the_param(kb_dir, tmp_path):
    with reader_server() as (_, url):  # no kb_dir
        r = httpx.post(f"{url}/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                         "retrieval": True})  # fmt: skip
        assert r.status_code == 400 and r.json()["error"]["param"] == "retrieval"
        assert "kb_dir" in r.json()["error"]["message"]
    with reader_server(kb_dir=str(kb_dir)) as (_, url):
        r = httpx.post(f"{url}/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                         "retrieval": {"web": True}})  # fmt: skip
        assert r.status_code == 400 and r.json()["error"]["param"] == "retrieval.web"
        r = httpx.post(f"{url}/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                         "retrieval": {"top_k": 0}})  # fmt: skip
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("retrieval"), r.json()


def test_grounded_chat_with_web_search(tmp_path, site):
    keys = {
        "kb_dir": str(tmp_path / "kb"), "web": True, "search_provider": "searxng", "searxng_url": site.base_url,
        "allow_networks": ["127.0.0.1/32"],
    }  # fmt: skip
    with reader_server(**keys) as (_, url):
        client = OpenAI(base_url=url, api_key="unused")
        answer = client.chat.completions.create(
            model="reader", messages=[{"role": "user", "content": QUESTION}], extra_body={"retrieval": {"web": True}}
        )
    assert "14 March 2026" in answer.choices[0].message.content
    urls = [s["url"] for s in answer.model_extra["sources"]]
    assert site.url("/articles/zephyr-relay.html") == urls[0]
    assert site.requested("/private/salaries.html") == 0


def test_a_recorded_grounded_answer_keeps_the_question_as_asked_and_its_sources(kb_dir, tmp_path):
    from expertkit.core.feedback import FeedbackStore

    db = tmp_path / "feedback.sqlite"
    with reader_server(kb_dir=str(kb_dir), store_conversations=True, feedback_db=str(db)) as (_, url):
        client = OpenAI(base_url=url, api_key="unused")
        answer = client.chat.completions.create(
            model="reader", messages=[{"role": "user", "content": QUESTION}], extra_body={"retrieval": {"top_k": 2}}
        )
    store = FeedbackStore(db)
    stored = store.message(store.find_message(answer.id))
    assert stored["sources"] == answer.model_extra["sources"]
    assert stored["options"] == {"retrieval": {"kb": True, "web": False, "top_k": 2}}
    question = store._read("SELECT content FROM messages WHERE role = 'user'")
    assert question == [(QUESTION,)]  # not the grounded prompt the model saw, which is kept beside the answer:
    grounded = stored["grounded"]
    assert grounded["user"].startswith("<sources>") and grounded["user"].endswith(f"Question: {QUESTION}")
    assert "14 March 2026" in grounded["user"] and "numbered sources" in grounded["system"]
    store.record_feedback(stored["id"], edited_content="It was decommissioned on 14 March 2026 [1].")
    store.close()
    out = tmp_path / "data" / "grounded_kto.json"
    args = ["feedback", "export", "format=kto", f"feedback_db={db}", f"output={out}"]
    assert main(args) == 0 and json.loads(out.read_text()) == []  # without with_context: left out
    assert main([*args, "with_context=true"]) == 0
    rows = json.loads(out.read_text())
    assert [r["kto_tag"] for r in rows] == [True, False]
    assert rows[0]["messages"][:2] == [
        {"role": "system", "content": grounded["system"]}, {"role": "user", "content": grounded["user"]}
    ]
