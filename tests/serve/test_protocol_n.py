"""Chat's `n`: several choices of one prompt, generated at once, whole or interleaved in one stream."""

from __future__ import annotations

import asyncio

import pytest
from serve_fakes import FakeEngine, make_client
from test_protocol import HI, assert_error, sse_events

from expertkit.engine.base import Delta, Usage
from expertkit.serve.protocol import ChatCompletion

pytestmark = pytest.mark.anyio


async def test_n_returns_n_choices_with_summed_completion_usage(client, fake):
    fake.queue += [
        [Delta(text="one", finish_reason="stop", usage=Usage(5, 1))],
        [Delta(text="two words", finish_reason="length", usage=Usage(5, 2))],
        [Delta(text="three", finish_reason="stop", usage=Usage(5, 3))],
    ]
    r = await client.post("/v1/chat/completions", json={**HI, "n": 3, "seed": 10})
    assert r.status_code == 200, r.text
    out = ChatCompletion.model_validate(r.json())
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert [c.message.content for c in out.choices] == ["one", "two words", "three"]
    assert [c.finish_reason for c in out.choices] == ["stop", "length", "stop"]
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (5, 6, 11)
    assert len(fake.calls) == 3 and [p.seed for _, p, _ in fake.calls] == [10, 11, 12]


async def test_n_generations_run_concurrently():
    fake = FakeEngine(delay=0.01)
    fake.queue += ["a b c", "d e f"]
    async with make_client(fake) as client:
        fake.gate = asyncio.Event()

        async def open_gate():
            while len(fake.calls) < 2:  # both streams started before either may go on
                await asyncio.sleep(0.001)
            fake.gate.set()

        r, _ = await asyncio.gather(client.post("/v1/chat/completions", json={**HI, "n": 2}), open_gate())
    assert [c["message"]["content"] for c in r.json()["choices"]] == ["a b c", "d e f"]


async def test_n_stream_interleaves_choices_each_with_its_finish_and_one_usage(client, fake):
    fake.queue += [
        [Delta(text="Hel"), Delta(text="lo", finish_reason="stop", usage=Usage(4, 2))],
        [Delta(text="Bye", finish_reason="length", usage=Usage(4, 1))],
    ]
    body = {**HI, "n": 2, "stream": True, "stream_options": {"include_usage": True}}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    texts, finishes = {0: "", 1: ""}, {0: [], 1: []}
    for c in chunks[:-1]:
        (ch,) = c["choices"]
        texts[ch["index"]] += ch["delta"].get("content") or ""
        if ch["finish_reason"]:
            finishes[ch["index"]].append(ch["finish_reason"])
    assert texts == {0: "Hello", 1: "Bye"} and finishes == {0: ["stop"], 1: ["length"]}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert chunks[-1]["usage"]["prompt_tokens"] == 4 and fake.closed_streams == 2


async def test_n_over_eight_is_400_in_chat_and_completions(client):
    assert_error(await client.post("/v1/chat/completions", json={**HI, "n": 9}), 400, param="n")
    assert_error(await client.post("/v1/completions", json={"prompt": "x", "n": 9}), 400, param="n")


async def test_n_stream_engine_failure_stops_every_choice():
    class Failing(FakeEngine):
        async def stream(self, messages, params, model=None):
            if params.seed == 2:
                self.calls.append((messages, params, model))
                raise RuntimeError("boom")
                yield  # an async generator
            async for d in super().stream(messages, params, model):
                yield d

    fake = Failing(delay=0.05)
    async with make_client(fake) as client:
        body = {**HI, "n": 2, "seed": 1, "stream": True}
        r = await client.post("/v1/chat/completions", json=body)
    events = sse_events(r.text)
    assert events[-1] == "[DONE]" and "error" in events[-2]
    assert fake.closed_streams == 1
