"""What every route shares: the engine (None while it loads), admission against the queue limit, the request body
as JSON, the model a request names, and the context-length check."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable

from expertkit.engine.base import Delta, Engine, SamplingParams
from expertkit.serve.config import ServeConfig
from expertkit.serve.errors import APIError
from expertkit.serve.grounding import Grounding
from expertkit.serve.metrics import Metrics
from expertkit.serve.models import Route, ServedModels, sticky_key

logger = logging.getLogger(__name__)

RETRY = {"Retry-After": "2"}


class ServerState:
    """The engine (None while loading), why loading failed, how many requests are admitted, and the metrics."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.engine: Engine | None = None
        self.load_error: BaseException | None = None
        self.loaded = threading.Event()  # set when loading ended, either way
        self.active = 0
        self.unknown_fields_seen: set[str] = set()
        self.metrics = Metrics()
        self.embed_lock = asyncio.Lock()
        self.grounding = Grounding(config)
        self.conversations = None  # the feedback store, with store_conversations
        self.models = ServedModels(config.models, config) if config.models else None  # with models=FILE
        if config.store_conversations:
            from expertkit.serve.conversations import ConversationLog  # it reads request bodies with read_json below

            self.conversations = ConversationLog(config)

    def load(self, factory: Callable[[], Engine]) -> None:
        try:
            self.engine = factory()
            names = ", ".join(self.engine.model_names()) or "(asked of the remote on first use)"
            logger.info("model ready: %s", names)
        except BaseException as e:  # noqa: BLE001 - reported by /health and the CLI
            self.load_error = e
            logger.error("loading the model failed: %s", e)
        finally:
            self.loaded.set()

    def ready_engine(self) -> Engine:
        if self.engine is not None:
            return self.engine
        if self.load_error is not None:
            raise APIError(503, f"the model failed to load: {self.load_error}", code="model_load_failed")
        raise APIError(503, "the model is still loading; retry shortly", code="model_loading", headers=RETRY)

    async def route(self, request, asked: str | None, user: str | None = None) -> Route:
        """Where a request for `asked` goes (a 404 for a name not served). With a models file: an alias's A/B arm
        (sticky by `user`, the API key or the sticky header), leased until the response ends so a reload does not
        take it away mid-answer."""
        engine = self.ready_engine()
        if self.models is None:
            name = await pick_model(engine, asked)
            return Route(key=name, shown=name, alias=name if asked else None, arm=name)
        route = self.models.route(asked, sticky_key(request, user, self.models.mapping.sticky_header))
        self.models.acquire(route.key, request.scope)
        return route

    async def listed_names(self) -> list[str]:
        """What /v1/models and /api/tags list: the served names, then a models file's aliases."""
        engine = self.ready_engine()
        return self.models.mapping.listed() if self.models is not None else await model_names(engine)

    def key_of(self, name: str) -> str:
        """The engine's key for a listed name (an alias: its first arm)."""
        if self.models is None:
            return name
        m = self.models.mapping
        return m.keys[next(iter(m.aliases[name]))] if name in m.aliases else m.keys[name]

    def admit(self) -> None:
        """Count the request in, or refuse it when max_queue requests already wait beyond max_concurrency."""
        capacity = self.config.max_concurrency + self.config.max_queue
        if self.active >= capacity:
            self.metrics.rejected += 1
            raise APIError(
                429,
                f"the server is busy: {self.active} requests are running or queued (max_concurrency "
                f"{self.config.max_concurrency} + max_queue {self.config.max_queue}); retry shortly",
                type="rate_limit_error",
                code="queue_full",
                headers=RETRY,
            )
        self.active += 1

    def release(self) -> None:
        self.active -= 1

    def generate(
        self,
        engine: Engine,
        params: SamplingParams,
        model: str,
        messages: list[dict] | None = None,
        prompt=None,
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = None,
    ) -> AsyncIterator[Delta]:
        """The engine's deltas for a conversation (chat template, with `tools` when given) or a raw prompt, counted by
        /metrics. `tool_choice`: for a remote engine only, which forwards it."""
        if prompt is not None:
            deltas = engine.stream_text(prompt, params, model)
        elif tool_choice is not None:
            deltas = engine.stream(messages, params, model, tools=tools, tool_choice=tool_choice)
        elif tools:
            deltas = engine.stream(messages, params, model, tools=tools)
        else:
            deltas = engine.stream(messages, params, model)
        return self.metrics.observe(deltas)

    def log_unknown_fields(self, req) -> None:
        for name in sorted(req.model_extra or {}):
            if name not in self.unknown_fields_seen and len(self.unknown_fields_seen) < 1000:
                self.unknown_fields_seen.add(name)
                logger.warning("ignoring request field %r (not supported; logged once)", name[:100])


async def read_json(request):
    """The body as JSON whatever the Content-Type says (curl -d sends form-urlencoded), or a 400."""
    raw = await request.body()
    if not raw.strip():
        raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        return json.loads(raw, parse_constant=reject_constant)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise APIError(400, f"the request body is not valid JSON: {str(e)[:200]}", code="invalid_json") from None


def reject_constant(name: str):
    raise ValueError(f"{name} is not allowed in JSON")


async def model_names(engine: Engine) -> list[str]:
    names = engine.model_names()
    if not names and hasattr(engine, "refresh_models"):
        names = await engine.refresh_models()
    return names


async def pick_model(engine: Engine, asked: str | None) -> str:
    """The served name a request asks for (none: the default), or a 404 listing what is served."""
    names = await model_names(engine)
    if not asked:
        return names[0] if names else ""
    if asked not in names and asked.endswith(":latest") and asked.removesuffix(":latest") in names:
        return asked.removesuffix(":latest")  # Ollama clients add the tag
    if asked not in names:
        raise APIError(
            404,
            f"the model '{asked[:200]}' is not served here; models: {', '.join(names)}",
            type="not_found_error",
            param="model",
            code="model_not_found",
        )
    return asked


def context_length(engine: Engine, model: str | None) -> int | None:
    """The model's context in tokens, when the engine can tell (a method, an attribute, or the model config)."""
    limit = getattr(engine, "context_length", None)
    if callable(limit):
        limit = limit(model)
    if limit is None:
        limit = getattr(getattr(getattr(engine, "model", None), "config", None), "max_position_embeddings", None)
    return limit if isinstance(limit, int) else None


def check_context(
    engine: Engine,
    model: str,
    max_tokens: int,
    messages: list[dict] | None = None,
    prompt=None,
    tools=None,
    asked: bool = True,
) -> int:
    """The answer length to use: 400 when prompt + max_tokens would not fit the model's context (when the engine can
    tell); never truncate the prompt. A length the client did not ask for (`asked` False: the server's
    max_new_tokens) is lowered to what the context leaves instead, as OpenAI does without max_tokens."""
    limit = context_length(engine, model)
    if limit is None:
        return max_tokens
    if max_tokens > limit and asked:
        raise APIError(
            400,
            f"max_tokens {max_tokens} is more than the model's context of {limit} tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    count = prompt_tokens(engine, model, messages, prompt, tools)
    if count is None:
        return min(max_tokens, limit)
    what = "messages" if prompt is None else "prompt"
    if not asked:
        if count < limit:
            return min(max_tokens, limit - count)
        raise APIError(
            400,
            f"the {what} is {count} tokens: the model's context is {limit} tokens, with room for the answer; "
            f"shorten the {what}",
            param=what,
            code="context_length_exceeded",
        )
    if count + max_tokens > limit:
        raise APIError(
            400,
            f"the {what} is {count} tokens and max_tokens is {max_tokens}: {count + max_tokens} is more than the "
            f"model's context of {limit} tokens; shorten the {what} or lower max_tokens",
            param=what,
            code="context_length_exceeded",
        )
    return max_tokens


def prompt_tokens(
    engine: Engine, model: str, messages: list[dict] | None, prompt: str | None, tools: list[dict] | None = None
) -> int | None:
    if prompt is not None:
        count = getattr(engine, "count_text_tokens", None)
        return count(prompt, model) if count else None
    try:
        if hasattr(engine, "count_prompt_tokens"):
            if tools:
                return engine.count_prompt_tokens(messages, model, tools=tools)
            return engine.count_prompt_tokens(messages, model)
        if hasattr(engine, "prompt_ids"):
            return len(engine.prompt_ids(messages, tools=tools) if tools else engine.prompt_ids(messages))
        return None
    except Exception as e:
        if type(e).__module__.startswith("jinja2"):  # the chat template refused the conversation
            raise APIError(400, f"the chat template refused the messages: {e}", param="messages") from None
        raise
