"""Running one chat completion: the whole answer as JSON, or as OpenAI's server-sent events.

    data: {"object": "chat.completion.chunk", "choices": [{"delta": {"role": "assistant", "content": ""}}]}
    data: {"choices": [{"delta": {"reasoning_content": "Let me think"}}]}
    data: {"choices": [{"delta": {"content": "Hello"}}]}
    data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}
    data: {"choices": [], "usage": {...}}            (only with stream_options.include_usage)
    data: [DONE]

A deadline (request_timeout) or a client that leaves cancels the engine's stream, which frees the model's slot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

from expertkit.engine.base import Delta, Engine, SamplingParams, Usage, complete
from expertkit.serve.errors import APIError, error_body
from expertkit.serve.protocol import completion_id

logger = logging.getLogger(__name__)


def finish_reason(delta: Delta) -> str:
    return "length" if delta.finish_reason == "length" else "stop"


def usage_dict(usage: Usage | None) -> dict:
    u = usage or Usage()
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


def engine_failure(e: BaseException) -> APIError:
    """A template that refuses the conversation is the request's fault (400); anything else is ours (500)."""
    if type(e).__module__.startswith("jinja2"):
        return APIError(400, f"the chat template refused the messages: {e}", param="messages")
    return APIError(500, "generation failed; the server log has the details", type="server_error", code="engine_error")


async def complete_once(
    engine: Engine, messages: list[dict], params: SamplingParams, model: str, deadline: float, request
) -> dict:
    """The whole answer as a chat.completion object; stops generating if the client leaves or time runs out."""
    created, cid = int(time.time()), completion_id()
    task = asyncio.ensure_future(complete(engine, messages, params, model))
    gone = asyncio.ensure_future(wait_disconnect(request))
    try:
        done, _ = await asyncio.wait(
            {task, gone}, timeout=max(deadline - time.monotonic(), 0), return_when="FIRST_COMPLETED"
        )
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task not in done:
        if gone in done:
            logger.info("client disconnected; generation stopped")
            raise APIError(499, "client closed the request", code="client_closed")
        raise APIError(504, "request_timeout passed before the answer was complete", type="timeout_error")
    if task.exception() is not None:
        e = task.exception()
        logger.error("generation failed", exc_info=e)
        raise engine_failure(e)
    out = task.result()
    message = {"role": "assistant", "content": out.text}
    if out.reasoning:
        message["reasoning_content"] = out.reasoning
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(out)}],
        "usage": usage_dict(out.usage),
    }


async def wait_disconnect(request) -> None:
    """Returns when the client goes away (the body was read already, so the next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def chat_chunks(
    engine: Engine, messages: list[dict], params: SamplingParams, model: str, include_usage: bool, deadline: float
) -> AsyncIterator[str]:
    """The SSE lines of one streamed answer; an error after the first byte is sent as an error event."""
    cid, created = completion_id(), int(time.time())

    def event(choices: list[dict], usage: dict | None = None, last: bool = False) -> str:
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
        if include_usage:
            chunk["usage"] = usage  # null on every chunk but the last, as OpenAI does
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    def choice(delta: dict, finish: str | None = None) -> dict:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    yield event([choice({"role": "assistant", "content": ""})])
    deltas = engine.stream(messages, params, model)
    try:
        while True:
            try:
                d = await asyncio.wait_for(deltas.__anext__(), timeout=max(deadline - time.monotonic(), 0))
            except StopAsyncIteration:
                break
            piece = {}
            if d.reasoning:
                piece["reasoning_content"] = d.reasoning
            if d.text:
                piece["content"] = d.text
            if piece:
                yield event([choice(piece)])
            if d.finish_reason is not None:
                yield event([choice({}, finish_reason(d))])
                if include_usage:
                    yield event([], usage_dict(d.usage))
                break
    except asyncio.TimeoutError:
        yield error_event(APIError(504, "request_timeout passed before the answer was complete", type="timeout_error"))
    except Exception as e:
        logger.error("generation failed while streaming", exc_info=e)
        yield error_event(engine_failure(e))
    finally:
        await deltas.aclose()
    yield "data: [DONE]\n\n"


def error_event(err: APIError) -> str:
    return f"data: {json.dumps(error_body(err.message, err.type, err.param, err.code))}\n\n"
