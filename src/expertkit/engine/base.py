"""The one generation interface. Chat, the server, evaluation and RAG all call an `Engine`.

    engine = load_engine(EngineConfig(model_name_or_path="saves/merged"))
    async for delta in engine.stream([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=64)):
        print(delta.text, end="")

A local adapter and a remote OpenAI-compatible model are interchangeable everywhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

FinishReason = Literal["stop", "length", "error", "cancelled"]


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)  # stop strings; the stop text is not returned
    seed: int | None = None
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Delta:
    """A piece of a streamed answer: answer text, reasoning text (`<think>`), and at the end why it stopped."""

    text: str = ""
    reasoning: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


class Engine(Protocol):
    def model_names(self) -> list[str]:
        """The names requests may use in `model` (the first is the default)."""
        ...

    def stream(self, messages: list[dict], params: SamplingParams, model: str | None = None) -> AsyncIterator[Delta]:
        """Generate an answer to a conversation, as deltas; the last one has finish_reason and usage."""
        ...

    async def close(self) -> None: ...


async def complete(engine: Engine, messages: list[dict], params: SamplingParams, model: str | None = None) -> Delta:
    """The whole answer at once (the deltas joined)."""
    out = Delta()
    async for d in engine.stream(messages, params, model):
        out.text += d.text
        out.reasoning += d.reasoning
        out.finish_reason = d.finish_reason or out.finish_reason
        out.usage = d.usage or out.usage
    return out


def load_engine(config) -> Engine:
    """The engine a config asks for (`engine` key): local transformers or a remote OpenAI-compatible URL."""
    if config.engine == "openai":
        from expertkit.engine.remote import RemoteEngine

        return RemoteEngine(config)
    from expertkit.engine.local import LocalEngine

    return LocalEngine(config)
