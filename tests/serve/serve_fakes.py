"""A fake engine with queued outputs (STYLE #10) and an in-process client for an app built around one."""

from __future__ import annotations

import asyncio

import httpx

from expertkit.engine.base import Delta, SamplingParams, Usage
from expertkit.serve.app import build_app
from expertkit.serve.config import ServeConfig

BASE_URL = "http://127.0.0.1:8000"
LIVE_KEY = "sk-test-local"  # the key of conftest.py's live server


class FakeEngine:
    """Answers with queued replies (a string, or a list of Deltas), records every call, and notes closed streams."""

    def __init__(self, names=("fake-expert",), delay: float = 0.0):
        self.names = list(names)
        self.queue: list = []
        self.calls: list[tuple[list[dict] | str, SamplingParams, str | None]] = []
        self.delay = delay
        self.closed_streams = 0
        self.finished_streams = 0
        self.gate: asyncio.Event | None = None  # when set by a test, generation waits for it
        self.tools_seen: list = []  # the `tools` of each stream call (None when not given)

    def model_names(self) -> list[str]:
        return self.names

    async def stream(self, messages, params, model=None, tools=None):
        self.calls.append((messages, params, model))
        self.tools_seen.append(tools)
        reply = self.queue.pop(0) if self.queue else "fake answer"
        if isinstance(reply, str):
            words = reply.split(" ")
            reply = [Delta(text=w + (" " if i < len(words) - 1 else "")) for i, w in enumerate(words)]
        deltas = reply
        try:
            if self.gate is not None:
                await self.gate.wait()
            for d in deltas:
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield d
            if not deltas or deltas[-1].finish_reason is None:
                yield Delta(finish_reason="stop", usage=Usage(7, len(deltas)))
            self.finished_streams += 1
        finally:
            self.closed_streams += 1

    def stream_text(self, prompt, params, model=None):
        """Raw-prompt generation (/v1/completions): recorded with the prompt string in place of messages."""
        return self.stream(prompt, params, model)

    def count_text_tokens(self, prompt, model=None) -> int:
        return len(prompt.split())

    async def close(self) -> None:
        pass


def make_client(engine, **config) -> httpx.AsyncClient:
    app = build_app(engine, ServeConfig(**{"model_name_or_path": "fake", **config}))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL)
