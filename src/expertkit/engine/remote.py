"""Any OpenAI-compatible server (Ollama, vLLM, DeepSeek, DashScope, another expertkit) behind `Engine`."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

from expertkit.core.errors import ExpertkitError, MissingExtraError
from expertkit.engine.base import Delta, SamplingParams, Usage
from expertkit.engine.config import EngineConfig
from expertkit.engine.text import ReasoningSplitter


class RemoteEngine:
    def __init__(self, config: EngineConfig):
        try:
            import httpx
        except ImportError:
            raise MissingExtraError("httpx", "serve") from None
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
            raise ExpertkitError(f"{self.base_url} answered {response.status_code}: {response.text[:300]}")

    async def stream(
        self, messages: list[dict], params: SamplingParams, model: str | None = None, tools: list[dict] | None = None
    ) -> AsyncIterator[Delta]:
        params.validate()
        if not (model or self._names):
            await self.refresh_models()
        body = {
            "model": model or self._names[0],
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_tokens,
            "temperature": max(params.temperature, 0.0),
            "top_p": params.top_p,
        }
        if tools:
            body["tools"] = tools
        if params.stop:
            body["stop"] = params.stop
        if params.seed is not None:
            body["seed"] = params.seed
        # not OpenAI fields: sent only when asked for (vLLM, Ollama, DashScope read them; api.openai.com refuses)
        if params.top_k:
            body["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty
        split = ReasoningSplitter()
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
                    delta = choice.get("delta", {})
                    answer, reasoning = split.feed(delta.get("content") or "")
                    reasoning += delta.get("reasoning_content") or delta.get("reasoning") or ""
                    finish = choice.get("finish_reason") or finish
                    if answer or reasoning:
                        yield Delta(text=answer, reasoning=reasoning)
        a, r = split.flush()
        yield Delta(text=a, reasoning=r, finish_reason=finish or "stop", usage=usage or Usage())

    async def close(self) -> None:
        await self.client.aclose()
