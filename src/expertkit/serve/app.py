"""`build_app(engine, config)`: the OpenAI-compatible API in front of an `Engine` (vLLM's `build_app` pattern).

    app = build_app(lambda: load_engine(config), config)   # loads in a thread: /health is 503, then 200
    uvicorn.run(app, host=config.host, port=config.port)

Routes: GET /health (no key), GET /v1/models, POST /v1/chat/completions (JSON or SSE stream).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable

from expertkit.core.errors import MissingExtraError

try:
    from fastapi import APIRouter, Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError:
    raise MissingExtraError("fastapi", "serve") from None

from expertkit.engine.base import Engine, SamplingParams
from expertkit.serve.auth import build_key_check
from expertkit.serve.config import ServeConfig
from expertkit.serve.errors import APIError, error_body, from_validation_error, parse_model, status_type
from expertkit.serve.guard import Guard
from expertkit.serve.protocol import ChatCompletionRequest, ModelCard, ModelList
from expertkit.serve.stream import chat_chunks, complete_once

logger = logging.getLogger(__name__)

EngineSource = Engine | Callable[[], Engine]


class ServerState:
    """The engine (None while loading), why loading failed, and how many requests are admitted."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.engine: Engine | None = None
        self.load_error: BaseException | None = None
        self.loaded = threading.Event()  # set when loading ended, either way
        self.active = 0
        self.unknown_fields_seen: set[str] = set()

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


RETRY = {"Retry-After": "2"}


def build_app(engine: EngineSource, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app. `engine` is an Engine, or a no-argument factory run in a thread at startup."""
    config = config or ServeConfig()
    state = ServerState(config)
    if callable(engine) and not hasattr(engine, "stream"):
        factory = engine
    else:
        state.engine, factory = engine, None
        state.loaded.set()

    async def lifespan(app: FastAPI):
        if factory is not None:
            threading.Thread(target=state.load, args=(factory,), name="expertkit-load", daemon=True).start()
        yield
        if state.engine is not None:
            await state.engine.close()

    app = FastAPI(title="expertkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    add_error_handlers(app)
    app.include_router(health_router(state))
    app.include_router(v1_router(state), dependencies=[Depends(build_key_check(config.accepted_keys()))])
    app.add_middleware(Guard, max_request_bytes=config.max_request_bytes, check_host=config.loopback)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Api-Key"],
        )
    return app


def health_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> Response:
        if state.engine is not None:
            return JSONResponse({"status": "ok"})
        if state.load_error is not None:
            return JSONResponse({"status": "error", "message": str(state.load_error)}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503, headers=RETRY)

    return router


def v1_router(state: ServerState) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/models")
    async def list_models() -> dict:
        names = await model_names(state.ready_engine())
        return ModelList(data=[ModelCard(id=n) for n in names]).model_dump()

    @router.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = parse_model(ChatCompletionRequest, await read_json(request))
        log_unknown_fields(state, req)
        engine = state.ready_engine()
        model = await pick_model(engine, req.model)
        messages = engine_messages(req)
        params = sampling_params(req, state.config.max_new_tokens)
        check_context(engine, messages, params.max_tokens)
        admit(state)
        deadline = time.monotonic() + state.config.request_timeout
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        if req.stream:
            chunks = chat_chunks(engine, messages, params, model, include_usage, deadline)
            return SSEResponse(chunks, on_close=lambda: release(state))
        try:
            body = await complete_once(engine, messages, params, model, deadline, request)
        finally:
            release(state)
        return JSONResponse(body)

    return router


class SSEResponse(StreamingResponse):
    """Server-sent events whose generator is always closed, so a client that leaves stops its generation."""

    def __init__(self, chunks: AsyncIterator[str], on_close: Callable[[], None]):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(chunks, media_type="text/event-stream", headers=headers)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                self.on_close()


def admit(state: ServerState) -> None:
    """Count the request in, or refuse it when max_queue requests already wait beyond max_concurrency."""
    capacity = state.config.max_concurrency + state.config.max_queue
    if state.active >= capacity:
        raise APIError(
            429,
            f"the server is busy: {state.active} requests are running or queued (max_concurrency "
            f"{state.config.max_concurrency} + max_queue {state.config.max_queue}); retry shortly",
            type="rate_limit_error",
            code="queue_full",
            headers=RETRY,
        )
    state.active += 1


def release(state: ServerState) -> None:
    state.active -= 1


async def read_json(request: Request):
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


def log_unknown_fields(state: ServerState, req: ChatCompletionRequest) -> None:
    for name in sorted(req.model_extra or {}):
        if name not in state.unknown_fields_seen and len(state.unknown_fields_seen) < 1000:
            state.unknown_fields_seen.add(name)
            logger.warning("ignoring request field %r (not supported; logged once)", name[:100])


async def model_names(engine: Engine) -> list[str]:
    names = engine.model_names()
    if not names and hasattr(engine, "refresh_models"):
        names = await engine.refresh_models()
    return names


async def pick_model(engine: Engine, asked: str | None) -> str:
    names = await model_names(engine)
    if not asked:
        return names[0] if names else ""
    if asked not in names:
        raise APIError(
            404,
            f"the model '{asked[:200]}' is not served here; models: {', '.join(names)}",
            type="not_found_error",
            param="model",
            code="model_not_found",
        )
    return asked


def engine_messages(req: ChatCompletionRequest) -> list[dict]:
    """Protocol messages -> the engine's {role, content} dicts: text parts joined, developer read as system."""
    out = []
    for i, m in enumerate(req.messages):
        content = m.content
        if isinstance(content, list):
            bad = [p.type for p in content if p.type != "text" or p.text is None]
            if bad:
                raise APIError(
                    400,
                    f"content part type '{bad[0][:50]}' is not supported; only text parts",
                    param=f"messages[{i}].content",
                    code="unsupported_content",
                )
            content = "".join(p.text or "" for p in content)
        message = {"role": "system" if m.role == "developer" else m.role, "content": content or ""}
        if m.reasoning_content:
            message["reasoning_content"] = m.reasoning_content
        out.append(message)
    return out


def sampling_params(req: ChatCompletionRequest, default_max_tokens: int) -> SamplingParams:
    if req.n != 1:
        raise APIError(400, f"n={req.n} is not supported: only n=1 for now", param="n", code="unsupported_value")
    stop = req.stop_list()
    if len(stop) > 16:
        raise APIError(400, f"at most 16 stop strings, got {len(stop)}", param="stop", code="invalid_value")
    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    return SamplingParams(
        temperature=0.0 if top_p == 0 else temperature,
        top_p=top_p or 1.0,
        max_tokens=req.max_completion_tokens or req.max_tokens or default_max_tokens,
        stop=stop,
        seed=req.seed,
    )


def check_context(engine: Engine, messages: list[dict], max_tokens: int) -> None:
    """400 when prompt + max_tokens would not fit the model's context (when the engine can tell); never truncate."""
    limit = getattr(engine, "context_length", None)
    if limit is None:
        limit = getattr(getattr(getattr(engine, "model", None), "config", None), "max_position_embeddings", None)
    if not isinstance(limit, int):
        return
    if max_tokens > limit:
        raise APIError(
            400,
            f"max_tokens {max_tokens} is more than the model's context of {limit} tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    count = getattr(engine, "prompt_ids", None)
    if count is None:
        return
    try:
        prompt = len(count(messages))
    except Exception as e:
        if type(e).__module__.startswith("jinja2"):  # the chat template refused the conversation
            raise APIError(400, f"the chat template refused the messages: {e}", param="messages") from None
        raise
    if prompt + max_tokens > limit:
        raise APIError(
            400,
            f"the prompt is {prompt} tokens and max_tokens is {max_tokens}: {prompt + max_tokens} is more than the "
            f"model's context of {limit} tokens; shorten the messages or lower max_tokens",
            param="messages",
            code="context_length_exceeded",
        )


def add_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = error_body(str(exc.detail), status_type(exc.status_code), code=None)
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = from_validation_error(list(exc.errors()))  # FastAPI's 422 is OpenAI's 400
        return JSONResponse(err.body(), status_code=400)

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
