"""The OpenAI contract against a fake engine: responses, SSE, parameters, and every error with its status."""

from __future__ import annotations

import asyncio
import json

import pytest
from serve_fakes import FakeEngine, make_client

from expertkit.engine.base import Delta, Usage
from expertkit.serve.protocol import ChatCompletion, ChatCompletionChunk, ErrorResponse

pytestmark = pytest.mark.anyio
HI = {"messages": [{"role": "user", "content": "hi"}]}


def sse_events(text: str) -> list:
    lines = [line for line in text.split("\n\n") if line.strip()]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines]


def assert_error(r, status: int, param=None, code=None):
    assert r.status_code == status, r.text
    err = ErrorResponse.model_validate(r.json()).error
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    if param is not None:
        assert err.param == param, err
    if code is not None:
        assert err.code == code, err
    assert "Traceback" not in r.text
    return err


async def test_models_lists_the_engine_names(client):
    r = await client.get("/v1/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["fake-expert"]


async def test_completion_has_openai_shape_and_passes_sampling(client, fake):
    fake.queue.append([Delta(text="Hello"), Delta(text=" there", finish_reason="length", usage=Usage(5, 2))])
    body = {**HI, "model": "fake-expert", "temperature": 0, "top_p": 0.5, "seed": 3, "stop": "END", "max_tokens": 9}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    out = ChatCompletion.model_validate(r.json())
    assert out.choices[0].message.content == "Hello there"
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (5, 2, 7)
    assert "reasoning_content" not in r.json()["choices"][0]["message"]
    messages, params, model = fake.calls[0]
    assert messages == [{"role": "user", "content": "hi"}] and model == "fake-expert"
    assert (params.temperature, params.greedy, params.top_p, params.seed) == (0, True, 0.5, 3)
    assert (params.stop, params.max_tokens) == (["END"], 9)


async def test_max_completion_tokens_stop_list_model_default_and_text_parts(client, fake):
    content = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    body = {"messages": [{"role": "developer", "content": "sys"}, {"role": "user", "content": content}]}
    r = await client.post("/v1/chat/completions", json={**body, "max_completion_tokens": 4, "stop": ["x", "y"]})
    assert r.status_code == 200, r.text
    messages, params, model = fake.calls[0]
    assert messages == [{"role": "system", "content": "sys"}, {"role": "user", "content": "ab"}]
    assert (params.max_tokens, params.stop, model) == (4, ["x", "y"], "fake-expert")


async def test_reasoning_is_returned_as_reasoning_content(client, fake):
    fake.queue.append([Delta(reasoning="think"), Delta(text="answer")])
    r = await client.post("/v1/chat/completions", json=HI)
    assert r.json()["choices"][0]["message"] == {
        "role": "assistant",
        "content": "answer",
        "reasoning_content": "think",
    }


async def test_stream_sends_role_first_deltas_finish_usage_and_done(client, fake):
    fake.queue.append(
        [Delta(reasoning="hmm"), Delta(text="Hel"), Delta(text="lo", finish_reason="stop", usage=Usage(3, 2))]
    )
    body = {**HI, "stream": True, "stream_options": {"include_usage": True}}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    deltas = [e["choices"][0]["delta"] for e in events[1:-3]]
    assert deltas == [{"reasoning_content": "hmm"}, {"content": "Hel"}, {"content": "lo"}]
    assert events[-3]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert events[-2]["choices"] == [] and events[-2]["usage"]["total_tokens"] == 5
    assert all(e["usage"] is None for e in events[:-2])


async def test_streamed_chunks_are_json_dumps_of_the_chunk_byte_for_byte(client, fake):
    """Content chunks are rendered once per stream and get each token's text put in (serve/stream.py ContentChunk):
    the bytes are still json.dumps's, quotes, newlines, non-ASCII and control characters included."""
    texts = ['Hé "x"\n', "\x00\\", "😀 <b>"]
    fake.queue.append([Delta(text=t) for t in texts] + [Delta(finish_reason="stop", usage=Usage(3, 3))])
    body = {**HI, "stream": True, "stream_options": {"include_usage": True}}
    r = await client.post("/v1/chat/completions", json=body)
    lines = [line for line in r.text.split("\n\n") if line.strip()]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        assert line == f"data: {json.dumps(json.loads(line[6:]), ensure_ascii=False)}"
    events = sse_events(r.text)
    assert [e["choices"][0]["delta"].get("content") for e in events[1:4]] == texts


async def test_stream_without_usage_has_no_usage_chunk(client):
    r = await client.post("/v1/chat/completions", json={**HI, "stream": True})
    events = sse_events(r.text)
    assert events[-1] == "[DONE]" and all("usage" not in e for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


BAD_FIELDS = [
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({**HI, "temperature": -1}, "temperature"),
    ({**HI, "temperature": "hot"}, "temperature"),
    ({**HI, "top_p": 7}, "top_p"),
    ({**HI, "max_tokens": -5}, "max_tokens"),
    ({**HI, "max_tokens": 0}, "max_tokens"),
    ({**HI, "max_completion_tokens": "many"}, "max_completion_tokens"),
    ({**HI, "n": 9}, "n"),
    ({**HI, "n": 0}, "n"),
    ({**HI, "stop": 3}, "stop"),
    ({**HI, "stream": "yes please"}, "stream"),
    ({**HI, "seed": 1.5}, "seed"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
]


@pytest.mark.parametrize(("body", "param"), BAD_FIELDS)
async def test_bad_field_is_400_naming_the_param(client, body, param):
    r = await client.post("/v1/chat/completions", json=body)
    assert_error(r, 400, param=param)


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b"[1, 2]", b"null", b'{"messages": NaN}', b"[" * 100_000, b"\xff\xfe", b'"x"']
)
async def test_non_json_or_odd_json_is_400(client, raw):
    r = await client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert_error(r, 400)


async def test_form_encoded_json_is_read_like_curl_sends_it(client):
    r = await client.post(
        "/v1/chat/completions", content=json.dumps(HI), headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 200, r.text


async def test_unknown_model_is_404_and_unknown_fields_are_accepted_and_logged_once(client, caplog):
    assert_error(
        await client.post("/v1/chat/completions", json={**HI, "model": "gpt-4"}), 404, "model", "model_not_found"
    )
    caplog.set_level("WARNING")
    for _ in range(2):
        r = await client.post("/v1/chat/completions", json={**HI, "logit_bias": {"1": 2}, "foo": {"a": [1]}})
        assert r.status_code == 200
    logged = [r.getMessage() for r in caplog.records if "ignoring request field" in r.getMessage()]
    assert sorted(logged) == [
        "ignoring request field 'foo' (not supported; logged once)",
        "ignoring request field 'logit_bias' (not supported; logged once)",
    ]


async def test_unknown_path_and_method_are_openai_errors(client):
    assert_error(await client.get("/v1/nope"), 404)
    assert_error(await client.get("/v1/chat/completions"), 405)


async def test_body_over_the_cap_is_413(fake):
    async with make_client(fake, max_request_bytes=2048) as c:
        body = {"messages": [{"role": "user", "content": "x" * 5000}]}
        assert_error(await c.post("/v1/chat/completions", json=body), 413, code="request_too_large")

        async def chunked():
            yield b'{"messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}]}'

        assert_error(await c.post("/v1/chat/completions", content=chunked()), 413)


async def test_engine_bug_is_500_with_request_id_and_no_traceback():
    class Broken(FakeEngine):
        async def stream(self, messages, params, model=None):
            raise RuntimeError("secret internals")
            yield

    async with make_client(Broken()) as c:
        r = await c.post("/v1/chat/completions", json=HI)
        assert_error(r, 500)
        assert "secret internals" not in r.text
        r = await c.post("/v1/chat/completions", json={**HI, "stream": True})
        events = sse_events(r.text)
        assert events[-2]["error"]["type"] == "server_error" and events[-1] == "[DONE]"


async def test_unexpected_bug_in_a_route_is_500_naming_the_request_id(fake):
    fake.model_names = lambda: 1 / 0
    async with make_client(fake) as c:
        r = await c.get("/v1/models")
        err = assert_error(r, 500)
        assert r.headers["x-request-id"] in err.message and "ZeroDivision" not in r.text


async def test_queue_over_max_queue_is_429_with_retry_after_then_recovers(fake):
    fake.gate = asyncio.Event()
    async with make_client(fake, max_concurrency=1, max_queue=2) as c:
        waiting = [asyncio.create_task(c.post("/v1/chat/completions", json=HI)) for _ in range(3)]
        await asyncio.sleep(0.2)
        rejected = [await c.post("/v1/chat/completions", json=HI) for _ in range(2)]
        for r in rejected:
            assert_error(r, 429, code="queue_full")
            assert r.headers["retry-after"]
        fake.gate.set()
        assert [r.status_code for r in await asyncio.gather(*waiting)] == [200, 200, 200]
        assert (await c.post("/v1/chat/completions", json=HI)).status_code == 200


async def test_timeout_stops_generation(fake):
    fake.gate = asyncio.Event()
    async with make_client(fake, request_timeout=0.3) as c:
        assert_error(await c.post("/v1/chat/completions", json=HI), 504)
        r = await c.post("/v1/chat/completions", json={**HI, "stream": True})
        assert sse_events(r.text)[-2]["error"]["type"] == "timeout_error"
    assert fake.closed_streams == 2 and fake.finished_streams == 0


async def test_health_is_503_while_loading_then_200(fake):
    import threading

    from expertkit.serve.app import build_app
    from expertkit.serve.config import ServeConfig

    release = threading.Event()

    def factory():
        release.wait(5)
        return fake

    app = build_app(factory, ServeConfig(model_name_or_path="fake"))
    import httpx

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
            r = await c.get("/health")
            assert r.status_code == 503 and r.json()["status"] == "loading"
            assert_error(await c.post("/v1/chat/completions", json=HI), 503, code="model_loading")
            release.set()
            app.state.server.loaded.wait(5)
            assert (await c.get("/health")).status_code == 200
            assert (await c.post("/v1/chat/completions", json=HI)).status_code == 200
