"""The one generation interface. Chat, the server, evaluation and RAG all call an `Engine`.

    engine = load_engine(EngineConfig(model_name_or_path="saves/merged"))  # engine/factory.py
    async for delta in engine.stream([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=64)):
        print(delta.text, end="")

A local adapter and a remote OpenAI-compatible model are interchangeable everywhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from expertkit.core.errors import ExpertkitError

FinishReason = Literal["stop", "length", "error", "cancelled"]


MAX_TOP_LOGPROBS = 20  # OpenAI's limit


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)  # stop strings; the stop text is not returned
    seed: int | None = None
    repetition_penalty: float = 1.0
    logprobs: bool = False  # report each answer token's log probability (Delta.logprobs)
    top_logprobs: int = 0  # and up to this many most likely tokens at each position (0..20)
    # OpenAI's response_format: {"type": "text" | "json_object"} or {"type": "json_schema", "json_schema": {...}}
    response_format: dict | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1

    def validate(self) -> SamplingParams:
        """Refuse values no backend can honour, naming the field (the server answers 400 with it as `param`)."""
        checks = [
            ("temperature", 0.0 <= self.temperature <= 2.0, "must be between 0 (greedy) and 2"),
            ("top_p", 0.0 < self.top_p <= 1.0, "must be more than 0 and at most 1"),
            ("top_k", 0 <= self.top_k, "must be 0 (off) or more"),
            ("max_tokens", 1 <= self.max_tokens, "must be at least 1"),
            ("repetition_penalty", 0.0 < self.repetition_penalty <= 10.0, "must be more than 0 and at most 10"),
            ("top_logprobs", 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS, f"must be 0 to {MAX_TOP_LOGPROBS}"),
            ("stop", all(isinstance(s, str) for s in self.stop), "must be strings"),
            ("response_format", response_format_ok(self.response_format), f"type must be one of {RESPONSE_TYPES}"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise InvalidParamError(name, f"{name}={getattr(self, name)!r} {rule}")
        return self


RESPONSE_TYPES = ("text", "json_object", "json_schema")


def response_format_ok(value) -> bool:
    return value is None or (isinstance(value, dict) and value.get("type", "text") in RESPONSE_TYPES)


class InvalidParamError(ValueError):
    """A sampling value out of range; `param` names the field (the server's 400 `param`)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class UnknownModelError(ExpertkitError, KeyError):
    """A request asked for a model name the engine does not serve (the server's 404); `names` lists those it does."""

    def __init__(self, name: str, names: list[str]):
        super().__init__(f"the model '{name[:200]}' is not served here", hint=f"models: {', '.join(names)}")
        self.name, self.names = name, list(names)

    def __str__(self) -> str:  # KeyError would quote the message
        return ExpertkitError.__str__(self)


def pick_served(served: dict, model: str | None):
    """The entry of `served` (name -> model) a request's `model` names (None or "": the first), or
    UnknownModelError listing the names."""
    if not model:
        return next(iter(served.values()))
    if model not in served:
        raise UnknownModelError(model, list(served))
    return served[model]


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class TokenLogprob:
    """One generated token and its log probability; `top`: the most likely tokens at its position (best first)."""

    token: str
    logprob: float
    bytes: list[int] = field(default_factory=list)  # the token text as UTF-8
    top: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Delta:
    """A piece of a streamed answer: answer text, reasoning text (`<think>`), and at the end why it stopped.

    `logprobs`: with `SamplingParams.logprobs`, one entry per token generated since the last delta (None when not
    asked for, or the engine cannot tell). `tool_calls`: function calls the engine returned as such (a remote
    OpenAI-compatible server's `tool_calls`, OpenAI's shape: `{"id", "type": "function", "function": {"name",
    "arguments"}}`), whole, on the last delta; None when it gave none (the local engine writes calls as text).
    """

    text: str = ""
    reasoning: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    logprobs: list[TokenLogprob] | None = None
    tool_calls: list[dict] | None = None

    def extend(self, d: Delta) -> None:
        """Append a later delta of the same answer (joining a stream into the whole answer)."""
        self.text += d.text
        self.reasoning += d.reasoning
        self.finish_reason = d.finish_reason or self.finish_reason
        self.usage = d.usage or self.usage
        if d.logprobs is not None:
            self.logprobs = (self.logprobs or []) + d.logprobs
        if d.tool_calls is not None:
            self.tool_calls = (self.tool_calls or []) + d.tool_calls


class Engine(Protocol):
    def model_names(self) -> list[str]:
        """The names requests may use in `model` (the first is the default)."""
        ...

    def stream(
        self, messages: list[dict], params: SamplingParams, model: str | None = None, tools: list[dict] | None = None
    ) -> AsyncIterator[Delta]:
        """Generate an answer to a conversation, as deltas; the last one has finish_reason and usage.

        `tools`: OpenAI function tools the model may call, shown to it by the chat template (the local engine: the
        calls come back as answer text, parsed by the server, serve/tools.py) or sent on (a remote: its structured
        calls come back in `Delta.tool_calls`).

        Raises `UnknownModelError` for a `model` not in `model_names()` and `InvalidParamError` for bad `params`,
        both before the first delta.
        """
        ...

    def context_length(self, model: str | None = None) -> int | None:
        """Tokens the model can attend to (prompt + answer), or None when the engine cannot tell (a remote)."""
        ...

    def count_prompt_tokens(self, messages: list[dict], model: str | None = None) -> int | None:
        """Tokens the conversation takes once rendered with the chat template, or None when unknown (a remote)."""
        ...

    async def close(self) -> None: ...


class TextEngine(Engine, Protocol):
    """An engine that also continues raw text, no chat template (/v1/completions); the local one does."""

    def stream_text(self, prompt: str, params: SamplingParams, model: str | None = None) -> AsyncIterator[Delta]: ...

    def count_text_tokens(self, prompt: str, model: str | None = None) -> int: ...


async def complete(engine: Engine, messages: list[dict], params: SamplingParams, model: str | None = None) -> Delta:
    """The whole answer at once (the deltas joined)."""
    out = Delta()
    async for d in engine.stream(messages, params, model):
        out.extend(d)
    return out
