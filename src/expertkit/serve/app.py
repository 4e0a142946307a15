"""`build_app(engine, config)`: the HTTP API in front of an `Engine` (vLLM's `build_app` pattern: a router each).

    app = build_app(lambda: load_engine(config), config)   # loads in a thread: /health is 503, then 200
    uvicorn.run(app, host=config.host, port=config.port)

Routes: GET /health (no key); OpenAI's /v1 (openai_routes.py) and our POST /v1/feedback (conversations.py);
Ollama's /api and / (ollama.py); GET /metrics (Prometheus, metrics.py); GET /generate?prompt=... (the FastAPI
tutorial's). Every route but /health needs a key when keys are configured.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from expertkit.core.optional import import_optional

try:
    from fastapi import APIRouter, Depends, FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError:
    import_optional("fastapi", "fastapi", "serve")  # fails again, saying whether fastapi is absent or broken
    raise

import asyncio
import functools
import threading

from expertkit.engine.base import Engine, SamplingParams
from expertkit.serve.auth import build_key_check
from expertkit.serve.config import ServeConfig
from expertkit.serve.conversations import feedback_router
from expertkit.serve.errors import APIError, from_validation_error, status_type
from expertkit.serve.guard import Guard
from expertkit.serve.models import ReleaseLeases, admin_router
from expertkit.serve.ollama import ollama_router
from expertkit.serve.openai_routes import v1_router
from expertkit.serve.state import RETRY, ServerState, check_context
from expertkit.serve.stream import KeepAlive, run_whole

EngineSource = Engine | Callable[[], Engine]


def build_app(engine: EngineSource | None, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app. `engine` is an Engine, or a no-argument factory run in a thread at startup. With
    `config.models`: None (the local engine) or an engine class taking (config, served=) like LocalEngine, loaded
    with the models file's entries (serve/models.py)."""
    config = config or ServeConfig()
    state = ServerState(config)
    if state.models is not None:
        factory = functools.partial(state.models.load_engine, engine)
    elif callable(engine) and not hasattr(engine, "stream"):
        factory = engine
    else:
        state.engine, factory = engine, None
        state.loaded.set()

    async def lifespan(app: FastAPI):
        if factory is not None:
            threading.Thread(target=state.load, args=(factory,), name="expertkit-load", daemon=True).start()
        watcher = asyncio.ensure_future(state.models.watch()) if state.models is not None else None
        yield
        if watcher is not None:
            watcher.cancel()
        if state.engine is not None:
            await state.engine.close()
        if state.conversations is not None:
            state.conversations.close()

    app = FastAPI(title="expertkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    add_error_handlers(app)
    keyed = [Depends(build_key_check(config.accepted_keys()))]
    app.include_router(health_router(state))
    app.include_router(v1_router(state), dependencies=keyed)
    app.include_router(feedback_router(state.conversations), dependencies=keyed)
    app.include_router(ollama_router(state), dependencies=keyed)
    app.include_router(plain_router(state), dependencies=keyed)
    app.include_router(admin_router(state), dependencies=keyed)
    app.add_middleware(KeepAlive, interval=config.keepalive_s)
    app.add_middleware(ReleaseLeases)
    app.add_middleware(
        Guard,
        max_request_bytes=config.max_request_bytes,
        check_host=config.loopback,
        on_error=state.metrics.count_error,
    )
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
            body = {"status": "ok"}
            if state.models is not None:  # a refused reload's error shows here while the old mapping serves
                body["models_file"] = state.models.health()
            return JSONResponse(body)
        if state.load_error is not None:
            return JSONResponse({"status": "error", "message": str(state.load_error)}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503, headers=RETRY)

    return router


def plain_router(state: ServerState) -> APIRouter:
    """/metrics, and GET /generate?prompt=... as the usual FastAPI tutorial serves a model (its answer as JSON)."""
    router = APIRouter()

    @router.get("/metrics")
    async def metrics() -> Response:
        text = state.metrics.render(state.active, state.config.max_concurrency)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @router.get("/generate")
    async def generate(
        request: Request,
        prompt: str = Query(min_length=1, max_length=100_000),
        max_tokens: int | None = Query(None, ge=1),
        temperature: float = Query(0.0, ge=0, le=2),
        model: str | None = None,
    ) -> dict:
        engine = state.ready_engine()
        name = (await state.route(request, model)).key
        messages = [{"role": "user", "content": prompt}]
        params = SamplingParams(temperature=temperature, max_tokens=max_tokens or state.config.max_new_tokens)
        params.max_tokens = check_context(engine, name, params.max_tokens, messages=messages, asked=bool(max_tokens))
        state.admit()
        try:
            deadline = time.monotonic() + state.config.request_timeout
            out = await run_whole(state.generate(engine, params, name, messages=messages), deadline, request)
        finally:
            state.release()
        return {"response": out.text}

    return router


def ollama_path(path: str) -> bool:
    return path == "/" or path.startswith("/api/")


def add_error_handlers(app: FastAPI) -> None:
    """OpenAI's error body everywhere, but Ollama's `{"error": "..."}` under /api (what Ollama clients read)."""

    def render(request: Request, err: APIError) -> JSONResponse:
        body = {"error": err.message} if ollama_path(request.url.path) else err.body()
        return JSONResponse(body, status_code=err.status, headers=err.headers)

    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return render(request, exc)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = APIError(exc.status_code, str(exc.detail), status_type(exc.status_code))
        err.headers = getattr(exc, "headers", None) or {}
        return render(request, err)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return render(request, from_validation_error(list(exc.errors())))  # FastAPI's 422 is OpenAI's 400

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
