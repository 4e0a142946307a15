"""Running one generation to the end, or as it comes, under the request's deadline and its client's presence.

`run_whole` joins an answer (non-streaming routes); `within_deadline` passes deltas on for the streaming ones
(OpenAI's server-sent events here, Ollama's NDJSON in ollama.py). A deadline (request_timeout) or a client that
leaves cancels the engine's stream, which frees the model's slot. OpenAI's chat stream:

    data: {"object": "chat.completion.chunk", "choices": [{"delta": {"role": "assistant", "content": ""}}]}
    data: {"choices": [{"delta": {"reasoning_content": "Let me think"}}]}
    data: {"choices": [{"delta": {"content": "Hello"}}]}
    data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}
    data: {"choices": [], "usage": {...}}            (only with stream_options.include_usage)
    data: [DONE]

and its text completion stream: `{"object": "text_completion", "choices": [{"index": 0, "text": "Hello", ...}]}`
chunks, every choice of every prompt interleaved, each naming its `index`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from expertkit.engine.base import Delta, Usage
from expertkit.serve.errors import APIError, error_body
from expertkit.serve.logprobs import completion_logprobs, logprobs_body
from expertkit.serve.metrics import Metrics
from expertkit.serve.tools import ToolCallStream, parse_tool_calls

logger = logging.getLogger(__name__)


def finish_reason(delta: Delta) -> str:
    return "length" if delta.finish_reason == "length" else "stop"


def usage_dict(usage: Usage | None) -> dict:
    u = usage or Usage()
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


def engine_failure(e: BaseException) -> APIError:
    """The request's fault (400/404: the template refused it, a bad sampling value, an unknown model) or ours (500)."""
    if isinstance(e, APIError):
        return e
    if type(e).__module__.startswith("jinja2"):
        return APIError(400, f"the chat template refused the messages: {e}", param="messages")
    if type(e).__name__ == "InvalidParamError":  # engine.base: a sampling value the engine refuses
        return APIError(400, str(e), param=getattr(e, "param", None), code="invalid_value")
    if type(e).__name__ == "UnknownModelError":
        return APIError(404, str(e), type="not_found_error", param="model", code="model_not_found")
    logger.error("generation failed", exc_info=e)
    return APIError(500, "generation failed; the server log has the details", type="server_error", code="engine_error")


def timeout_error() -> APIError:
    return APIError(504, "request_timeout passed before the answer was complete", type="timeout_error")


async def within_deadline(deltas: AsyncIterator[Delta], deadline: float) -> AsyncIterator[Delta]:
    """The deltas up to the one that finishes; an APIError when time runs out or the engine fails. Closes `deltas`.

    The deadline is an `asyncio.timeout_at` around each wait, not `asyncio.wait_for`, which runs every wait as a
    task of its own: a task per token (16 us of CPU against 7 us here, bench/README.md's engine=vllm profile)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + max(deadline - time.monotonic(), 0)  # the loop's clock (uvloop keeps its own)
    try:
        while True:
            try:
                d = await next_before(deltas, until)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11 on
                raise timeout_error() from None
            except Exception as e:
                raise engine_failure(e) from None
            yield d
            if d.finish_reason is not None:
                return
    finally:
        await deltas.aclose()


async def next_before(deltas: AsyncIterator[Delta], until: float) -> Delta:
    """The next delta, or TimeoutError at the loop time `until` (the wait is cancelled, which closes `deltas`)."""
    if not hasattr(asyncio, "timeout_at"):  # Python 3.10
        return await asyncio.wait_for(deltas.__anext__(), timeout=max(until - asyncio.get_running_loop().time(), 0))
    async with asyncio.timeout_at(until):
        return await deltas.__anext__()


async def run_whole(deltas: AsyncIterator[Delta], deadline: float, request) -> Delta:
    """The whole answer; stops generating (and raises) if the client leaves or time runs out."""
    return (await run_all([deltas], deadline, request))[0]


async def run_all(streams: list[AsyncIterator[Delta]], deadline: float, request) -> list[Delta]:
    """The whole answers of several generations run at once (chat's `n`); all stop if one fails, the client leaves
    or time runs out."""

    async def join(deltas: AsyncIterator[Delta]) -> Delta:
        out = Delta()
        async with aclosing(deltas):
            async for d in deltas:
                out.extend(d)
        return out

    joins = [asyncio.ensure_future(join(s)) for s in streams]
    task = asyncio.gather(*joins)
    gone = asyncio.ensure_future(wait_disconnect(request))
    try:
        done, _ = await asyncio.wait(
            {task, gone}, timeout=max(deadline - time.monotonic(), 0), return_when="FIRST_COMPLETED"
        )
    finally:
        gone.cancel()
        task.cancel()
        for j in joins:  # a failed generation ends gather but not the others: stop them too
            j.cancel()
        await asyncio.gather(*joins, return_exceptions=True)
    if task not in done:
        if gone in done:
            logger.info("client disconnected; generation stopped")
            raise APIError(499, "client closed the request", code="client_closed")
        raise timeout_error()
    if task.exception() is not None:
        raise engine_failure(task.exception())
    return task.result()


async def merged(streams: list[AsyncIterator[Delta]], deadline: float) -> AsyncIterator[tuple[int, Delta]]:
    """(choice index, delta) of several streams as they come, each under the deadline; the first APIError ends all.

    Closing this generator cancels (and so closes) every stream still running."""
    if len(streams) == 1:
        async with aclosing(within_deadline(streams[0], deadline)) as stream:
            async for d in stream:
                yield 0, d
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, deltas: AsyncIterator[Delta]) -> None:
        try:
            async with aclosing(within_deadline(deltas, deadline)) as stream:
                async for d in stream:
                    queue.put_nowait((i, d, None))
        except APIError as err:
            queue.put_nowait((i, None, err))
        else:
            queue.put_nowait((i, None, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            i, d, err = await queue.get()
            if err is not None:
                raise err
            if d is None:
                running -= 1
            else:
                yield i, d
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_disconnect(request) -> None:
    """Returns when the client goes away (the body was read already, so the next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def summed_usage(usages: list[Usage | None]) -> Usage:
    """The usage of n choices of one prompt: the prompt counted once, the completions summed."""
    first = usages[0] or Usage()
    return Usage(first.prompt_tokens, sum(u.completion_tokens for u in usages if u))


def chat_completion_body(
    outs: list[Delta], cid: str, created: int, model: str, tools: bool = False, sources: list[dict] | None = None
) -> dict:
    """The chat completion of n answers; `tools`: parse `<tool_call>` blocks into `tool_calls`, unless the engine
    returned its calls as such (a remote's `tool_calls`); `sources`: a grounded answer's numbered sources."""
    choices = []
    for i, out in enumerate(outs):
        if out.tool_calls:
            content, calls = out.text or None, out.tool_calls
        else:
            content, calls = parse_tool_calls(out.text) if tools else (out.text, [])
        message = {"role": "assistant", "content": content}
        if out.reasoning:
            message["reasoning_content"] = out.reasoning
        if calls:
            message["tool_calls"] = calls
        finish = "tool_calls" if calls else finish_reason(out)
        choices.append(
            {"index": i, "message": message, "logprobs": logprobs_body(out.logprobs), "finish_reason": finish}
        )
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_dict(summed_usage([o.usage for o in outs])),
    } | ({"sources": sources} if sources is not None else {})


def prompts_usage(usages: list[Usage | None], n: int) -> Usage:
    """The usage of n choices of each of several prompts (choice i answers prompt i // n): each prompt counted once,
    the completions summed."""
    groups = [summed_usage(usages[k : k + n]) for k in range(0, len(usages), n)]
    return Usage(sum(g.prompt_tokens for g in groups), sum(g.completion_tokens for g in groups))


def text_completion_body(echoes: list[str], outs: list[Delta], cid: str, created: int, model: str, n: int = 1) -> dict:
    """Whole text completions, n choices per prompt: each choice's `echo` (its prompt, when asked for) then the raw
    text, `<think>` left in it."""
    choices = []
    for i, (echo, out) in enumerate(zip(echoes, outs)):
        logprobs, _ = completion_logprobs(out.logprobs, len(echo))
        text = echo + out.reasoning + out.text
        choices.append({"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish_reason(out)})
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_dict(prompts_usage([o.usage for o in outs], n)),
    }


async def chat_chunks(
    streams: list[AsyncIterator[Delta]],
    cid: str,
    model: str,
    include_usage: bool,
    deadline: float,
    metrics: Metrics,
    tools: bool = False,
    sources: list[dict] | None = None,
) -> AsyncIterator[str]:
    """The SSE lines of streamed chat answers (n choices interleaved, each chunk naming its `index`); an error after
    the first byte is sent as an error event. `tools`: text from a `<tool_call>` on is held and sent, parsed, as one
    `delta.tool_calls` chunk at the end of its choice; calls the engine returned as such (`Delta.tool_calls`, a
    remote's) are sent the same way, and then held text goes out as content, unparsed."""
    created = int(time.time())

    def event(choices: list[dict], usage: dict | None = None, first: bool = False) -> str:
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
        if first and sources is not None:
            chunk["sources"] = sources  # a grounded answer's numbered sources, before its text
        if include_usage:
            chunk["usage"] = usage  # null on every chunk but the last, as OpenAI does
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    def choice(index: int, delta: dict, finish: str | None = None, logprobs: dict | None = None) -> dict:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    content = [ContentChunk(event([choice(i, {"content": ContentChunk.MARK})])) for i in range(len(streams))]
    for i in range(len(streams)):
        yield event([choice(i, {"role": "assistant", "content": ""})], first=i == 0)
    usages: list[Usage | None] = [None] * len(streams)
    held = [ToolCallStream() for _ in streams] if tools else None
    tail: list[str] = []  # one choice: its last chunks go out with the usage and [DONE] in one write
    try:
        async with aclosing(merged(streams, deadline)) as stream:
            async for i, d in stream:
                text = held[i].feed(d.text) if held else d.text
                if text and not d.reasoning and d.logprobs is None:  # the chunk of nearly every token
                    yield content[i].render(text)
                elif d.reasoning or text or d.logprobs:  # tokens whose text is held (a tool call) send logprobs
                    piece = {"reasoning_content": d.reasoning} if d.reasoning else {}
                    if text:
                        piece["content"] = text
                    yield event([choice(i, piece, logprobs=logprobs_body(d.logprobs))])
                if d.finish_reason is not None:
                    usages[i] = d.usage or Usage()
                    finish = finish_reason(d)
                    rest, calls = held[i].finish(parse=not d.tool_calls) if held else ("", [])
                    calls = d.tool_calls or calls  # the engine's own calls (a remote's) over parsed text
                    out = tail if len(streams) == 1 else []
                    if rest:
                        out.append(event([choice(i, {"content": rest})]))
                    if calls:
                        finish = "tool_calls"
                        indexed = [{"index": k, **c} for k, c in enumerate(calls)]
                        out.append(event([choice(i, {"tool_calls": indexed})]))
                    out.append(event([choice(i, {}, finish)]))
                    if out is not tail:
                        yield "".join(out)
        if include_usage and all(u is not None for u in usages):
            tail.append(event([], usage_dict(summed_usage(usages))))
    except APIError as err:
        tail.append(error_event(err, metrics))
    yield "".join([*tail, "data: [DONE]\n\n"])


class ContentChunk:
    """A stream's content chunk rendered once, its text put in per token: the same bytes as `json.dumps` of the
    whole chunk at a fifth of the cost (the server's per-token work, bench/README.md's engine=vllm profile)."""

    MARK = "\x00expertkit-content\x00"

    def __init__(self, rendered: str):
        self.head, self.tail = rendered.split(json.dumps(self.MARK), 1)

    def render(self, text: str) -> str:
        return f"{self.head}{json.dumps(text, ensure_ascii=False)}{self.tail}"


async def completion_chunks(
    streams: list[AsyncIterator[Delta]],
    cid: str,
    model: str,
    include_usage: bool,
    deadline: float,
    metrics: Metrics,
    echoes: list[str],
    n: int = 1,
) -> AsyncIterator[str]:
    """The SSE lines of streamed text completions, n choices per prompt interleaved (each chunk naming its `index`;
    `echoes[i]`: choice i's prompt, sent first when asked for); each chunk carries the legacy `logprobs` of the tokens
    it brings when they were asked for."""
    created = int(time.time())
    offsets = [len(e) for e in echoes]

    def event(choices: list[dict], usage: dict | None = None) -> str:
        chunk = {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": choices}
        if include_usage:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    def choice(index: int, text: str, finish: str | None = None, logprobs: dict | None = None) -> dict:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    for i, echo in enumerate(echoes):
        if echo:
            yield event([choice(i, echo)])
    usages: list[Usage | None] = [None] * len(streams)
    try:
        async with aclosing(merged(streams, deadline)) as stream:
            async for i, d in stream:
                text = d.reasoning + d.text  # raw text: no <think> split to report apart
                logprobs, offsets[i] = completion_logprobs(d.logprobs, offsets[i])
                if d.finish_reason is not None:
                    usages[i] = d.usage or Usage()
                    yield event([choice(i, text, finish_reason(d), logprobs)])
                elif text or d.logprobs:
                    yield event([choice(i, text, logprobs=logprobs)])
        if include_usage and all(u is not None for u in usages):
            yield event([], usage_dict(prompts_usage(usages, n)))
    except APIError as err:
        yield error_event(err, metrics)
    yield "data: [DONE]\n\n"


def error_event(err: APIError, metrics: Metrics) -> str:
    metrics.count_error(err.type, err.status)
    return f"data: {json.dumps(error_body(err.message, err.type, err.param, err.code))}\n\n"


KEEPALIVE = b": keep-alive\n\n"


class KeepAlive:
    """ASGI middleware: while a server-sent-events response stays silent for `interval` seconds (the request waits
    in the queue or the prompt is being prefilled), send the SSE comment line `: keep-alive`, which clients skip,
    so proxies and clients don't time out. Once tokens flow the gaps are short and none is sent. Other responses
    (JSON, Ollama's NDJSON, whose clients don't accept comments) pass untouched; `interval` 0 turns it off."""

    def __init__(self, app, interval: float):
        self.app = app
        self.interval = interval

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.interval:
            await self.app(scope, receive, send)
            return
        lock = asyncio.Lock()
        last = time.monotonic()
        finished = False
        ticker: asyncio.Task | None = None

        async def tick() -> None:
            nonlocal last
            while True:
                await asyncio.sleep(max(last + self.interval - time.monotonic(), 0))
                async with lock:
                    if finished:
                        return
                    if time.monotonic() - last >= self.interval:
                        try:
                            await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
                        except Exception:  # the client left: the response itself finds out and ends
                            return
                        last = time.monotonic()

        async def send_noting(message) -> None:
            nonlocal last, finished, ticker
            async with lock:
                if message["type"] == "http.response.start" and event_stream(message):
                    ticker = asyncio.ensure_future(tick())
                elif message["type"] == "http.response.body":
                    last = time.monotonic()
                    finished = finished or not message.get("more_body", False)
                await send(message)

        try:
            await self.app(scope, receive, send_noting)
        finally:
            finished = True
            if ticker is not None:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)


def event_stream(start_message) -> bool:
    for name, value in start_message.get("headers", []):
        if name.lower() == b"content-type":
            return value.split(b";")[0].strip().lower() == b"text/event-stream"
    return False
