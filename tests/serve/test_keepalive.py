"""SSE keep-alive: a streamed answer that waits for its first token (queue, prefill) sends `: keep-alive` comments,
which the openai SDK skips; JSON and Ollama's NDJSON never get them."""

from __future__ import annotations

import httpx
import pytest
from serve_fakes import BASE_URL, FakeEngine, make_client

from expertkit.serve.app import build_app
from expertkit.serve.config import ServeConfig

pytestmark = pytest.mark.anyio
HI = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


def slow_engine() -> FakeEngine:
    fake = FakeEngine(delay=0.25)  # every delta, the first included, comes 0.25 s late: a long prefill
    fake.queue.append("Hello there")
    return fake


async def test_chat_stream_sends_keepalive_comments_before_the_first_token():
    async with make_client(slow_engine(), keepalive_s=0.05) as c:
        r = await c.post("/v1/chat/completions", json=HI)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    body = r.text
    first_token = body.index('"content": "Hello ')
    assert ": keep-alive\n\n" in body[:first_token]
    assert body.rstrip().endswith("data: [DONE]")
    events = [e for e in body.split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") or e == ": keep-alive" for e in events), events


async def test_completion_stream_keepalive_comes_before_any_data():
    async with make_client(slow_engine(), keepalive_s=0.05) as c:
        r = await c.post("/v1/completions", json={"prompt": "hi", "stream": True})
    assert r.text.startswith(": keep-alive\n\n") and r.text.rstrip().endswith("data: [DONE]")


async def test_no_keepalive_when_answers_come_fast_or_it_is_off_or_not_sse():
    async with make_client(FakeEngine(), keepalive_s=0.05) as c:
        assert "keep-alive" not in (await c.post("/v1/chat/completions", json=HI)).text
    async with make_client(slow_engine(), keepalive_s=0) as c:
        assert "keep-alive" not in (await c.post("/v1/chat/completions", json=HI)).text
    async with make_client(slow_engine(), keepalive_s=0.05) as c:
        r = await c.post("/api/chat", json={"model": "fake-expert", **HI})
    assert r.status_code == 200 and "keep-alive" not in r.text
    assert r.text.strip().splitlines()[-1].startswith("{")


async def test_openai_sdk_parses_a_stream_with_keepalive_comments():
    from openai import AsyncOpenAI

    app = build_app(slow_engine(), ServeConfig(model_name_or_path="fake", keepalive_s=0.05))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as http:
        client = AsyncOpenAI(base_url=BASE_URL + "/v1", api_key="unused", http_client=http, max_retries=0)
        stream = await client.chat.completions.create(model="fake-expert", messages=HI["messages"], stream=True)
        chunks = [chunk async for chunk in stream]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Hello there"
    assert chunks[-1].choices[0].finish_reason == "stop"
