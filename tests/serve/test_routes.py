"""/v1/completions, Ollama's /api, GET /generate and /metrics against a fake engine: shapes, parameters, errors."""

from __future__ import annotations

import asyncio
import json

import pytest
from serve_fakes import FakeEngine, make_client
from test_protocol import assert_error, sse_events

from expertkit.engine.base import Delta, Usage

pytestmark = pytest.mark.anyio


async def test_completion_uses_the_raw_prompt_and_has_openai_shape(client, fake):
    fake.queue.append([Delta(text=" world"), Delta(text="!", finish_reason="length", usage=Usage(3, 2))])
    body = {"prompt": "Hello", "temperature": 0, "max_tokens": 2, "stop": ["\n"], "seed": 1, "top_k": 5}
    r = await client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-") and out["model"] == "fake-expert"
    assert out["choices"] == [{"index": 0, "text": " world!", "logprobs": None, "finish_reason": "length"}]
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    prompt, params, _ = fake.calls[0]
    assert prompt == "Hello"  # a string, not chat messages: no template
    assert (params.greedy, params.max_tokens, params.stop, params.seed, params.top_k) == (True, 2, ["\n"], 1, 5)


async def test_completion_stream_echo_and_usage(client, fake):
    fake.queue.append([Delta(text="a"), Delta(text="b"), Delta(finish_reason="stop", usage=Usage(1, 2))])
    body = {"prompt": ["Say"], "stream": True, "echo": True, "stream_options": {"include_usage": True}}
    r = await client.post("/v1/completions", json=body)
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    texts = [e["choices"][0]["text"] for e in events[:-2]]
    assert texts == ["Say", "a", "b", ""] and events[-3]["choices"][0]["finish_reason"] == "stop"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["total_tokens"] == 3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": ["a", ""]}, "prompt"),
        ({"prompt": [1, 2]}, "prompt"),
        ({"prompt": "x", "temperature": 9}, "temperature"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "n": 9}, "n"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "model": "gpt-3.5-turbo-instruct"}, "model"),
    ],
)
async def test_completion_errors_name_the_param(client, body, param):
    r = await client.post("/v1/completions", json=body)
    assert_error(r, 404 if param == "model" else 400, param=param)


async def test_completion_needs_an_engine_that_continues_text():
    class ChatOnly:  # a remote engine's surface: chat only
        __init__, model_names, stream, close = (
            FakeEngine.__init__,
            FakeEngine.model_names,
            FakeEngine.stream,
            FakeEngine.close,
        )

    engine = ChatOnly()
    async with make_client(engine) as c:
        assert_error(await c.post("/v1/completions", json={"prompt": "x"}), 400, code="unsupported_value")


async def test_generate_get_answers_the_prompt_as_json(client, fake):
    fake.queue.append("I am Sail.")
    r = await client.get("/generate", params={"prompt": "Who are you?", "max_tokens": 8})
    assert r.status_code == 200 and r.json() == {"response": "I am Sail."}
    messages, params, _ = fake.calls[0]
    assert messages == [{"role": "user", "content": "Who are you?"}] and params.max_tokens == 8 and params.greedy
    assert_error(await client.get("/generate"), 400, param="prompt")


async def test_ollama_chat_streams_ndjson_with_counts_and_durations(client, fake):
    fake.queue.append(
        [Delta(reasoning="hmm"), Delta(text="Hi"), Delta(text="!", finish_reason="stop", usage=Usage(4, 3))]
    )
    body = {"model": "fake-expert:latest", "messages": [{"role": "user", "content": "hi"}], "options": {"seed": 2}}
    r = await client.post("/api/chat", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [x["message"].get("thinking") for x in lines[:2]] == ["hmm", None]
    assert "".join(x["message"]["content"] for x in lines) == "Hi!"
    last = lines[-1]
    assert [x["done"] for x in lines] == [False, False, True] and last["done_reason"] == "stop"
    assert (last["prompt_eval_count"], last["eval_count"], last["model"]) == (4, 3, "fake-expert")
    assert last["total_duration"] >= last["eval_duration"] >= 0 and last["created_at"].endswith("Z")
    _, params, _ = fake.calls[0]
    assert (params.temperature, params.top_k, params.top_p, params.seed) == (0.8, 40, 0.9, 2)  # Ollama's defaults


async def test_ollama_generate_one_json_options_and_raw(client, fake):
    body = {"prompt": "Who?", "system": "Be brief.", "stream": False, "options": {"temperature": 0, "num_predict": 5}}
    r = await client.post("/api/generate", json=body)
    out = r.json()
    assert out["response"] == "fake answer" and out["done"] is True and out["eval_count"] == 2
    messages, params, _ = fake.calls[0]
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who?"}]
    assert (params.greedy, params.max_tokens) == (True, 5)
    await client.post("/api/generate", json={"prompt": "Once upon", "raw": True, "stream": False})
    assert fake.calls[1][0] == "Once upon"
    r = await client.post("/api/generate", json={"model": "fake-expert"})  # how Ollama clients load a model
    assert r.json()["done_reason"] == "load" and len(fake.calls) == 2


async def test_ollama_errors_are_ollama_bodies(client):
    r = await client.post("/api/chat", json={"model": "llama3", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and "llama3" in r.json()["error"]
    r = await client.post("/api/chat", json={"messages": [{"role": "user", "content": "x"}], "options": {"top_p": 5}})
    assert r.status_code == 400 and "top_p" in r.json()["error"]
    r = await client.post("/api/generate", content=b"{not json")
    assert r.status_code == 400 and isinstance(r.json()["error"], str)


async def test_ollama_tags_show_version_and_root(client):
    assert (await client.get("/")).text == "Ollama is running"
    assert (await client.head("/")).status_code == 200
    assert (await client.get("/api/version")).json()["version"]
    models = (await client.get("/api/tags")).json()["models"]
    assert [m["name"] for m in models] == ["fake-expert"] and models[0]["details"]["family"]
    show = (await client.post("/api/show", json={"model": "fake-expert"})).json()
    assert "completion" in show["capabilities"] and "details" in show
    assert (await client.post("/api/show", json={"model": "nope"})).status_code == 404


async def test_embeddings_without_a_local_model_is_400(client):
    assert_error(await client.post("/v1/embeddings", json={"input": "x"}), 400, code="unsupported_value")
    assert_error(await client.post("/v1/embeddings", json={"input": []}), 400, param="input")


def metric(text: str, name: str) -> float:
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, (name, text)
    return values[0]


async def test_metrics_move_after_a_request_and_after_a_429(fake):
    fake.queue.append([Delta(text="a"), Delta(finish_reason="stop", usage=Usage(5, 7))])
    async with make_client(fake, max_concurrency=1, max_queue=0, api_key="k") as c:
        auth = {"Authorization": "Bearer k"}
        assert (await c.get("/metrics")).status_code == 401
        before = (await c.get("/metrics", headers=auth)).text
        assert metric(before, "expertkit_generated_tokens_total") == 0
        assert (
            await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}, headers=auth)
        ).status_code == 200
        fake.gate = asyncio.Event()
        body = {"messages": [{"role": "user", "content": "x"}]}
        waiting = asyncio.create_task(c.post("/v1/chat/completions", json=body, headers=auth))
        await asyncio.sleep(0.1)
        busy = (await c.get("/metrics", headers=auth)).text
        assert metric(busy, "expertkit_requests_running") == 1
        assert (await c.post("/v1/chat/completions", json=body, headers=auth)).status_code == 429
        fake.gate.set()
        await waiting
        after = await c.get("/metrics", headers=auth)
    assert after.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = after.text
    assert metric(text, "expertkit_generated_tokens_total") == 7 + 2
    assert metric(text, "expertkit_requests_rejected_total") == 1
    assert metric(text, "expertkit_requests_running") == 0
    assert metric(text, "expertkit_time_to_first_token_seconds_count") == 2
    assert metric(text, "expertkit_generation_tokens_per_second") > 0
    assert 'expertkit_errors_total{type="rate_limit_error",status="429"} 1' in text
    assert 'expertkit_errors_total{type="authentication_error",status="401"} 1' in text
