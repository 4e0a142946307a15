"""OpenAI's `/v1`: models, chat completions, text completions (a raw prompt, no chat template) and embeddings."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import struct
import time
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from expertkit.engine.base import MAX_TOP_LOGPROBS, Engine, SamplingParams
from expertkit.serve.conversations import request_options
from expertkit.serve.errors import APIError, parse_model
from expertkit.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    SamplingRequest,
    completion_id,
)
from expertkit.serve.state import ServerState, check_context, context_length, read_json
from expertkit.serve.stream import (
    chat_chunks,
    chat_completion_body,
    completion_chunks,
    run_all,
    text_completion_body,
)
from expertkit.serve.tools import forced_call, forced_deltas, forced_prompt, writes_tool_calls


def v1_router(state: ServerState) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/models")
    async def list_models() -> dict:
        names = await state.listed_names()
        return ModelList(data=[ModelCard(id=n) for n in names]).model_dump()

    @router.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = parse_model(ChatCompletionRequest, await read_json(request))
        state.log_unknown_fields(req)
        engine = state.ready_engine()
        route = await state.route(request, req.model, req.user)
        model = route.key
        messages = asked = engine_messages(req)
        sources = grounded = None
        if req.retrieval:
            messages, sources = await state.grounding.apply(messages, req.retrieval)
            sources = [s.to_json() for s in sources]
            grounded = {"system": messages[0]["content"], "user": messages[-1]["content"]}  # stored for export
        tools = request_tools(req)
        call, forward = forced_call(req.tool_choice, tools), None
        if call is not None and forwards_tool_choice(engine):
            call, forward = None, req.tool_choice  # the remote enforces it
        params = sampling_params(req, state.config.max_new_tokens, max_n=MAX_N)
        params.logprobs, params.top_logprobs = request_logprobs(req)
        params.max_tokens = check_context(
            engine, model, params.max_tokens, messages=messages, tools=tools, asked=asked_max_tokens(req)
        )
        prompt = None
        if call is not None:  # the model continues the call's start with one JSON object; stop strings would cut it
            prompt = forced_prompt(forcing_tokenizer(engine, model), messages, tools, call)
            max_tokens = check_context(engine, model, params.max_tokens, prompt=prompt, asked=asked_max_tokens(req))
            params = dataclasses.replace(params, max_tokens=max_tokens, stop=[], response_format=call.response_format())
        state.admit()
        deadline = time.monotonic() + state.config.request_timeout
        cid, parse = completion_id(), bool(tools)
        if call is not None:
            streams = [
                forced_deltas(state.generate(engine, choice_params(params, i), model, prompt=prompt), call)
                for i in range(req.n)
            ]
        else:
            streams = [
                state.generate(
                    engine, choice_params(params, i), model, messages=messages, tools=tools, tool_choice=forward
                )
                for i in range(req.n)
            ]
        if state.conversations is not None:  # store_conversations: the question as asked, not the grounded prompt
            options = request_options(req)
            streams = [
                state.conversations.recorded(s, asked, route, cid, i, options, sources, grounded)
                for i, s in enumerate(streams)
            ]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            chunks = chat_chunks(
                streams, cid, route.shown, include_usage, deadline, state.metrics, tools=parse, sources=sources
            )
            return SSEResponse(chunks, on_close=state.release)
        try:
            outs = await run_all(streams, deadline, request)
        finally:
            state.release()
        return JSONResponse(
            chat_completion_body(outs, cid, int(time.time()), route.shown, tools=parse, sources=sources)
        )

    @router.post("/completions")
    async def completions(request: Request) -> Response:
        req = parse_model(CompletionRequest, await read_json(request))
        state.log_unknown_fields(req)
        prompts = completion_prompts(req)
        engine = text_engine(state.ready_engine())
        route = await state.route(request, req.model, req.user)
        model = route.key
        params = sampling_params(req, state.config.max_new_tokens, max_n=MAX_N)
        check_choices(len(prompts), req.n)
        params.logprobs, params.top_logprobs = req.logprobs is not None, req.logprobs or 0
        fitted = fit_prompts(engine, model, params, prompts, asked_max_tokens(req), named=isinstance(req.prompt, list))
        state.admit()  # once for the request, as chat's n choices: its generations are batched together
        deadline = time.monotonic() + state.config.request_timeout
        cid = completion_id("cmpl")
        # choice prompt_index * n + j; choice j of each prompt samples as choice j of that prompt sent alone
        streams = [
            state.generate(engine, choice_params(p, j), model, prompt=prompt)
            for prompt, p in zip(prompts, fitted)
            for j in range(req.n)
        ]
        echoes = [prompt if req.echo else "" for prompt in prompts for _ in range(req.n)]
        if state.conversations is not None:  # store_conversations: each prompt as the user turn, marked raw
            options = {**request_options(req), "raw_prompt": True}
            asked = [[{"role": "user", "content": prompt}] for prompt in prompts for _ in range(req.n)]
            streams = [
                state.conversations.recorded(s, asked[i], route, cid, i, options, None) for i, s in enumerate(streams)
            ]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            chunks = completion_chunks(streams, cid, route.shown, include_usage, deadline, state.metrics, echoes, req.n)
            return SSEResponse(chunks, on_close=state.release)
        try:
            outs = await run_all(streams, deadline, request)
        finally:
            state.release()
        return JSONResponse(text_completion_body(echoes, outs, cid, int(time.time()), route.shown, req.n))

    @router.post("/embeddings")
    async def embeddings(request: Request) -> Response:
        req = parse_model(EmbeddingRequest, await read_json(request))
        state.log_unknown_fields(req)
        texts = [req.input] if isinstance(req.input, str) else req.input
        route = await state.route(request, req.model, req.user)
        vectors, tokens = await embed(state, texts, route.key)
        if req.dimensions is not None and req.dimensions != len(vectors[0]):
            raise APIError(
                400,
                f"dimensions={req.dimensions}: this model's embeddings have {len(vectors[0])} dimensions",
                param="dimensions",
                code="invalid_value",
            )
        encode = base64_floats if req.encoding_format == "base64" else (lambda v: v)
        data = [{"object": "embedding", "embedding": encode(v), "index": i} for i, v in enumerate(vectors)]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": route.shown, "usage": usage})

    return router


class SSEResponse(StreamingResponse):
    """Server-sent events whose generator is always closed, so a client that leaves stops its generation."""

    def __init__(self, chunks: AsyncIterator[str], on_close: Callable[[], None], media_type="text/event-stream"):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(chunks, media_type=media_type, headers=headers)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                self.on_close()


def engine_messages(req) -> list[dict]:
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
        if m.tool_calls:
            message["tool_calls"] = m.tool_calls
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        if m.name is not None and m.role == "tool":
            message["name"] = m.name
        out.append(message)
    return out


def request_tools(req: ChatCompletionRequest) -> list[dict] | None:
    """The function tools for the chat template, or None (none given, or tool_choice "none" hides them)."""
    if not req.tools or req.tool_choice == "none":
        return None
    return [t.model_dump(exclude_none=True) for t in req.tools]


def forwards_tool_choice(engine: Engine) -> bool:
    """engine=openai: `tool_choice` goes to the remote as it is (it enforces it, or refuses it)."""
    from expertkit.engine.remote import RemoteEngine

    return isinstance(engine, RemoteEngine)


def forcing_tokenizer(engine: Engine, model: str):
    """The served model's chat tokenizer, when the engine can continue a forced tool call (raw text in JSON mode) and
    its chat template writes `<tool_call>` blocks; else a 400 on tool_choice."""
    served = engine.pick(model) if hasattr(engine, "pick") else engine
    tokenizer = getattr(served, "tokenizer", None)
    if hasattr(engine, "stream_text") and tokenizer is not None and writes_tool_calls(tokenizer):
        return tokenizer
    raise APIError(
        400,
        'tool_choice "required" or a named function is enforced for chat templates that write Hermes/Qwen-style '
        "<tool_call> blocks (Qwen2.5, Qwen3, Hermes), on engine=transformers or vllm (engine=openai forwards it to "
        'the remote); this model\'s template does not write them: send tool_choice "auto" or leave it out',
        param="tool_choice",
        code="unsupported_value",
    )


def request_logprobs(req: ChatCompletionRequest) -> tuple[bool, int]:
    """(logprobs, top_logprobs) of a chat request; top_logprobs outside 0..20 is a 400 (counted only with logprobs)."""
    top = req.top_logprobs or 0
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise APIError(
            400,
            f"top_logprobs={top} must be between 0 and {MAX_TOP_LOGPROBS}",
            param="top_logprobs",
            code="invalid_value",
        )
    return bool(req.logprobs), top if req.logprobs else 0


MAX_N = 8  # choices a request may ask for per prompt (each is a generation of its own)


def asked_max_tokens(req: SamplingRequest) -> bool:
    """Whether the client set the answer length (else the server's max_new_tokens applies, fitted to the context)."""
    return bool(getattr(req, "max_completion_tokens", None) or req.max_tokens)


def sampling_params(req: SamplingRequest, default_max_tokens: int, max_n: int = 1) -> SamplingParams:
    if req.n < 1:
        raise APIError(400, f"n={req.n} must be at least 1", param="n", code="invalid_value")
    if req.n > max_n:
        what = "only n=1 here" if max_n == 1 else f"at most {max_n}"
        raise APIError(400, f"n={req.n} is not supported: {what}", param="n", code="unsupported_value")
    stop = req.stop_list()
    if len(stop) > 16:
        raise APIError(400, f"at most 16 stop strings, got {len(stop)}", param="stop", code="invalid_value")
    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens or default_max_tokens
    return SamplingParams(
        temperature=0.0 if top_p == 0 else temperature,
        top_p=top_p or 1.0,
        top_k=max(req.top_k or 0, 0),
        max_tokens=max_tokens,
        stop=stop,
        seed=req.seed,
        repetition_penalty=req.repetition_penalty or 1.0,
        response_format=req.response_format.model_dump(exclude_none=True) if req.response_format else None,
    )


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """The sampling of choice `index`: a seed moves on by the index, so n seeded choices are not all the same."""
    if index == 0 or params.seed is None:
        return params
    return dataclasses.replace(params, seed=params.seed + index)


MAX_PROMPTS = 32  # prompts one /v1/completions request may hold (LangChain's OpenAI LLM sends 20 at a time)
MAX_CHOICES = 32  # generations one /v1/completions request may run: prompts x n


def completion_prompts(req: CompletionRequest) -> list[str]:
    """The prompts of a completion request: a string, or a list of up to MAX_PROMPTS strings, none empty."""
    if req.suffix:
        raise APIError(400, "suffix (fill-in-the-middle) is not supported", param="suffix", code="unsupported_value")
    if req.best_of not in (None, 1):
        raise APIError(400, "best_of must be 1", param="best_of", code="unsupported_value")
    if isinstance(req.prompt, str):
        if not req.prompt:
            raise APIError(400, "prompt is empty", param="prompt", code="invalid_value")
        return [req.prompt]
    if not all(isinstance(p, str) for p in req.prompt):
        raise APIError(
            400,
            "token-id prompts (lists of integers) are not supported; send the prompt as text, or a list of texts",
            param="prompt",
            code="unsupported_value",
        )
    if len(req.prompt) > MAX_PROMPTS:
        raise APIError(
            400,
            f"prompt is a list of {len(req.prompt)} strings: at most {MAX_PROMPTS} per request; split the batch",
            param="prompt",
            code="invalid_value",
        )
    for i, p in enumerate(req.prompt):
        if not p:
            raise APIError(400, f"prompt[{i}] is empty", param="prompt", code="invalid_value")
    return list(req.prompt)


def check_choices(prompts: int, n: int) -> None:
    """400 when prompts x n generations are more than one request may run (MAX_CHOICES)."""
    if prompts * n > MAX_CHOICES:
        raise APIError(
            400,
            f"{prompts} prompts x n={n} is {prompts * n} choices: at most {MAX_CHOICES} per request; send fewer "
            "prompts per request or lower n",
            param="n",
            code="unsupported_value",
        )


def fit_prompts(
    engine: Engine, model: str, params: SamplingParams, prompts: list[str], asked: bool, named: bool
) -> list[SamplingParams]:
    """Each prompt's sampling, its max_tokens checked against the context (check_context: the server's default
    length is lowered to what that prompt leaves); `named`: a prompt that does not fit is named by its index."""
    fitted = []
    for i, prompt in enumerate(prompts):
        try:
            max_tokens = check_context(engine, model, params.max_tokens, prompt=prompt, asked=asked)
        except APIError as e:
            if named and e.param == "prompt":
                raise APIError(e.status, f"prompt[{i}]: {e.message}", param="prompt", code=e.code) from None
            raise
        fitted.append(params if max_tokens == params.max_tokens else dataclasses.replace(params, max_tokens=max_tokens))
    return fitted


def text_engine(engine: Engine) -> Engine:
    if not hasattr(engine, "stream_text"):
        raise APIError(
            400,
            "this engine continues chat conversations only; use /v1/chat/completions (raw-prompt completions need "
            "the local engine, engine=transformers)",
            code="unsupported_value",
        )
    return engine


async def embed(state: ServerState, texts: list[str], model: str) -> tuple[list[list[float]], int]:
    """Vectors of `texts` from the served model, in a thread (the event loop keeps serving), and their token count."""
    engine = state.ready_engine()
    served = engine.pick(model) if hasattr(engine, "pick") else engine
    if getattr(served, "model", None) is None or getattr(served, "tokenizer", None) is None:
        raise APIError(
            400,
            "embeddings need a local model (engine=transformers); this server forwards to a remote one",
            code="unsupported_value",
        )
    from expertkit.engine.embed import embed_texts, token_ids

    limit = context_length(engine, model)
    counts = [len(token_ids(served.tokenizer, t)) for t in texts]
    for i, n in enumerate(counts):
        if limit is not None and n > limit:
            raise APIError(
                400,
                f"input[{i}] is {n} tokens: more than the model's context of {limit} tokens",
                param="input",
                code="context_length_exceeded",
            )
    state.admit()
    try:
        async with state.embed_lock:  # one batch at a time: many at once would only compete for the same device
            vectors = await asyncio.to_thread(embed_texts, served.model, served.tokenizer, texts)
    finally:
        state.release()
    return vectors, sum(counts)


def base64_floats(vector: list[float]) -> str:
    """OpenAI's encoding_format=base64: little-endian float32s (what the openai SDK asks for by default)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
