"""A scripted OpenAI-compatible server on 127.0.0.1 (uvicorn in a thread) that stands in for a remote model: it
records every request body and streams, as OpenAI does, either text (with logprobs when asked) or tool calls whose
arguments arrive in pieces."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from live_server import free_port, serve_app  # noqa: F401  (free_port: the tests import it from here)

MODEL = "remote-m"
CALLS = [
    {"id": "call_oslo", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
    {"id": "call_time", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
]


def chunk(delta: dict | None = None, finish: str | None = None, logprobs: dict | None = None) -> dict:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": logprobs}
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": MODEL, "choices": [choice]}


def tool_call_chunks() -> list[dict]:
    """The two calls as OpenAI streams them: id, type and name first, then the arguments in pieces."""
    first, second = CALLS
    head = {"index": 0, "id": first["id"], "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    return [
        chunk({"role": "assistant", "content": None, "tool_calls": [head]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        chunk({"tool_calls": [{"index": 1, **second}]}),
        chunk(finish="tool_calls"),
    ]


def text_chunks(logprobs: bool) -> list[dict]:
    def lp(token: str, value: float) -> dict | None:
        if not logprobs:
            return None
        entry = {"token": token, "logprob": value, "bytes": list(token.encode())}
        return {"content": [{**entry, "top_logprobs": [entry]}]}

    return [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}, logprobs=lp("Hello", -0.25)),
        chunk({"content": " there"}, logprobs=lp(" there", -1.5)),
        chunk(finish="stop"),
    ]


def build_fake_openai(bodies: list[dict]) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "fake"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        bodies.append(body)
        chunks = tool_call_chunks() if body.get("tools") else text_chunks(bool(body.get("logprobs")))
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        chunks.append({**chunk(), "choices": [], "usage": usage})
        text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return StreamingResponse(iter([text]), media_type="text/event-stream")

    return app


def running(app, port: int):
    """`app` served on 127.0.0.1:port for the length of the block."""
    return serve_app(app, port, ready_timeout=30)
