"""A local transformers model behind the `Engine` protocol, with continuous batching.

Requests are decoded together by transformers' continuous-batching manager (paged KV cache, requests join and
leave the running batch between steps), so concurrent requests share forward passes instead of queueing one by
one. Each served name (the base, and every adapter of `adapter_name_or_path`) is its own model with its own
manager: an adapter is merged into a copy of the base at load time, so serving costs nothing extra per token.
The copies share every weight the adapter did not change (embeddings, norms, layers LoRA did not target); the
LoRA-targeted layers and the KV cache are paid once per name.

Why not one PEFT model with per-request adapters: continuous batching packs all requests into one row of tokens,
and PEFT's mixed-adapter batches (`adapter_names=`) select an adapter per row, so it cannot mix them here.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertkit.core.errors import ExpertkitError
from expertkit.engine.base import Delta, SamplingParams, TokenLogprob, UnknownModelError, Usage
from expertkit.engine.config import EngineConfig
from expertkit.engine.text import THINK_OPEN, ReasoningSplitter, StopStrings

logger = logging.getLogger(__name__)


def load_chat_tokenizer(config: EngineConfig, adapter: str | None = None):
    """The adapter's tokenizer when it saved one (it carries the training chat template), else the base's."""
    from expertkit.model.load import load_tokenizer
    from expertkit.model.templates import apply_template

    source = config.model_name_or_path
    if adapter and (Path(adapter) / "tokenizer_config.json").is_file():
        source = adapter
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    apply_template(tokenizer, config.template)
    return tokenizer


def load_base_model(config: EngineConfig):
    import torch

    from expertkit.model.load import load_model

    dtype = None if config.dtype == "auto" else getattr(torch, config.dtype)
    device = "cuda" if torch.cuda.is_available() else None
    return load_model(config.model_name_or_path, dtype, config.trust_remote_code, device=device).eval()


def check_adapter_path(name: str, path: str) -> None:
    """A local adapter must be a folder with adapter_config.json (else it is tried as a hub id)."""
    p = Path(path).expanduser()
    if (p / "adapter_config.json").is_file() or not (p.exists() or path.startswith((".", "/", "~"))):
        return
    found = sorted(str(c.parent) for c in p.glob("*/adapter_config.json"))[-3:] if p.is_dir() else []
    hint = f"adapter folders inside it: {', '.join(found)}" if found else "give the output_dir of a LoRA training run"
    raise ExpertkitError(f"adapter '{name}': '{path}' is not a LoRA adapter folder (no adapter_config.json)", hint=hint)


def merge_adapter_copy(base, adapter: str):
    """base + adapter merged, in a copy that shares every tensor the adapter leaves alone; `base` is unchanged.

    The copy gets new Parameter objects over the same storage, and `safe_merge` gives each merged layer a new
    tensor instead of adding to the shared one in place.
    """
    import copy

    import torch
    from peft import PeftModel

    memo = {}
    for p in base.parameters():
        memo.setdefault(id(p), torch.nn.Parameter(p.data, requires_grad=False))
    model = copy.deepcopy(base, memo)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload(safe_merge=True).eval()


@dataclass
class Served:
    """One name clients can ask for: its chat tokenizer, its (merged) model and the manager that batches it."""

    name: str
    tokenizer: Any
    model: Any
    manager: Any
    eos_ids: list[int]


class LocalEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        adapters = config.adapters()
        for name, path in adapters.items():
            check_adapter_path(name, path)
        base = load_base_model(config)
        # the default model (first in model_names) is the first adapter; the base comes last, which also means
        # every copy is taken before the base gets its manager (transformers caches it on the model object)
        sources = [(name, path) for name, path in adapters.items()] + [(config.base_name(), None)]
        self.served: dict[str, Served] = {}
        try:
            for i, (name, adapter) in enumerate(sources):
                tokenizer = load_chat_tokenizer(config, adapter)
                model = merge_adapter_copy(base, adapter) if adapter else base
                share = (i, len(sources))
                self.served[name] = Served(name, tokenizer, model, None, [])
                self.served[name].eos_ids = eos_ids(model, tokenizer)
                self.served[name].manager = start_manager(config, self.served[name], share)
        except BaseException:
            for served in self.served.values():
                if served.manager is not None:
                    served.manager.stop(block=True)
            raise
        self._warned: set[str] = set()

    # the default model's parts, for callers that use a single model
    @property
    def tokenizer(self):
        return self.pick().tokenizer

    @property
    def model(self):
        return self.pick().model

    @property
    def manager(self):
        return self.pick().manager

    @property
    def eos_ids(self) -> list[int]:
        return self.pick().eos_ids

    def model_names(self) -> list[str]:
        return list(self.served)

    def pick(self, model: str | None = None) -> Served:
        """The served model a request's `model` names (None or "": the default), or UnknownModelError."""
        if not model:
            return next(iter(self.served.values()))
        if model not in self.served:
            raise UnknownModelError(model, self.model_names())
        return self.served[model]

    def prompt_ids(self, messages: list[dict], model: str | None = None, tools: list[dict] | None = None) -> list[int]:
        if isinstance(messages, RawPrompt):
            return self.text_ids(messages, model)
        template = self.pick(model).tokenizer.apply_chat_template
        out = template(messages, tools=tools or None, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    def count_prompt_tokens(
        self, messages: list[dict], model: str | None = None, tools: list[dict] | None = None
    ) -> int:
        return len(self.prompt_ids(messages, model, tools))

    def context_length(self, model: str | None = None) -> int:
        config = self.pick(model).model.config.get_text_config()
        return int(getattr(config, "max_position_embeddings", None) or self.pick(model).tokenizer.model_max_length)

    async def stream(
        self, messages: list[dict], params: SamplingParams, model: str | None = None, tools: list[dict] | None = None
    ) -> AsyncIterator[Delta]:
        served = self.pick(model)
        params.validate()
        prompt = self.prompt_ids(messages, served.name, tools)
        prompt_text = served.tokenizer.decode(prompt[-8:])
        request_id = f"req-{uuid.uuid4().hex}"
        results: asyncio.Queue = asyncio.Queue()
        manager = served.manager
        manager.register_result_handler(request_id, results.put_nowait)  # before adding: no result is missed
        sampling = self.sampling_kwargs(params, len(served.tokenizer))
        manager.add_request(
            prompt,
            request_id=request_id,
            max_new_tokens=params.max_tokens,
            streaming=True,
            eos_token_id=served.eos_ids,
            **sampling,
        )
        stops = StopStrings(params.stop)
        split = ReasoningSplitter(started_in_reasoning=prompt_text.rstrip().endswith(THINK_OPEN))
        detok = IncrementalDecoder(served.tokenizer)
        scores = TokenScores(served.tokenizer, served.eos_ids, params.top_logprobs) if params.logprobs else None
        tokens, finished = [], False
        try:
            while not finished:
                out = await results.get()
                if out.error:
                    raise RuntimeError(f"generation failed: {out.error}")
                tokens, finished = out.generated_tokens, out.is_finished()
                if scores is not None:
                    scores.update(tokens, out.logprobs)
                new = detok.step(tokens, finished)
                if not new and not finished:
                    continue
                answer, reasoning = split.feed(stops.feed(new))
                if stops.stopped and not finished:
                    manager.cancel_request(request_id)
                    finished = True
                if answer or reasoning:
                    yield Delta(
                        text=answer, reasoning=reasoning, logprobs=scores.take() if scores is not None else None
                    )
            a, r = split.feed(stops.flush())
            a2, r2 = split.flush()
            length = (
                not stops.stopped and len(tokens) >= params.max_tokens and not (tokens and tokens[-1] in served.eos_ids)
            )
            yield Delta(
                text=a + a2,
                reasoning=r + r2,
                finish_reason="length" if length else "stop",
                usage=Usage(len(prompt), len(tokens)),
                logprobs=scores.take(final=True) if scores is not None else None,
            )
        finally:
            if not finished:  # the client went away: free the slot
                manager.cancel_request(request_id)
            forget(manager, request_id)

    def sampling_kwargs(self, params: SamplingParams, vocab_size: int) -> dict:
        """Per-request temperature / top_k / top_p for the manager's per-request processors.

        Continuous batching has no per-request repetition penalty (its processors see one token per request, not
        the history), so a penalty other than 1 is ignored with a warning, once.
        """
        if params.repetition_penalty != 1.0 and "repetition_penalty" not in self._warned:
            self._warned.add("repetition_penalty")
            logger.warning("repetition_penalty is ignored by the local engine (not supported by continuous batching)")
        if params.greedy:
            return {"temperature": 1.0, "top_k": 1, "top_p": 1.0}
        return {
            "temperature": float(params.temperature),
            "top_k": int(min(params.top_k, vocab_size) or vocab_size),
            "top_p": float(params.top_p),
        }

    def stream_text(self, prompt: str, params: SamplingParams, model: str | None = None) -> AsyncIterator[Delta]:
        """Continue `prompt` as raw text, no chat template (/v1/completions, Ollama's raw generate)."""
        return self.stream(RawPrompt(prompt), params, model)

    def text_ids(self, prompt: str, model: str | None = None) -> list[int]:
        """A raw prompt's ids (with BOS where the tokenizer adds one)."""
        return list(self.pick(model).tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def count_text_tokens(self, prompt: str, model: str | None = None) -> int:
        return len(self.text_ids(prompt, model))

    async def close(self) -> None:
        for served in self.served.values():
            served.manager.stop(block=True)


class RawPrompt(str):
    """A prompt `stream` uses as it is, without the chat template (what `stream_text` hands it)."""


def eos_ids(model, tokenizer) -> list[int]:
    """Every token that ends an answer: the generation config's (a list for chat models) and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    found = ids if isinstance(ids, list) else ([ids] if ids is not None else [])
    return sorted({*found, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])})


class TokenScores:
    """Per-token log probabilities of a growing answer, handed out once each (`take`).

    transformers' continuous batching reports only the chosen token's log probability, taken from the distribution
    it sampled from (after temperature / top_k / top_p; greedy decoding is top_k=1, so every greedy token reads
    0.0). It gives no alternatives, so `top` holds the chosen token alone. A final end-of-answer token is left out
    (it is not answer text).
    """

    def __init__(self, tokenizer, eos_ids: list[int], top: int = 0):
        self.tokenizer, self.eos_ids, self.top = tokenizer, set(eos_ids), top
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.sent = 0

    def update(self, tokens: list[int], logprobs: list[float] | None) -> None:
        self.tokens, self.logprobs = list(tokens), list(logprobs or [])

    def take(self, final: bool = False) -> list[TokenLogprob]:
        end = min(len(self.tokens), len(self.logprobs))
        if final and end and end == len(self.tokens) and self.tokens[end - 1] in self.eos_ids:
            end -= 1
        out = [self.entry(t, lp) for t, lp in zip(self.tokens[self.sent : end], self.logprobs[self.sent : end])]
        self.sent = max(self.sent, end)
        return out

    def entry(self, token_id: int, logprob: float) -> TokenLogprob:
        text = self.tokenizer.decode([token_id])
        logprob = min(float(logprob), 0.0)  # float rounding can give a hair above 0 for a certain token
        chosen = TokenLogprob(text, logprob, list(text.encode("utf-8")))
        if self.top:
            chosen.top = [TokenLogprob(chosen.token, chosen.logprob, list(chosen.bytes))]
        return chosen


class IncrementalDecoder:
    """New text for a growing token list, decoding only a short window per step (not the whole answer).

    The window starts a few tokens back (`prefix`) so that tokenizers whose decoding depends on the previous token
    (SentencePiece's leading spaces, byte-level pieces of one character) give the same text as a full decode.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.prefix = 0  # window start
        self.read = 0  # tokens already turned into text
        self.text = ""  # everything returned so far

    def step(self, tokens: list[int], finished: bool) -> str:
        decode = self.tokenizer.decode
        before = decode(tokens[self.prefix : self.read], skip_special_tokens=True)
        after = decode(tokens[self.prefix :], skip_special_tokens=True)
        if after.endswith("\ufffd") and not finished:
            return ""  # half of a multi-byte character: wait for the rest
        after = after.rstrip("\ufffd")  # cut off by max_tokens mid-character
        if after.startswith(before):
            new = after[len(before) :]
        else:  # a tokenizer whose window decode disagrees: fall back to the whole answer once
            new = decode(tokens, skip_special_tokens=True).rstrip("\ufffd")[len(self.text) :]
        if new:
            self.prefix, self.read = self.read, len(tokens)
            self.text += new
        return new


def start_manager(config: EngineConfig, served: Served, share: tuple[int, int]):
    """A started continuous-batching manager for one served model.

    `max_concurrency` caps the requests decoded in one step (`max_requests_per_batch`); a step holds at most 256
    tokens per request on a GPU, 256 in all on CPU (`max_batch_tokens`: longer prompts are prefilled in chunks).
    The KV cache: on a GPU, the i-th of n served models gets 1/n of 80 % of the memory free at start (so n managers
    never ask for more than one would); on CPU, room for `max_concurrency` requests of up to 4096 tokens each (the
    CPU default, 60 % of free RAM per manager, would take the machine).
    """
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    # processors exist only for values that differ from the neutral ones; each request then sets its own
    generation = GenerationConfig(
        do_sample=True,
        temperature=0.7,
        top_k=50,
        top_p=0.95,
        max_new_tokens=config.max_new_tokens,
        eos_token_id=served.eos_ids,
        pad_token_id=served.tokenizer.pad_token_id,
    )
    on_gpu = served.model.device.type == "cuda"
    cb = ContinuousBatchingConfig(
        per_request_processors=True,
        return_logprobs=True,  # the chosen token's log probability (a gather on the softmax sampling computes)
        max_requests_per_batch=config.max_concurrency,
        # CPU: small steps (long prompts prefilled in chunks) let decoding requests interleave with a new prompt's
        # prefill: at 16 clients +10% tokens/s and half the time to first token (bench/serve_throughput.py)
        max_batch_tokens=256 * config.max_concurrency if on_gpu else 256,
    )
    if on_gpu:
        i, n = share
        cb.max_memory_percent = (0.8 / n) / (1 - 0.8 * i / n)  # of what is free now, after the i before it
    else:
        # paged KV cache, shared by the running requests: on average 1024 tokens each (one request alone can use
        # it all). A bigger cache costs RAM and, measured, time: 256 blocks ran ~10% slower than 64 at 16 clients
        context = min(int(getattr(served.model.config.get_text_config(), "max_position_embeddings", 0) or 1024), 1024)
        cb.num_blocks = config.max_concurrency * -(-context // cb.page_size)
    manager = served.model.init_continuous_batching(generation_config=generation, continuous_batching_config=cb)
    manager.start()
    return manager


def forget(manager, request_id: str) -> None:
    """Drop the result handler of a request we stopped early (stop string, disconnect).

    transformers removes a handler only when it delivers a finished result; a cancelled request may never
    deliver one, and a handler left behind whose event loop has closed kills the generation thread.
    """
    router = getattr(manager, "output_router", None)
    handlers = getattr(router, "result_handlers", None)
    if handlers is not None:
        with router._lock:
            handlers.pop(request_id, None)
