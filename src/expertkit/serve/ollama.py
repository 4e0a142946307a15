"""Ollama's API, for Ollama clients (ollama-python, ollama-js, Open WebUI, LangChain's ChatOllama ...).

    POST /api/chat      {"model", "messages", "stream": true, "options": {...}}   NDJSON lines, or one JSON
    POST /api/generate  {"model", "prompt", "system", "raw", "stream", "options"}  `raw`: no chat template
    POST /api/embed     {"model", "input": "text" | ["text", ...]}               {"embeddings": [[...], ...]}
    GET  /api/tags, POST /api/show, GET /api/version, GET|HEAD /  ("Ollama is running")

A streamed answer is one JSON object per line, as Ollama sends it:

    {"model": "sail", "created_at": "...", "message": {"role": "assistant", "content": "I am"}, "done": false}
    {"model": "sail", ..., "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "stop",
     "total_duration": 81000000, "prompt_eval_count": 12, "eval_count": 9, ...}                 (durations in ns)

Errors are Ollama's `{"error": "..."}` (app.py renders every error under /api that way).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import datetime, timezone

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import Field

from expertkit.engine.base import Delta, Engine, SamplingParams
from expertkit.serve.errors import APIError, parse_model
from expertkit.serve.models import Route
from expertkit.serve.openai_routes import SSEResponse, embed, text_engine
from expertkit.serve.protocol import Lenient, completion_id
from expertkit.serve.state import ServerState, check_context, context_length, read_json
from expertkit.serve.stream import finish_reason, run_whole, within_deadline

OLLAMA_API_VERSION = "0.9.0"  # the Ollama release whose API this mirrors (clients compare it for features)


class OllamaOptions(Lenient):
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    num_predict: int | None = None  # -1: as long as the server allows (max_new_tokens)
    stop: str | list[str] | None = None
    seed: int | None = None
    repeat_penalty: float | None = Field(None, gt=0, le=10)


class OllamaMessage(Lenient):
    role: str
    content: str = ""
    thinking: str | None = None
    images: list | None = None


class OllamaChatRequest(Lenient):
    model: str | None = None
    messages: list[OllamaMessage] = Field(default_factory=list)
    stream: bool = True
    options: OllamaOptions | None = None
    format: str | dict | None = None  # "json", or a JSON schema: the answer is JSON
    keep_alive: str | int | float | None = None
    think: bool | str | None = None


class OllamaGenerateRequest(Lenient):
    model: str | None = None
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    stream: bool = True
    options: OllamaOptions | None = None
    format: str | dict | None = None
    images: list | None = None
    keep_alive: str | int | float | None = None
    think: bool | str | None = None


class OllamaEmbedRequest(Lenient):
    model: str | None = None
    input: str | list[str] = Field(min_length=1, max_length=2048)
    truncate: bool | None = None
    keep_alive: str | int | float | None = None


class OllamaShowRequest(Lenient):
    model: str | None = None
    name: str | None = None  # older clients


def ollama_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.api_route("/", methods=["GET", "HEAD"])
    async def root() -> Response:
        return PlainTextResponse("Ollama is running")

    @router.get("/api/version")
    async def version() -> dict:
        return {"version": OLLAMA_API_VERSION}

    @router.get("/api/tags")
    async def tags() -> dict:
        engine = state.ready_engine()
        return {"models": [model_entry(engine, name, state.key_of(name)) for name in await state.listed_names()]}

    @router.post("/api/show")
    async def show(request: Request) -> dict:
        req = parse_model(OllamaShowRequest, await read_json(request))
        engine = state.ready_engine()
        route = await state.route(request, req.model or req.name)
        return show_body(engine, route.key, route.shown)

    @router.post("/api/chat")
    async def chat(request: Request) -> Response:
        req = parse_model(OllamaChatRequest, await read_json(request))
        state.log_unknown_fields(req)
        engine = state.ready_engine()
        route = await state.route(request, req.model, ollama_user(req))
        if not req.messages:  # Ollama's way to load a model: an answer with nothing in it
            return JSONResponse({**header(route.shown), "message": {"role": "assistant", "content": ""}, **loaded()})
        messages = chat_messages(req.messages)
        return await answer(state, request, req, engine, route, "chat", messages=messages)

    @router.post("/api/generate")
    async def generate(request: Request) -> Response:
        req = parse_model(OllamaGenerateRequest, await read_json(request))
        state.log_unknown_fields(req)
        engine = state.ready_engine()
        route = await state.route(request, req.model, ollama_user(req))
        if req.images:
            raise APIError(400, "images are not supported: this is a text model", param="images")
        if not req.prompt:
            return JSONResponse({**header(route.shown), "response": "", **loaded()})
        if req.raw:
            return await answer(state, request, req, text_engine(engine), route, "generate", prompt=req.prompt)
        messages = ([{"role": "system", "content": req.system}] if req.system else []) + [
            {"role": "user", "content": req.prompt}
        ]
        return await answer(state, request, req, engine, route, "generate", messages=messages)

    @router.post("/api/embed")
    async def embed_route(request: Request) -> dict:
        req = parse_model(OllamaEmbedRequest, await read_json(request))
        route = await state.route(request, req.model, ollama_user(req))
        started = time.monotonic_ns()
        vectors, tokens = await embed(state, [req.input] if isinstance(req.input, str) else req.input, route.key)
        duration = time.monotonic_ns() - started
        return {"model": route.shown, "embeddings": vectors, "total_duration": duration, "prompt_eval_count": tokens}

    return router


def chat_messages(messages: list[OllamaMessage]) -> list[dict]:
    out = []
    for i, m in enumerate(messages):
        if m.role not in ("system", "user", "assistant", "tool"):
            raise APIError(400, f"messages[{i}].role '{m.role[:50]}' is not system, user, assistant or tool")
        if m.images:
            raise APIError(400, f"messages[{i}].images: images are not supported, this is a text model")
        message = {"role": m.role, "content": m.content}
        if m.thinking:
            message["reasoning_content"] = m.thinking
        out.append(message)
    return out


def sampling_params(options: OllamaOptions | None, default_max_tokens: int, format=None) -> SamplingParams:
    """Ollama's options, with Ollama's defaults (temperature 0.8, top_k 40, top_p 0.9) where a request says none,
    and its `format`."""
    o = options or OllamaOptions()
    stop = [o.stop] if isinstance(o.stop, str) else list(o.stop or [])
    if len(stop) > 16:
        raise APIError(400, f"options.stop: at most 16 stop strings, got {len(stop)}")
    top_p = 0.9 if o.top_p is None else o.top_p
    return SamplingParams(
        temperature=0.0 if top_p == 0 else (0.8 if o.temperature is None else o.temperature),
        top_p=top_p or 1.0,
        top_k=40 if o.top_k is None else o.top_k,
        max_tokens=o.num_predict if o.num_predict and o.num_predict > 0 else default_max_tokens,
        stop=stop,
        seed=o.seed,
        repetition_penalty=o.repeat_penalty or 1.0,
        response_format=response_format(format),
    )


def response_format(format: str | dict | None) -> dict | None:
    """Ollama's `format` as OpenAI's response_format: "json" is json_object, an object is a JSON schema."""
    if format is None or format == "":
        return None
    if format == "json":
        return {"type": "json_object"}
    if isinstance(format, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": format}}
    raise APIError(400, f"format '{format[:50]}' is not supported: give \"json\" or a JSON schema object")


def ollama_user(req) -> str | None:
    """A `user` an Ollama request may carry (not Ollama's own field): it keeps the user on one A/B arm."""
    user = (req.model_extra or {}).get("user")
    return user if isinstance(user, str) else None


async def answer(state: ServerState, request, req, engine: Engine, route: Route, kind: str, **prompt) -> Response:
    """One /api/chat or /api/generate answer: NDJSON lines (stream, Ollama's default) or one JSON object; recorded
    with store_conversations."""
    params = sampling_params(req.options, state.config.max_new_tokens, req.format)
    asked = bool(req.options and req.options.num_predict and req.options.num_predict > 0)
    params.max_tokens = check_context(engine, route.key, params.max_tokens, asked=asked, **prompt)
    state.admit()
    timer = Timer()
    deltas = state.generate(engine, params, route.key, **prompt)
    if state.conversations is not None:
        options = req.options.model_dump(exclude_none=True) if req.options else {}
        turns = prompt.get("messages") or [{"role": "user", "content": prompt.get("prompt", "")}]
        options = options if "messages" in prompt else {**options, "raw_prompt": True}
        deltas = state.conversations.recorded(deltas, turns, route, completion_id("ollama"), 0, options, None)
    deltas = timer.watch(deltas)
    model = route.shown
    deadline = time.monotonic() + state.config.request_timeout
    if req.stream:
        lines = ndjson_lines(deltas, kind, model, deadline, timer, state)
        return SSEResponse(lines, on_close=state.release, media_type="application/x-ndjson")
    try:
        out = await run_whole(deltas, deadline, request)
    finally:
        state.release()
    return JSONResponse({**piece(kind, model, out), **done(out, timer)})


async def ndjson_lines(
    deltas: AsyncIterator[Delta], kind: str, model: str, deadline: float, timer: Timer, state: ServerState
) -> AsyncIterator[str]:
    try:
        async with aclosing(within_deadline(deltas, deadline)) as stream:
            async for d in stream:
                if d.finish_reason is None:
                    yield json.dumps(piece(kind, model, d), ensure_ascii=False) + "\n"
                else:
                    yield json.dumps({**piece(kind, model, d), **done(d, timer)}, ensure_ascii=False) + "\n"
    except APIError as err:
        state.metrics.count_error(err.type, err.status)
        yield json.dumps({"error": err.message}) + "\n"


def piece(kind: str, model: str, d: Delta) -> dict:
    if kind == "chat":
        message = {"role": "assistant", "content": d.text}
        if d.reasoning:
            message["thinking"] = d.reasoning
        return {**header(model), "message": message, "done": False}
    out = {**header(model), "response": d.text, "done": False}
    if d.reasoning:
        out["thinking"] = d.reasoning
    return out


def done(d: Delta, timer: Timer) -> dict:
    """The closing fields of an answer: why it stopped, token counts and durations (ns)."""
    now = time.monotonic_ns()
    first = timer.first_ns or now
    return {
        "done": True,
        "done_reason": finish_reason(d),
        "total_duration": now - timer.start_ns,
        "load_duration": 0,
        "prompt_eval_count": d.usage.prompt_tokens if d.usage else 0,
        "prompt_eval_duration": first - timer.start_ns,
        "eval_count": d.usage.completion_tokens if d.usage else 0,
        "eval_duration": now - first,
    }


def header(model: str) -> dict:
    return {"model": model, "created_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")}


def loaded() -> dict:
    return {"done": True, "done_reason": "load"}


class Timer:
    """When a request started and when its first text came (Ollama reports prompt and eval durations apart)."""

    def __init__(self):
        self.start_ns = time.monotonic_ns()
        self.first_ns: int | None = None

    async def watch(self, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
        async with aclosing(deltas):
            async for d in deltas:
                if self.first_ns is None and (d.text or d.reasoning):
                    self.first_ns = time.monotonic_ns()
                yield d


def model_details(engine: Engine, name: str) -> dict:
    config = model_config(engine, name)
    family = getattr(config, "model_type", None) or "unknown"
    return {
        "parent_model": "",
        "format": "safetensors" if config is not None else "remote",
        "family": family,
        "families": [family],
        "parameter_size": parameter_size(engine, name),
        "quantization_level": str(getattr(config, "torch_dtype", None) or getattr(config, "dtype", "") or ""),
    }


def model_entry(engine: Engine, name: str, key: str | None = None) -> dict:
    """/api/tags' entry for `name` (`key`: the engine's name for what it serves, when it differs: an alias)."""
    now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    return {
        "name": name,
        "model": name,
        "modified_at": now,
        "size": 0,
        "digest": "",
        "details": model_details(engine, key or name),
    }


def show_body(engine: Engine, name: str, shown: str | None = None) -> dict:
    config = model_config(engine, name)
    family = getattr(config, "model_type", None) or "unknown"
    info: dict = {"general.architecture": family}
    limit = context_length(engine, name)
    if limit:
        info[f"{family}.context_length"] = limit
    if getattr(config, "hidden_size", None):
        info[f"{family}.embedding_length"] = config.hidden_size
    served = engine.pick(name) if hasattr(engine, "pick") else engine
    template = getattr(getattr(served, "tokenizer", None), "chat_template", None)
    capabilities = ["completion"] + (["embedding"] if config is not None else [])
    return {
        "modelfile": f"# served by expertkit: {shown or name}\n",
        "parameters": "",
        "template": template if isinstance(template, str) else "",
        "details": model_details(engine, name),
        "model_info": info,
        "capabilities": capabilities,
        "modified_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
    }


def model_config(engine: Engine, name: str):
    served = engine.pick(name) if hasattr(engine, "pick") else engine
    return getattr(getattr(served, "model", None), "config", None)


def parameter_size(engine: Engine, name: str) -> str:
    served = engine.pick(name) if hasattr(engine, "pick") else engine
    model = getattr(served, "model", None)
    if model is None or not hasattr(model, "parameters"):
        return ""
    n = sum(p.numel() for p in model.parameters())
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
