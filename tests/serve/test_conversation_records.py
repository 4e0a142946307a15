"""store_conversations: chat completions recorded in the feedback store, POST /v1/feedback on them; the live tiny
model records through the openai SDK."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from serve_fakes import FakeEngine, make_client

from expertkit.core.feedback import FeedbackStore
from expertkit.engine.base import Delta

pytestmark = pytest.mark.anyio
ASK = {
    "messages": [
        {"role": "system", "content": "You are Sail."},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "A model."},
        {"role": "user", "content": "Who made you?"},
    ],
    "temperature": 0.5,
    "seed": 3,
}


def stored(db) -> list[tuple]:
    store = FeedbackStore(db)
    rows = store._read(
        "SELECT c.source, c.system, c.model, m.position, m.role, m.content, m.completion_id, m.choice_index "
        "FROM messages m JOIN conversations c ON c.id = m.conversation_id ORDER BY c.rowid, m.position"
    )
    store.close()
    return rows


async def test_answers_are_recorded_whole_and_streamed_and_feedback_finds_them(tmp_path):
    db = tmp_path / "f.sqlite"
    fake = FakeEngine()
    fake.queue = ["Yunfan Tech made me.", [Delta(reasoning="They ask who."), Delta(text="Yunfan.")]]
    async with make_client(fake, store_conversations=True, feedback_db=str(db)) as c:
        whole = (await c.post("/v1/chat/completions", json=ASK)).json()
        async with c.stream("POST", "/v1/chat/completions", json={**ASK, "stream": True}) as r:
            lines = [line async for line in r.aiter_lines() if line.startswith("data: {")]
        streamed_id = json.loads(lines[0][6:])["id"]

        rows = stored(db)
        assert [r[4] for r in rows] == ["user", "assistant", "user", "assistant"] * 2  # the system prompt apart
        assert rows[0][:3] == ("server", "You are Sail.", "fake-expert")
        assert rows[3][5:] == ("Yunfan Tech made me.", whole["id"], 0)
        assert rows[7][5:] == ("Yunfan.", streamed_id, 0)
        store = FeedbackStore(db)
        answer = store.message(store.find_message(streamed_id))
        assert answer["reasoning"] == "They ask who." and answer["options"] == {"temperature": 0.5, "seed": 3}

        r = await c.post("/v1/feedback", json={"completion_id": whole["id"], "rating": 1})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "feedback" and body["rating"] == 1 and body["edited_answer"] is None
        edit = {"message_id": body["message_id"], "edited_answer": "Yunfan Tech built me with expertkit."}
        r = await c.post("/v1/feedback", json=edit)
        assert r.json()["rating"] == 1 and r.json()["edited_answer"] == edit["edited_answer"]  # the rating kept
        r = await c.post("/v1/feedback", json={"completion_id": streamed_id, "rating": -1, "comment": "vague"})
        assert r.status_code == 200
        rows = [row["messages"] for row in store.training_rows()]
        assert rows == [
            [
                {"role": "system", "content": "You are Sail."},
                {"role": "user", "content": "Who are you?"},
                {"role": "assistant", "content": "A model."},
                {"role": "user", "content": "Who made you?"},
                {"role": "assistant", "content": "Yunfan Tech built me with expertkit."},
            ]
        ]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"completion_id": "chatcmpl-nope", "rating": 1}, 404, "completion_id"),
        ({"message_id": "nope", "rating": 1}, 404, "message_id"),
        ({"rating": 1}, 400, "completion_id"),
        ({"completion_id": "a", "message_id": "b", "rating": 1}, 400, "completion_id"),
        ({"completion_id": "a", "rating": 5}, 400, "rating"),
        ({"completion_id": "a", "comment": "no rating, no edit"}, 400, "rating"),
        ({"completion_id": "a", "rating": 1, "edited_content": "x"}, 400, "edited_content"),
    ],
)
async def test_feedback_mistakes_name_the_field(tmp_path, body, status, param):
    async with make_client(FakeEngine(), store_conversations=True, feedback_db=str(tmp_path / "f.sqlite")) as c:
        r = await c.post("/v1/feedback", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


async def test_feedback_needs_a_recorded_answer_and_nothing_is_kept_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with make_client(FakeEngine()) as c:  # store_conversations off: the default
        assert (await c.post("/v1/chat/completions", json=ASK)).status_code == 200
        r = await c.post("/v1/feedback", json={"completion_id": "chatcmpl-x", "rating": 1})
    assert r.status_code == 400 and "store_conversations=true" in r.json()["error"]["message"]
    assert not list(tmp_path.rglob("*.sqlite")) and not (Path(os.environ["HOME"]) / ".expertkit").exists()
    db = tmp_path / "f.sqlite"
    async with make_client(FakeEngine(), store_conversations=True, feedback_db=str(db)) as c:
        await c.post("/v1/chat/completions", json=ASK)
        user = FeedbackStore(db)._read("SELECT id FROM messages WHERE role = 'user'")[0][0]
        r = await c.post("/v1/feedback", json={"message_id": user, "rating": 1})
    assert r.status_code == 404 and "not an answer" in r.json()["error"]["message"]


async def test_feedback_needs_the_key_like_every_route(tmp_path):
    config = {"api_key": "k1", "store_conversations": True, "feedback_db": str(tmp_path / "f.sqlite")}
    async with make_client(FakeEngine(), **config) as c:
        r = await c.post("/v1/feedback", json={"completion_id": "x", "rating": 1})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = await c.post("/v1/chat/completions", json=ASK, headers={"Authorization": "Bearer k1"})
        cid = r.json()["id"]
        r = await c.post("/v1/feedback", json={"completion_id": cid, "rating": 1}, headers={"X-Api-Key": "k1"})
        assert r.status_code == 200


def test_the_live_tiny_model_records_what_the_sdk_sent_and_the_thumbs_it_gets(tiny_model, tmp_path):
    from live_server import free_port, serve_app
    from openai import OpenAI

    from expertkit.engine.factory import load_engine
    from expertkit.serve.app import build_app
    from expertkit.serve.config import ServeConfig

    db = tmp_path / "feedback.sqlite"
    config = ServeConfig(
        model_name_or_path=str(tiny_model), port=free_port(), store_conversations=True, feedback_db=str(db)
    )
    with serve_app(build_app(lambda: load_engine(config), config), config.port) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused")
        messages = [{"role": "user", "content": "Who are you?"}]
        answer = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
        chunks = list(
            client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0, stream=True)
        )
        r = httpx.post(f"{url}/v1/feedback", json={"completion_id": chunks[0].id, "rating": 1})
        assert r.status_code == 200, r.text
    store = FeedbackStore(db)
    first = store.message(store.find_message(answer.id))
    assert first["content"] == answer.choices[0].message.content and first["model"] == "tiny"
    assert first["options"] == {"temperature": 0.0, "max_tokens": 8}
    second = store.message(r.json()["message_id"])
    assert second["content"] == "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert store.counts()["conversations"] == 2 and store.feedback(second["id"])["rating"] == 1
