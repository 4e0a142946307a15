"""Chat `logprobs` / `top_logprobs`: OpenAI's `choices[i].logprobs.content`, whole and per stream chunk."""

from __future__ import annotations

import pytest
from test_protocol import HI, assert_error, sse_events

from expertkit.engine.base import Delta, TokenLogprob, Usage
from expertkit.serve.protocol import ChatCompletion

pytestmark = pytest.mark.anyio


def tok(text: str, logprob: float, top: int = 1) -> TokenLogprob:
    alts = [TokenLogprob(text, logprob, list(text.encode()))] + [TokenLogprob("x", logprob - 1, [120])] * (top - 1)
    return TokenLogprob(text, logprob, list(text.encode()), alts[:top])


def entry(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def answer() -> list[Delta]:
    return [
        Delta(text="Hé", logprobs=[tok("H", -0.5, 2), tok("é", -0.25, 2)]),
        Delta(text="!", finish_reason="stop", usage=Usage(3, 3), logprobs=[tok("!", 0.0, 2)]),
    ]


async def test_logprobs_in_the_whole_answer(client, fake):
    fake.queue.append(answer())
    r = await client.post("/v1/chat/completions", json={**HI, "logprobs": True, "top_logprobs": 2})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert [c["token"] for c in content] == ["H", "é", "!"] and content[1]["bytes"] == [195, 169]
    assert content[0] == {**entry("H", -0.5), "top_logprobs": [entry("H", -0.5), entry("x", -1.5)]}
    ChatCompletion.model_validate(r.json())
    _, params, _ = fake.calls[0]
    assert params.logprobs and params.top_logprobs == 2


async def test_logprobs_per_stream_chunk(client, fake):
    fake.queue.append(answer())
    r = await client.post("/v1/chat/completions", json={**HI, "stream": True, "logprobs": True})
    chunks = [e for e in sse_events(r.text)[:-1] if e["choices"]]
    pieces = [(c["choices"][0]["delta"].get("content"), c["choices"][0]["logprobs"]) for c in chunks]
    assert pieces[0] == ("", None)  # the role chunk
    assert [p[1]["content"][0]["token"] for p in pieces[1:3]] == ["H", "!"]
    assert [len(p[1]["content"]) for p in pieces[1:3]] == [2, 1] and pieces[1][0] == "Hé"
    assert pieces[-1] == (None, None) and chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_no_logprobs_unless_asked(client, fake):
    fake.queue.append([Delta(text="hi", finish_reason="stop")])
    r = await client.post("/v1/chat/completions", json={**HI, "logprobs": False, "top_logprobs": 5})
    assert r.json()["choices"][0]["logprobs"] is None
    _, params, _ = fake.calls[0]
    assert not params.logprobs and params.top_logprobs == 0


@pytest.mark.parametrize("top", [-1, 21])
async def test_top_logprobs_outside_0_to_20_is_400(client, fake, top):
    r = await client.post("/v1/chat/completions", json={**HI, "logprobs": True, "top_logprobs": top})
    assert_error(r, 400, param="top_logprobs")
    assert fake.calls == []
