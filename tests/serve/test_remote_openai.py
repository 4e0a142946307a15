"""engine=openai against a scripted OpenAI-compatible server on 127.0.0.1: what is forwarded, the remote's
structured tool calls and logprobs coming back, through the engine, through our server with the official openai
SDK (streaming and not), and `expertkit chat`'s sampling keys."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from fake_openai import CALLS, MODEL, build_fake_openai, free_port, running

from expertkit.engine.base import SamplingParams, complete
from expertkit.engine.config import EngineConfig
from expertkit.engine.remote import RemoteEngine

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
ASK = [{"role": "user", "content": "Weather in Oslo?"}]


@pytest.fixture(scope="module")
def remote():
    """(base URL of the fake remote's /v1, the bodies it received)."""
    bodies: list[dict] = []
    with running(build_fake_openai(bodies), free_port()) as url:
        yield url + "/v1", bodies


@pytest.fixture(scope="module")
def proxy(remote):
    """Our server, engine=openai, in front of the fake remote: its /v1 URL."""
    from expertkit.engine.factory import load_engine
    from expertkit.serve.app import build_app
    from expertkit.serve.config import ServeConfig

    config = ServeConfig(engine="openai", base_url=remote[0], port=free_port())
    with running(build_app(lambda: load_engine(config), config), config.port) as url:
        yield url + "/v1"


def engine_for(url: str) -> RemoteEngine:
    return RemoteEngine(EngineConfig(engine="openai", base_url=url, served_model_name=MODEL))


def test_engine_forwards_the_new_fields_and_joins_streamed_tool_calls(remote):
    url, bodies = remote
    params = SamplingParams(seed=7, response_format={"type": "json_object"}, logprobs=True, top_logprobs=2)

    async def both():
        engine = engine_for(url)
        called = await complete_with_tools(engine, params)
        text = await complete(engine, ASK, params)
        await engine.close()
        return called, text

    called, text = asyncio.run(both())
    assert called.tool_calls == CALLS and called.text == "" and called.finish_reason == "stop"
    body = bodies[-2]
    assert body["tools"] == [TOOL] and body["seed"] == 7 and body["response_format"] == {"type": "json_object"}
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)
    assert text.text == "Hello there" and text.tool_calls is None
    assert [(t.token, t.logprob) for t in text.logprobs] == [("Hello", -0.25), (" there", -1.5)]


async def complete_with_tools(engine, params):
    out = None
    async for d in engine.stream(ASK, params, tools=[TOOL]):
        if out is None:
            out = d
        else:
            out.extend(d)
    return out


def test_sdk_gets_the_remotes_tool_calls_through_our_server(proxy):
    from openai import OpenAI

    client = OpenAI(base_url=proxy, api_key="none", max_retries=0)
    out = client.chat.completions.create(model=MODEL, messages=ASK, tools=[TOOL])
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [c.model_dump() for c in choice.message.tool_calls] == CALLS

    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(model=MODEL, messages=ASK, tools=[TOOL], stream=True):
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for t in c.delta.tool_calls or []:
                call = calls.setdefault(t.index, {"id": t.id, "name": t.function.name, "arguments": ""})
                call["arguments"] += t.function.arguments or ""
    assert finish == "tool_calls"
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("call_oslo", "get_weather", {"city": "Oslo"}),
        ("call_time", "get_time", {"tz": "CET"}),
    ]


def test_sdk_gets_the_remotes_logprobs_and_response_format_is_forwarded(proxy, remote):
    from openai import OpenAI

    client = OpenAI(base_url=proxy, api_key="none", max_retries=0)
    out = client.chat.completions.create(
        model=MODEL, messages=ASK, logprobs=True, top_logprobs=1, response_format={"type": "json_object"}, seed=3
    )
    assert out.choices[0].message.content == "Hello there"
    assert [t.logprob for t in out.choices[0].logprobs.content] == [-0.25, -1.5]
    body = remote[1][-1]
    assert body["response_format"] == {"type": "json_object"} and body["seed"] == 3 and body["logprobs"] is True


def test_chat_command_passes_its_sampling_keys(remote, monkeypatch):
    import expertkit.cli.chat as chat
    from expertkit.cli.main import main

    url, bodies = remote
    run_chat = chat.run_chat  # its stdin default was bound at import: hand it one line and /exit
    monkeypatch.setattr(
        chat, "run_chat", lambda e, p: run_chat(e, p, stdin=io.StringIO("hi\n/exit\n"), out=io.StringIO())
    )
    args = ["chat", "engine=openai", f"base_url={url}", f"served_model_name={MODEL}"]
    sampling = ["seed=5", "repetition_penalty=1.2", "temperature=0.3", "response_format=json_object"]
    assert main(args + sampling) == 0
    body = bodies[-1]
    assert (body["seed"], body["repetition_penalty"], body["temperature"]) == (5, 1.2, 0.3)
    assert body["response_format"] == {"type": "json_object"}
    assert main(args + ["repetition_penalty=0"]) == 1  # out of range: an error for people, not a traceback
