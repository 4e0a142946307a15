"""Any OpenAI-compatible server (Ollama, vLLM, DeepSeek, DashScope, another expertkit) behind `Engine`."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator

from expertkit.core.errors import ExpertkitError
from expertkit.core.optional import import_optional
from expertkit.engine.base import Delta, SamplingParams, TokenLogprob, Usage
from expertkit.engine.config import EngineConfig
from expertkit.engine.text import ReasoningSplitter


class RemoteHTTPError(ExpertkitError):
    """The remote answered an HTTP error: `status`, its `body`, and `retry_after` (seconds, from a 429's or 503's
    Retry-After header; None when it sent none), for callers that retry (synth's teacher)."""

    def __init__(self, base_url: str, status: int, body: str, retry_after: str | None = None):
        super().__init__(f"{base_url} answered {status}: {body[:300]}")
        self.status = status
        self.body = body
        self.retry_after = _seconds(retry_after)


def _seconds(value: str | None) -> float | None:
    """Retry-After in seconds: a number, or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    from datetime import datetime, timezone
    from email.utils import parsedate_to_datetime

    try:
        return max((parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds(), 0.0)
    except (TypeError, ValueError):
        return None


class RemoteEngine:
    def __init__(self, config: EngineConfig):
        httpx = import_optional("httpx", "httpx", "serve")
        if not config.base_url:
            raise ExpertkitError("engine=openai needs base_url", hint="e.g. base_url=http://127.0.0.1:11434/v1")
        self.base_url = config.base_url.rstrip("/")
        key = config.remote_api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=httpx.Timeout(600, connect=10))
        self.config = config
        self._names: list[str] = [config.served_model_name] if config.served_model_name else []

    async def refresh_models(self) -> list[str]:
        response = await self.client.get("/models")
        self._check(response)
        self._names = [m["id"] for m in response.json().get("data", [])] or self._names
        return self._names

    def model_names(self) -> list[str]:
        return self._names

    def context_length(self, model: str | None = None) -> int | None:
        return None  # the OpenAI API does not say; the remote refuses a prompt that is too long itself

    def count_prompt_tokens(self, messages: list[dict], model: str | None = None) -> int | None:
        return None

    def _check(self, response) -> None:
        if response.status_code >= 400:
            raise RemoteHTTPError(
                self.base_url, response.status_code, response.text, response.headers.get("retry-after")
            )

    async def stream(
        self,
        messages: list[dict],
        params: SamplingParams,
        model: str | None = None,
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = None,
    ) -> AsyncIterator[Delta]:
        """`tool_choice`: sent on as it is, for the remote to enforce (the server forwards "required" and named
        functions here; the local engines have theirs forced by the server, serve/tools.py)."""
        params.validate()
        if not (model or self._names):
            await self.refresh_models()
        body = request_body(messages, params, model or self._names[0], tools, tool_choice)
        split = ReasoningSplitter()
        calls = ToolCalls()
        finish, usage = None, None
        async with self.client.stream("POST", "/chat/completions", json=body) as response:
            if response.status_code >= 400:
                await response.aread()
                self._check(response)
            async for line in response.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if chunk.get("usage"):
                    u = chunk["usage"]
                    usage = Usage(u.get("prompt_tokens", 0), u.get("completion_tokens", 0))
                for choice in chunk.get("choices", []):
                    delta = choice.get("delta") or {}
                    answer, reasoning = split.feed(delta.get("content") or "")
                    reasoning += delta.get("reasoning_content") or delta.get("reasoning") or ""
                    calls.add(delta.get("tool_calls"))
                    finish = choice.get("finish_reason") or finish
                    logprobs = token_logprobs(choice.get("logprobs")) if params.logprobs else None
                    if answer or reasoning or logprobs:
                        yield Delta(text=answer, reasoning=reasoning, logprobs=logprobs)
        a, r = split.flush()
        reason = "length" if finish == "length" else "stop"
        yield Delta(text=a, reasoning=r, finish_reason=reason, usage=usage or Usage(), tool_calls=calls.whole())

    async def close(self) -> None:
        await self.client.aclose()


def request_body(
    messages: list[dict], params: SamplingParams, model: str, tools: list[dict] | None, tool_choice=None
) -> dict:
    """The streamed chat request for the remote: every field the request set, and only those beyond OpenAI's."""
    body = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": params.max_tokens,
        "temperature": max(params.temperature, 0.0),
        "top_p": params.top_p,
    }
    if tools:
        body["tools"] = tools
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
    if params.stop:
        body["stop"] = params.stop
    if params.seed is not None:
        body["seed"] = params.seed
    if params.response_format is not None:
        body["response_format"] = params.response_format
    if params.logprobs:
        body["logprobs"] = True
        if params.top_logprobs:
            body["top_logprobs"] = params.top_logprobs
    # not OpenAI fields: sent only when asked for (vLLM, Ollama, DashScope read them; api.openai.com refuses)
    if params.top_k:
        body["top_k"] = params.top_k
    if params.repetition_penalty != 1.0:
        body["repetition_penalty"] = params.repetition_penalty
    return body


class ToolCalls:
    """A remote's streamed `delta.tool_calls` pieces joined into whole calls (the id, type and name come once, the
    arguments in pieces, each piece naming its call's `index`)."""

    def __init__(self):
        self.calls: dict[int, dict] = {}

    def add(self, pieces: list[dict] | None) -> None:
        for piece in pieces or []:
            call = self.calls.setdefault(
                piece.get("index", len(self.calls)),
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
            )
            call["id"] = piece.get("id") or call["id"]
            call["type"] = piece.get("type") or call["type"]
            function = piece.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""

    def whole(self) -> list[dict] | None:
        """The calls in index order, each with an id (made up when the remote sent none); None when there were none."""
        if not self.calls:
            return None
        calls = [self.calls[i] for i in sorted(self.calls)]
        for call in calls:
            call["id"] = call["id"] or f"call_{uuid.uuid4().hex[:24]}"
        return calls


def token_logprobs(logprobs: dict | None) -> list[TokenLogprob] | None:
    """A remote chunk's `logprobs.content` as TokenLogprobs (None when it sent none)."""
    if not logprobs or not logprobs.get("content"):
        return None

    def entry(e: dict) -> TokenLogprob:
        token = e.get("token", "")
        return TokenLogprob(token, float(e.get("logprob", 0.0)), list(e.get("bytes") or token.encode("utf-8")))

    out = []
    for e in logprobs["content"]:
        t = entry(e)
        t.top = [entry(a) for a in e.get("top_logprobs") or []]
        out.append(t)
    return out
