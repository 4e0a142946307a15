"""A small streaming client for OpenAI-compatible /v1 servers (expertkit serve, vLLM, Ollama, DeepSeek, ...).

Reasoning arrives either as DeepSeek's `reasoning_content` deltas or inline as `<think>...</think>` in the
content (R1-style models whose template opens the block in the prompt send only the closing tag);
`split_reasoning` turns both into (reasoning, answer). A grounded answer (`retrieval=...`, expertkit's extension)
brings its numbered sources in the first chunk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from expertkit.core.errors import ExpertkitError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass
class Delta:
    reasoning: str = ""
    content: str = ""
    finish_reason: str | None = None
    sources: list[dict[str, Any]] | None = None  # a grounded answer's [{"n", "url", "title"}], on its first delta


def split_reasoning(text: str) -> tuple[str, str, bool]:
    """(reasoning, answer, still thinking) of a reply's content so far."""
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        body = stripped[len(THINK_OPEN) :]
        if THINK_CLOSE in body:
            reasoning, answer = body.split(THINK_CLOSE, 1)
            return reasoning.strip(), answer.lstrip(), False
        return body.strip(), "", True
    if THINK_CLOSE in text:
        reasoning, answer = text.split(THINK_CLOSE, 1)
        return reasoning.strip(), answer.lstrip(), False
    return "", text, False


class ChatClient:
    """GET /models and streamed POST /chat/completions against one base URL (…/v1)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 600.0):
        self.base_url = base_url.rstrip("/")
        key = api_key or os.environ.get("EXPERTKIT_API_KEY", "").split(",")[0] or os.environ.get("OPENAI_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = timeout

    def models(self, timeout: float = 5.0) -> list[str]:
        """The served model names; an ExpertkitError when the server cannot be reached or refuses."""
        import httpx

        try:
            r = httpx.get(f"{self.base_url}/models", headers=self.headers, timeout=timeout)
        except httpx.HTTPError as e:
            raise ExpertkitError(f"cannot reach {self.base_url}: {e}", hint="is the server running?") from None
        _raise_for_status(r, self.base_url)
        data = r.json().get("data") or []
        return [str(m.get("id")) for m in data if isinstance(m, dict) and m.get("id")]

    def stream(
        self, model: str, messages: list[dict[str, str]], retrieval: dict[str, Any] | None = None, **params: Any
    ) -> Iterator[Delta]:
        """Yield the reply's deltas as the server sends them (server-sent events). `retrieval`: {"kb": bool, "web":
        bool} grounds the answer (`expertkit serve kb_dir=...`); its sources come on the first delta."""
        import httpx

        sampling = {k: v for k, v in params.items() if v is not None}
        body = {"model": model, "messages": messages, "stream": True, **sampling}
        if retrieval:
            body["retrieval"] = retrieval
        timeout = httpx.Timeout(self.timeout, connect=10.0)
        try:
            with httpx.stream(
                "POST", f"{self.base_url}/chat/completions", json=body, headers=self.headers, timeout=timeout
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    _raise_for_status(r, self.base_url)
                for line in r.iter_lines():
                    delta = _parse_event(line)
                    if delta is not None:
                        yield delta
        except httpx.HTTPError as e:
            hint = "see the server's log"
            raise ExpertkitError(f"the answer from {self.base_url} broke off: {e}", hint=hint) from None


def _parse_event(line: str) -> Delta | None:
    if not line.startswith("data:"):
        return None  # comments (`: keep-alive`), event names, blank separators
    payload = line[len("data:") :].strip()
    if payload == "[DONE]":
        return None
    try:
        event = json.loads(payload)
    except ValueError:
        return None
    if "error" in event:
        error = event["error"]
        raise ExpertkitError(f"the server stopped the answer: {error.get('message', error)}")
    choices = event.get("choices") or [{}]
    delta = choices[0].get("delta") or {}
    sources = event.get("sources")
    return Delta(
        reasoning=delta.get("reasoning_content") or delta.get("reasoning") or "",
        content=delta.get("content") or "",
        finish_reason=choices[0].get("finish_reason"),
        sources=[s for s in sources if isinstance(s, dict)] if isinstance(sources, list) else None,
    )


def _raise_for_status(r, url: str) -> None:
    if r.status_code < 400:
        return
    try:
        error = r.json().get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
    except ValueError:
        message = r.text[:300]
    hint = "set api_key=... (or EXPERTKIT_API_KEY)" if r.status_code == 401 else ""
    raise ExpertkitError(f"{url} answered {r.status_code}: {message}", hint=hint)
