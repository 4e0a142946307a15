"""Against a fake engine: response_format and Ollama's format/options reach the engine, legacy completions carry
`logprobs`, and calls the engine returns as such become `tool_calls` (whole and streamed)."""

from __future__ import annotations

import json

import pytest
from test_protocol import HI, assert_error, sse_events

from expertkit.engine.base import Delta, TokenLogprob, Usage
from expertkit.serve.protocol import ChatCompletion

pytestmark = pytest.mark.anyio
CALL = {"id": "call_remote1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def tok(text: str, logprob: float, alts: dict[str, float]) -> TokenLogprob:
    top = [TokenLogprob(t, lp, list(t.encode())) for t, lp in alts.items()]
    return TokenLogprob(text, logprob, list(text.encode()), top)


@pytest.mark.parametrize(
    "fmt",
    [{"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}],
)
async def test_response_format_reaches_the_engine(client, fake, fmt):
    r = await client.post("/v1/chat/completions", json={**HI, "response_format": fmt})
    assert r.status_code == 200, r.text
    r = await client.post("/v1/completions", json={"prompt": "hi", "response_format": fmt})
    assert r.status_code == 200, r.text
    assert [p.response_format for _, p, _ in fake.calls] == [fmt, fmt]


async def test_bad_response_format_is_400(client, fake):
    assert_error(await client.post("/v1/chat/completions", json={**HI, "response_format": {"type": "yaml"}}), 400)
    assert_error(await client.post("/v1/chat/completions", json={**HI, "response_format": "json"}), 400)
    assert fake.calls == []


async def test_ollama_format_seed_and_repeat_penalty_reach_the_engine(client, fake):
    options = {"seed": 42, "repeat_penalty": 1.3, "temperature": 0.5}
    chat = {"model": "fake-expert", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    assert (await client.post("/api/chat", json={**chat, "format": "json", "options": options})).status_code == 200
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    generate = {"model": "fake-expert", "prompt": "hi", "stream": False, "format": schema}
    assert (await client.post("/api/generate", json=generate)).status_code == 200
    assert (await client.post("/api/generate", json={**generate, "format": ""})).status_code == 200
    r = await client.post("/api/generate", json={**generate, "format": "yaml"})
    assert r.status_code == 400 and "format" in r.json()["error"]
    (_, chat_params, _), (_, gen_params, _), (_, plain, _) = fake.calls
    assert (chat_params.seed, chat_params.repetition_penalty) == (42, 1.3)
    assert chat_params.response_format == {"type": "json_object"}
    assert gen_params.response_format == {"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}
    assert plain.response_format is None


def completion_answer() -> list[Delta]:
    return [
        Delta(text="Hé", logprobs=[tok("H", -0.5, {"H": -0.5, "A": -1.5}), tok("é", -2.0, {"e": -0.3, "a": -1.0})]),
        Delta(text="!", finish_reason="stop", usage=Usage(3, 3), logprobs=[tok("!", -0.1, {"!": -0.1, "?": -2.5})]),
    ]


async def test_completions_logprobs_in_openais_legacy_shape(client, fake):
    fake.queue.append(completion_answer())
    r = await client.post("/v1/completions", json={"prompt": "Say hi", "logprobs": 2, "echo": True})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["text"] == "Say hiHé!"
    assert choice["logprobs"] == {
        "tokens": ["H", "é", "!"],
        "token_logprobs": [-0.5, -2.0, -0.1],
        "top_logprobs": [{"H": -0.5, "A": -1.5}, {"e": -0.3, "a": -1.0, "é": -2.0}, {"!": -0.1, "?": -2.5}],
        "text_offset": [6, 7, 8],  # after the echoed prompt; the chosen token joins a top list it is not in
    }
    _, params, _ = fake.calls[0]
    assert params.logprobs and params.top_logprobs == 2


async def test_completions_logprobs_per_stream_chunk_and_none_unless_asked(client, fake):
    fake.queue += [completion_answer(), "plain"]
    r = await client.post("/v1/completions", json={"prompt": "x", "logprobs": 0, "stream": True})
    chunks = [e["choices"][0] for e in sse_events(r.text)[:-1]]
    assert [c["text"] for c in chunks] == ["Hé", "!"]
    assert [c["logprobs"]["tokens"] for c in chunks] == [["H", "é"], ["!"]]
    assert [c["logprobs"]["text_offset"] for c in chunks] == [[0, 1], [2]]
    assert chunks[1]["logprobs"]["top_logprobs"] == [{"!": -0.1, "?": -2.5}]
    r = await client.post("/v1/completions", json={"prompt": "x"})
    assert r.json()["choices"][0]["logprobs"] is None
    assert not fake.calls[1][1].logprobs


@pytest.mark.parametrize("value", [-1, 21, "many"])
async def test_completions_logprobs_out_of_range_is_400(client, fake, value):
    assert_error(await client.post("/v1/completions", json={"prompt": "x", "logprobs": value}), 400, param="logprobs")


async def test_engine_tool_calls_are_returned_as_they_are(client, fake):
    fake.queue.append([Delta(text="<tool_call>left as text"), Delta(finish_reason="stop", tool_calls=[CALL])])
    r = await client.post("/v1/chat/completions", json={**HI, "tools": [TOOL]})
    out = ChatCompletion.model_validate(r.json())
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "<tool_call>left as text"
    assert [c.model_dump() for c in choice.message.tool_calls] == [CALL]


async def test_engine_tool_calls_streamed_as_one_chunk_before_the_finish(client, fake):
    fake.queue.append([Delta(text="Checking."), Delta(finish_reason="stop", tool_calls=[CALL, {**CALL, "id": "c2"}])])
    r = await client.post("/v1/chat/completions", json={**HI, "tools": [TOOL], "stream": True})
    choices = [e["choices"][0] for e in sse_events(r.text)[:-1]]
    assert "".join(c["delta"].get("content") or "" for c in choices) == "Checking."
    (calls,) = [c["delta"]["tool_calls"] for c in choices if c["delta"].get("tool_calls")]
    assert calls == [{"index": 0, **CALL}, {"index": 1, **CALL, "id": "c2"}]
    assert choices[-1]["finish_reason"] == "tool_calls"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
