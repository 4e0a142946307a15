"""vLLM behind the `Engine` protocol (`engine=vllm`): the same API on a GPU server, adapters as vLLM LoRA modules.

    engine = load_engine(EngineConfig(engine="vllm", model_name_or_path="Qwen/Qwen2.5-7B-Instruct",
                                      adapter_name_or_path="legal=saves/legal/lora/sft"))

Written against the Python API of vLLM 0.33.0 (read from its wheel's sources; it is not run in CI, which has no
GPU: `bench/vllm_check.py` is how to check it on one); what we ask of it, as plain values, is engine/vllm_args.py:

- the V1 engine `vllm.v1.engine.async_llm.AsyncLLM` (`vllm.AsyncLLMEngine` is an alias of it), built by
  `AsyncLLM.from_engine_args(AsyncEngineArgs(model=..., enable_lora=True, max_loras=..., max_lora_rank=...))`;
- `engine.generate(prompt, sampling_params, request_id, lora_request=...)`: an async generator of `RequestOutput`s;
  with `SamplingParams(output_kind=RequestOutputKind.DELTA)` each holds only the new token ids and their logprobs,
  and the last has `finished` and `outputs[0].finish_reason` ("stop", "length", "abort");
- the prompt as token ids: `vllm.inputs.tokens_input(ids)` (an already rendered input: vLLM tokenizes nothing),
  or `TokensPrompt(prompt_token_ids=ids)` where `tokens_input` does not exist yet;
- `SamplingParams(temperature (0 = greedy), top_p, top_k (0 = off), max_tokens, seed, repetition_penalty,
  stop_token_ids, logprobs (the chosen token + that many most likely), detokenize, structured_outputs=
  StructuredOutputsParams(json_object=True | json=schema))`; before vLLM 0.10.2 the last was `guided_decoding=
  GuidedDecodingParams(...)`, used when StructuredOutputsParams is missing;
- `LoRARequest(lora_name, lora_int_id, lora_path)` (ids from 1), `await engine.abort(request_id)`,
  `engine.shutdown()`.

Who does what. vLLM schedules and batches (continuous batching, paged KV cache, prefix caching, tensor parallel)
and samples: temperature, top-p / top-k, a per-request seed, the repetition penalty, log probabilities, JSON through
its structured outputs. Everything around the tokens is ours and the same as the local engine's: the prompt is
rendered by our chat template (the tokenizer `load_chat_tokenizer` gives: an adapter's own when it saved one, and
`template`), sent as token ids, and vLLM sends token ids back (`detokenize=False`); engine/answer.py turns them into
deltas: detokenisation, stop strings (vLLM never sees them: the request is aborted at the first one), `<think>`
reasoning, usage, the finish reason, and aborting the request when its reader goes away. The answer ends at the
same end-of-answer tokens as locally (`stop_token_ids`: the generation config's and the tokenizer's).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from expertkit.core.errors import ExpertkitError
from expertkit.engine.answer import answer_deltas
from expertkit.engine.base import Delta, SamplingParams, TokenLogprob, pick_served
from expertkit.engine.config import EngineConfig
from expertkit.engine.decode import Step
from expertkit.engine.json_output import Vocabulary
from expertkit.engine.loading import RawPrompt, eos_ids, generation_eos_ids, load_chat_tokenizer, prompt_ids
from expertkit.engine.vllm_args import (
    LoraSpec,
    base_lora_source,
    compact_json,
    engine_args,
    engine_args_kwargs,
    lora_specs,
    token_logprobs,
    vllm_sampling_kwargs,
    zero_lora,
)

logger = logging.getLogger(__name__)

FINISH = {"stop": "stop", "length": "length"}  # vLLM's finish reasons that end an answer normally
INSTALL_HINT = (
    "on a Linux machine with an NVIDIA GPU: pip install vllm (it brings its own CUDA build of torch); without a GPU "
    "use engine=transformers, or run vLLM elsewhere and point engine=openai base_url=http://HOST:PORT/v1 at it"
)


def import_vllm() -> SimpleNamespace:
    """The parts of vLLM this engine uses, or an ExpertkitError that says how to get vLLM (never a traceback)."""
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")  # private by default: vLLM reports usage unless told not to
    try:
        return vllm_parts()
    except ImportError as e:
        if not vllm_installed():
            message = "engine=vllm needs vLLM, which is not installed here (it runs on a GPU machine)"
        else:
            message = f"engine=vllm: vLLM is installed but does not import ({type(e).__name__}: {e})"
        raise ExpertkitError(message, hint=INSTALL_HINT) from None
    except Exception as e:  # noqa: BLE001 - a broken install (CUDA libraries, torch version) is the user's to fix
        raise ExpertkitError(
            f"engine=vllm: vLLM is installed but does not import ({type(e).__name__}: {e})", hint=INSTALL_HINT
        ) from None


def vllm_installed() -> bool:
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def vllm_parts() -> SimpleNamespace:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import RequestOutputKind
    from vllm.sampling_params import SamplingParams as VllmSamplingParams

    try:
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as e:  # releases before the V1 engine: the V0 class has the same generate / abort
        if not (e.name or "").startswith("vllm.v1"):
            raise
        from vllm.engine.async_llm_engine import AsyncLLMEngine as AsyncLLM
    try:
        from vllm.sampling_params import StructuredOutputsParams

        structured = ("structured_outputs", StructuredOutputsParams)
    except ImportError:  # before 0.10.2
        from vllm.sampling_params import GuidedDecodingParams

        structured = ("guided_decoding", GuidedDecodingParams)
    try:
        from vllm.inputs import tokens_input

        def prompt_of(ids: list[int]):
            return tokens_input(ids)

    except ImportError:
        from vllm.inputs import TokensPrompt

        def prompt_of(ids: list[int]):
            return TokensPrompt(prompt_token_ids=ids)

    try:
        from vllm.config import StructuredOutputsConfig
    except ImportError:  # before 0.10.2
        StructuredOutputsConfig = None  # noqa: N806 - a class

    def is_cpu() -> bool:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())

    return SimpleNamespace(
        is_cpu=is_cpu,
        StructuredOutputsConfig=StructuredOutputsConfig,
        AsyncEngineArgs=AsyncEngineArgs,
        AsyncLLM=AsyncLLM,
        LoRARequest=LoRARequest,
        RequestOutputKind=RequestOutputKind,
        SamplingParams=VllmSamplingParams,
        structured=structured,
        prompt_of=prompt_of,
    )


# ---- the served names: our tokenizers and chat templates -----------------------------------------------------------


RENDERED_KEPT = 64  # prompts kept rendered per served name: more than the requests admitted at once


@dataclass
class VllmServed:
    """One name clients can ask for: its chat tokenizer, end-of-answer tokens and LoRA adapter (None: the base)."""

    name: str
    tokenizer: Any
    eos_ids: list[int]
    lora: LoraSpec | None = None
    model = None  # no local model object (the server's embeddings and model details need one)
    rendered: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def prompt_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """The conversation rendered by our chat template, as the local engine renders it.

        Rendered once per request: the server counts a prompt's tokens (its context check) and then sends it, and the
        template took 3% of the server's CPU at 16 streams when it ran twice (bench/README.md's engine=vllm
        profile), so the last RENDERED_KEPT renderings are kept, keyed by the messages and tools as JSON."""
        raw = isinstance(messages, RawPrompt)
        key = json.dumps([raw, messages, tools], ensure_ascii=False, default=str)
        ids = self.rendered.get(key)
        if ids is None:
            ids = prompt_ids(self.tokenizer, messages, tools)
            if len(self.rendered) >= RENDERED_KEPT:
                self.rendered.pop(next(iter(self.rendered)))  # the oldest
            self.rendered[key] = ids
        return list(ids)

    def text_ids(self, prompt: str) -> list[int]:
        """A raw prompt's ids (with BOS where the tokenizer adds one)."""
        return self.prompt_ids(RawPrompt(prompt))


def load_served(config: EngineConfig, specs: list[LoraSpec]) -> dict[str, VllmServed]:
    """The served names in `model_names()` order (the adapters, then the base), each with the tokenizer the local
    engine would use for it."""
    found = generation_eos_ids(config)
    served: dict[str, VllmServed] = {}
    for spec in specs:
        tokenizer = load_chat_tokenizer(config, spec.path)
        served[spec.name] = VllmServed(spec.name, tokenizer, eos_ids(found, tokenizer), spec)
    tokenizer = load_chat_tokenizer(config)
    served[config.base_name()] = VllmServed(config.base_name(), tokenizer, eos_ids(found, tokenizer))
    return served


# ---- the engine ----------------------------------------------------------------------------------------------------


class VllmEngine:
    def __init__(self, config: EngineConfig):
        self.vllm = import_vllm()  # first: without vLLM, say so before loading anything
        self.config = config
        specs = lora_specs(config.adapters())
        self.served = load_served(config, specs)
        self.loras = {s.name: self.vllm.LoRARequest(s.name, s.int_id, s.path) for s in specs}
        self.scratch: str | None = None
        if specs and self.vllm.is_cpu():  # vLLM's CPU build mixes adapters into base requests: a zero LoRA
            source = base_lora_source(specs)
            if source is None:
                logger.warning("vLLM's CPU build may apply an adapter to base requests batched with it")
            else:
                self.scratch = tempfile.mkdtemp(prefix="expertkit-vllm-")
                zero = zero_lora(source, Path(self.scratch) / "base-lora")
                self.loras[config.base_name()] = self.vllm.LoRARequest(zero.name, zero.int_id, zero.path)
                specs = [*specs, zero]
        args = engine_args(self.vllm, compact_json(self.vllm, engine_args_kwargs(config, specs)))
        try:
            self.engine = self.vllm.AsyncLLM.from_engine_args(args)
        except Exception as e:
            raise ExpertkitError(
                f"vLLM could not start {config.model_name_or_path}: {type(e).__name__}: {str(e)[:1000]}",
                hint=f"keys that change what vLLM needs: gpu_memory_utilization (now {config.gpu_memory_utilization}), "
                f"max_model_len, max_concurrency, tensor_parallel_size, dtype",
            ) from e
        model_config = getattr(self.engine, "model_config", None)
        self.max_model_len = int(getattr(model_config, "max_model_len", 0) or 0) or config.max_model_len

    @property
    def tokenizer(self):
        return self.pick().tokenizer

    def model_names(self) -> list[str]:
        return list(self.served)

    def pick(self, model: str | None = None) -> VllmServed:
        """The served name a request's `model` asks for (None or "": the default), or UnknownModelError."""
        return pick_served(self.served, model)

    def prompt_ids(self, messages: list[dict], model: str | None = None, tools: list[dict] | None = None) -> list[int]:
        return self.pick(model).prompt_ids(messages, tools)

    def count_prompt_tokens(
        self, messages: list[dict], model: str | None = None, tools: list[dict] | None = None
    ) -> int:
        return len(self.prompt_ids(messages, model, tools))

    def context_length(self, model: str | None = None) -> int | None:
        """vLLM's max_model_len: the model's context, or less when `max_model_len` says so."""
        self.pick(model)
        return self.max_model_len

    def text_ids(self, prompt: str, model: str | None = None) -> list[int]:
        return self.pick(model).text_ids(prompt)

    def count_text_tokens(self, prompt: str, model: str | None = None) -> int:
        return len(self.text_ids(prompt, model))

    def sampling_params(self, params: SamplingParams, eos: list[int]):
        """vLLM's SamplingParams for a request, streaming deltas."""
        kwargs = vllm_sampling_kwargs(params, eos)
        constraint = kwargs.pop("structured_outputs", None)
        if constraint is not None:
            name, cls = self.vllm.structured
            kwargs[name] = cls(**constraint)
        return self.vllm.SamplingParams(output_kind=self.vllm.RequestOutputKind.DELTA, **kwargs)

    async def stream(
        self, messages: list[dict], params: SamplingParams, model: str | None = None, tools: list[dict] | None = None
    ) -> AsyncIterator[Delta]:
        served = self.pick(model)
        params.validate()
        prompt = served.prompt_ids(messages, tools)
        vocab = None
        if params.logprobs:  # each token's bytes, built once per tokenizer (a while for a large vocabulary)
            vocab = await asyncio.to_thread(Vocabulary.of, served.tokenizer, len(served.tokenizer))
        job = VllmJob(
            self.engine,
            self.vllm.prompt_of(prompt),
            self.sampling_params(params, served.eos_ids),
            self.loras.get(served.name),
            LogprobReader(served.tokenizer, vocab, params.top_logprobs, served.eos_ids) if vocab is not None else None,
        )
        async with aclosing(answer_deltas(job, served.tokenizer, prompt, params, served.eos_ids)) as deltas:
            async for delta in deltas:
                yield delta

    def stream_text(self, prompt: str, params: SamplingParams, model: str | None = None) -> AsyncIterator[Delta]:
        """Continue `prompt` as raw text, no chat template (/v1/completions, Ollama's raw generate)."""
        return self.stream(RawPrompt(prompt), params, model)

    async def close(self) -> None:
        """Shut vLLM down and let go of it now: left to the interpreter's exit, vLLM's own finaliser runs its
        shutdown again after its modules are torn down and prints a traceback."""
        engine, self.engine = self.engine, None
        shutdown = getattr(engine, "shutdown", None)
        if shutdown is not None:
            shutdown()
        del engine, shutdown
        gc.collect()
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


@dataclass
class LogprobReader:
    tokenizer: Any
    vocab: Vocabulary
    top: int
    eos_ids: list[int]

    def read(self, tokens: list[int], positions) -> list[TokenLogprob]:
        return token_logprobs(self.tokenizer, self.vocab, tokens, positions, self.top, set(self.eos_ids))


class VllmJob:
    """One request in vLLM's engine, read as engine/answer.py's steps; `cancel` aborts it in vLLM."""

    def __init__(self, engine, prompt, sampling, lora_request, logprobs: LogprobReader | None):
        self.engine, self.logprobs = engine, logprobs
        self.request_id = f"expertkit-{uuid.uuid4().hex}"
        self.outputs = engine.generate(prompt, sampling, self.request_id, lora_request=lora_request)
        self.tokens: list[int] = []  # every token so far (each Step holds this list; answer.py reads it at once)
        self.started = self.finished = self.aborted = False

    async def steps(self) -> AsyncIterator[Step]:
        self.started = True
        while True:
            out = await anext(self.outputs, None)
            if out is None:
                yield Step(self.tokens, True, error="vLLM ended the request without a finished output")
                return
            completion = out.outputs[0]
            new = list(completion.token_ids)
            scores = self.logprobs.read(new, completion.logprobs) if self.logprobs else []
            self.tokens.extend(new)
            if not out.finished:
                yield Step(self.tokens, False, scores)
                continue
            self.finished = True
            await anext(self.outputs, None)  # vLLM's generator ends after its finished output: let it clean up
            reason = FINISH.get(completion.finish_reason)
            error = None if reason else f"vLLM ended the request ({completion.finish_reason})"
            yield Step(self.tokens, True, scores, reason, error)
            return

    def cancel(self) -> None:
        """Abort the request in vLLM (a stop string was written, or nobody reads any more): its slot frees now."""
        if self.started and not self.finished and not self.aborted:
            self.aborted = True
            in_background(self.engine.abort(self.request_id))

    def close(self) -> None:
        """Close vLLM's generator when it has not ended (it aborts an unfinished request too)."""
        if self.started and not self.finished:
            in_background(self.outputs.aclose())


_background: set[asyncio.Task] = set()


def in_background(coroutine) -> None:
    """Run `coroutine` on the running loop without waiting for it (referenced until done, errors logged)."""
    try:
        task = asyncio.get_running_loop().create_task(coroutine)
    except RuntimeError:  # no running loop: the engine's loop is gone, and nothing is left to free in it
        coroutine.close()
        return
    _background.add(task)
    task.add_done_callback(_finished)


def _finished(task: asyncio.Task) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.debug("vLLM clean-up failed: %r", task.exception())
