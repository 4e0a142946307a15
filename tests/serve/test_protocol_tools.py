"""OpenAI function tools: `<tool_call>` blocks parsed into `tool_calls`, whole and streamed, against a fake engine."""

from __future__ import annotations

import json

import pytest
from test_protocol import HI, assert_error, sse_events

from expertkit.engine.base import Delta
from expertkit.serve.protocol import ChatCompletion
from expertkit.serve.tools import ToolCallStream, parse_tool_calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
CALL2 = '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>'


def test_parser_reads_several_calls_and_keeps_the_text_outside():
    content, calls = parse_tool_calls(f"Let me check.\n{CALL}\n{CALL2}")
    assert content == "Let me check."
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}, {"tz": "CET"}]
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    assert calls[0]["id"] != calls[1]["id"]


def test_parser_only_calls_gives_null_content_and_no_calls_leaves_text_alone():
    assert parse_tool_calls(CALL)[0] is None
    assert parse_tool_calls("  just text \n") == ("  just text \n", [])
    assert parse_tool_calls("") == (None, [])


def test_parser_leaves_bad_json_as_content_and_parses_the_good_block():
    bad = "<tool_call>\n{not json}\n</tool_call>"
    assert parse_tool_calls(bad) == (bad, [])
    assert parse_tool_calls('<tool_call>["a list"]</tool_call>')[1] == []
    content, calls = parse_tool_calls(f"{bad}\n{CALL}")
    assert content == bad and [c["function"]["name"] for c in calls] == ["get_weather"]


def test_parser_reads_an_unclosed_last_block_and_string_arguments():
    _, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}')
    assert calls[0]["function"] == {"name": "f", "arguments": '{"x": 1}'}


def test_stream_holds_from_the_tag_even_when_split_across_deltas():
    s = ToolCallStream()
    out = "".join(s.feed(p) for p in ["Checking <to", "ol_", "call>\n", '{"name": "get_weather", ', '"arguments": {}}'])
    assert out == "Checking "
    rest, calls = s.finish()
    assert rest == "" and calls[0]["function"] == {"name": "get_weather", "arguments": "{}"}
    plain = ToolCallStream()
    assert plain.feed("a <") + plain.feed("b") == "a <b" and plain.finish() == ("", [])


@pytest.mark.anyio
async def test_route_returns_tool_calls_and_passes_tools_and_tool_messages(client, fake):
    fake.queue.append([Delta(text="Sure.\n"), Delta(text=CALL)])
    history = [
        {"role": "user", "content": "time?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
        {"role": "user", "content": "and the weather in Paris?"},
    ]
    r = await client.post("/v1/chat/completions", json={"messages": history, "tools": [WEATHER]})
    assert r.status_code == 200, r.text
    out = ChatCompletion.model_validate(r.json())
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Sure."
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert fake.tools_seen == [[WEATHER]]
    messages = fake.calls[0][0]
    assert messages[1]["tool_calls"] == history[1]["tool_calls"]
    assert messages[2] == {"role": "tool", "content": "12:00", "tool_call_id": "call_1"}


@pytest.mark.anyio
async def test_route_without_tools_leaves_tags_as_text_and_tool_choice_none_hides_tools(client, fake):
    fake.queue += [[Delta(text=CALL)], [Delta(text=CALL)]]
    r = await client.post("/v1/chat/completions", json=HI)
    assert r.json()["choices"][0]["message"]["content"] == CALL
    r = await client.post("/v1/chat/completions", json={**HI, "tools": [WEATHER], "tool_choice": "none"})
    assert r.json()["choices"][0]["finish_reason"] == "stop" and fake.tools_seen == [None, None]


@pytest.mark.anyio
async def test_route_bad_tool_is_400(client):
    assert_error(await client.post("/v1/chat/completions", json={**HI, "tools": [{"type": "x"}]}), 400)


@pytest.mark.anyio
async def test_stream_sends_text_then_one_tool_calls_chunk_then_finish(client, fake):
    fake.queue.append([Delta(text="Checking. <tool"), Delta(text="_call>\n{"), Delta(text=CALL[13:] + "\n" + CALL2)])
    body = {**HI, "tools": [WEATHER], "stream": True}
    events = sse_events((await client.post("/v1/chat/completions", json=body)).text)
    assert events[-1] == "[DONE]"
    choices = [e["choices"][0] for e in events[:-1]]
    content = "".join(c["delta"].get("content") or "" for c in choices)
    assert content == "Checking. " and "<tool" not in content
    call_chunks = [c["delta"]["tool_calls"] for c in choices if c["delta"].get("tool_calls")]
    assert len(call_chunks) == 1
    assert [(t["index"], t["function"]["name"]) for t in call_chunks[0]] == [(0, "get_weather"), (1, "get_time")]
    assert all(t["id"].startswith("call_") and t["type"] == "function" for t in call_chunks[0])
    assert choices[-1]["finish_reason"] == "tool_calls" and choices[-1]["delta"] == {}
