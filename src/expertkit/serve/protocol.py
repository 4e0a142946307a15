"""The OpenAI chat completions contract as pydantic models: what a request may hold, what we answer.

Requests accept fields we do not know (clients send many; each name is logged once); responses carry exactly
OpenAI's fields plus DeepSeek's `reasoning_content` for `<think>` text.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class ContentPart(Lenient):
    type: str
    text: str | None = None


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict] | None = None  # an assistant's earlier calls, given to the chat template as they are
    tool_call_id: str | None = None  # a tool message: the call it answers


class FunctionDef(Lenient):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict | None = None


class Tool(Lenient):
    type: Literal["function"]
    function: FunctionDef


class StreamOptions(Lenient):
    include_usage: bool = False


class ResponseFormat(Lenient):
    """`{"type": "json_object"}`: the answer is a JSON object; `json_schema`: JSON of the schema's top-level type
    (the rest of the schema is not enforced); `text`: free text."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict | None = None


class SamplingRequest(Lenient):
    """The fields chat and text completions share."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # vLLM's extension; -1 or 0: off
    repetition_penalty: float | None = Field(None, gt=0, le=10)  # vLLM's extension
    seed: int | None = None
    n: int = 1
    stop: str | list[str] | None = None
    response_format: ResponseFormat | None = None
    # accepted and ignored, as most OpenAI-compatible servers do
    user: str | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class RetrievalOption(BaseModel):
    """expertkit's extension: answer from the server's knowledge base (kb) and/or a web search (web)."""

    model_config = ConfigDict(extra="forbid")
    kb: bool = True
    web: bool = False
    top_k: int | None = Field(None, ge=1, le=50)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    retrieval: bool | RetrievalOption | None = None  # not OpenAI's: grounds the answer, returns `sources`
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: str | dict | None = None  # "none" hides the tools; "required" or a function: forced (serve/tools.py)
    logprobs: bool | None = None
    top_logprobs: int | None = None  # 0..20, checked by the route (400 naming top_logprobs)


class FeedbackRequest(BaseModel):
    """expertkit's `POST /v1/feedback`: a thumbs up (1) or down (-1), or 0 to take it back, and/or what the answer
    should have said, on an answer named by its completion id (and choice `index`) or its stored message id."""

    model_config = ConfigDict(extra="forbid")
    completion_id: str | None = Field(None, min_length=1, max_length=200)
    index: int = Field(0, ge=0)
    message_id: str | None = Field(None, min_length=1, max_length=200)
    rating: Literal[-1, 0, 1] | None = None
    edited_answer: str | None = Field(None, min_length=1)
    comment: str | None = None
    rater: str | None = Field(None, min_length=1, max_length=200)  # who rates (else the API key's place: api_key#N)


class CompletionRequest(SamplingRequest):
    """`/v1/completions`: raw prompts continued as text (no chat template), `n` choices each."""

    prompt: str | list[str] | list[int] | list[list[int]] = Field(min_length=1)  # token ids: the route refuses them
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)  # legacy: the log probability of this many top tokens per token
    suffix: str | None = None
    best_of: int | None = None  # accepted when 1 or absent


class EmbeddingRequest(Lenient):
    input: str | list[str] = Field(min_length=1, max_length=2048)
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON object, as a string


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: dict | None = None  # {"content": [...]} when the request asked for logprobs
    finish_reason: Literal["stop", "length", "tool_calls"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageInfo


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict] | None = None  # each with its `index`, `id`, `type` and `function`


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: dict | None = None  # {"content": [...]} when the request asked for logprobs
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "expertkit"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


def completion_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"
