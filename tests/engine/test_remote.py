"""The remote engine sends what the request asked for, and refuses bad values before calling out."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from expertkit.engine.base import InvalidParamError, SamplingParams, complete
from expertkit.engine.config import EngineConfig
from expertkit.engine.remote import RemoteEngine


def remote(bodies: list[dict]) -> RemoteEngine:
    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        chunks = [
            {"choices": [{"delta": {"content": "<think>hm</think>Hi"}, "finish_reason": None}]},
            {"choices": [{"delta": {}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
        ]
        text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    engine = RemoteEngine(EngineConfig(engine="openai", base_url="http://remote/v1", served_model_name="m"))
    engine.client = httpx.AsyncClient(base_url="http://remote/v1", transport=httpx.MockTransport(answer))
    return engine


def test_remote_sends_the_sampling_fields_and_splits_reasoning():
    bodies: list[dict] = []
    engine = remote(bodies)
    plain = asyncio.run(complete(engine, [{"role": "user", "content": "hi"}], SamplingParams(temperature=0)))
    tuned = SamplingParams(temperature=0.5, top_k=20, repetition_penalty=1.1, seed=7, stop=["x"])
    asyncio.run(complete(engine, [{"role": "user", "content": "hi"}], tuned))
    assert (plain.text, plain.reasoning, plain.usage.total_tokens) == ("Hi", "hm", 5)
    assert "top_k" not in bodies[0] and "repetition_penalty" not in bodies[0]  # not OpenAI fields unless asked
    assert {k: bodies[1][k] for k in ("top_k", "repetition_penalty", "seed", "stop")} == {
        "top_k": 20,
        "repetition_penalty": 1.1,
        "seed": 7,
        "stop": ["x"],
    }
    assert engine.context_length() is None and engine.count_prompt_tokens([]) is None


def test_remote_refuses_bad_values_without_calling_out():
    bodies: list[dict] = []
    with pytest.raises(InvalidParamError, match="top_p"):
        asyncio.run(complete(remote(bodies), [{"role": "user", "content": "hi"}], SamplingParams(top_p=2.0)))
    assert bodies == []


def test_remote_forwards_tools_only_when_given():
    bodies: list[dict] = []
    engine = remote(bodies)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]

    async def run(**kw):
        async for _ in engine.stream([{"role": "user", "content": "hi"}], SamplingParams(), **kw):
            pass

    asyncio.run(run(tools=tools))
    asyncio.run(run())
    assert bodies[0]["tools"] == tools and "tools" not in bodies[1]
