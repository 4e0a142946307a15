"""A local transformers model behind the `Engine` protocol, with continuous batching.

Requests are decoded together by transformers' continuous-batching manager (paged KV cache, requests join and
leave the running batch between steps), so concurrent requests share forward passes instead of queueing one by
one. Each served name (the base, and every adapter of `adapter_name_or_path`) is its own model with its own
manager: an adapter is merged into a copy of the base at load time, so serving costs nothing extra per token.
The copies share every weight the adapter did not change (embeddings, norms, layers LoRA did not target); the
LoRA-targeted layers and the KV cache are paid once per name.

A request alone on its model does not pay for batching: it starts on the direct path (engine/decode.py's KV-cached
loop, as `model.generate`), and the next request to arrive hands it over to the manager, which continues it from
its prompt and the tokens so far (engine/answer.py's SoloJob; greedy answers are the same tokens either way).

Requests that continuous batching cannot honour (a `seed` when sampling, `repetition_penalty`, `logprobs`, a JSON
`response_format`) are decoded one by one in worker threads instead (engine/decode.py), at most `max_concurrency`
at once; engine/answer.py turns either kind of generation into deltas the same way.

Why not one PEFT model with per-request adapters: continuous batching packs all requests into one row of tokens,
and PEFT's mixed-adapter batches (`adapter_names=`) select an adapter per row, so it cannot mix them here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from expertkit.core.errors import ExpertkitError
from expertkit.engine.answer import BatchedJob, OwnLoopJob, SoloJob, answer_deltas
from expertkit.engine.base import Delta, SamplingParams, pick_served
from expertkit.engine.batch_sampling import BatchSampler
from expertkit.engine.config import EngineConfig
from expertkit.engine.cpu_threads import LoopLane, in_passing_thread, single_threaded
from expertkit.engine.decode import needs_own_loop
from expertkit.engine.loading import (
    RawPrompt,
    check_adapter_path,
    eos_ids,
    load_base_model,
    load_chat_tokenizer,
    prompt_ids,
    text_ids,
)

logger = logging.getLogger(__name__)


def merge_adapter_copy(base, adapter: str):
    """base + adapter merged, in a copy that shares every tensor the adapter leaves alone; `base` is unchanged.

    The copy gets new Parameter objects over the same storage; each layer the adapter changes gets its own copy of the
    weight before the merge, so no peft version's merge (in place or not: peft 0.22's merge wrote into the shared
    tensor, and the base answered as the adapter) can reach the base's tensors. A base packed for oneDNN
    (model/packed.py) is unpacked in the copy for peft, and the merged copy is packed again.
    """
    import copy

    import torch
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    from expertkit.model.packed import pack_linears, unpack_linears

    memo = {id(b): b for b in base.buffers()}
    for p in base.parameters():
        memo.setdefault(id(p), torch.nn.Parameter(p.data, requires_grad=False))
    plain = copy.deepcopy(base, memo)
    packed = unpack_linears(plain)  # a packed base (CPU): plain linear layers for peft, packed again after the merge
    model = PeftModel.from_pretrained(plain, adapter)
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            layer = module.get_base_layer()
            layer.weight = torch.nn.Parameter(layer.weight.data.clone(), requires_grad=False)
    merged = model.merge_and_unload(safe_merge=True).eval()
    if packed:  # the layers the adapter left alone share the base's packed weights
        pack_linears(merged, reuse=packed)
    return merged


@dataclass
class Served:
    """One name clients can ask for: its chat tokenizer, its (merged) model and the manager that batches it."""

    name: str
    tokenizer: Any
    model: Any
    manager: Any
    eos_ids: list[int]
    base: str = ""  # the model folder (or hub id) it was built on
    running: int = 0  # requests on continuous batching or the direct path now (not those of the own loop)
    solo: SoloJob | None = None  # the request decoding alone on the direct path, until another arrives
    lane: Executor | None = None  # on CPU, where the direct path runs: the manager's thread (else the decode pool)


Source = tuple[str, str | None]  # (model folder or hub id, LoRA adapter folder or None)


class LocalEngine:
    """`served`: name -> (model, adapter) to load instead of the config's model and adapters (a models file's
    entries, serve/models.py); entries on the same model share its weights. `add` / `remove` change the names while
    serving (a hot swap): each is one reference swap of `self.served`, so a request sees the old dict or the new."""

    solo_first = True  # a request alone on its model starts on the direct path (answer.SoloJob); False: always batched

    def __init__(self, config: EngineConfig, served: dict[str, Source] | None = None):
        self.config = config
        if served is None:
            adapters = config.adapters()
            for name, path in adapters.items():
                check_adapter_path(name, path)
            # the default model (first in model_names) is the first adapter; the base comes last
            base = config.model_name_or_path
            served = {name: (base, path) for name, path in adapters.items()} | {config.base_name(): (base, None)}
        import torch

        self.served: dict[str, Served] = {}
        self.bases: dict[str, Any] = {}  # model -> its loaded weights, shared by every name built on it
        # on CPU: the cores go to the batching loops, a decode worker gets one (engine/cpu_threads.py); 0 on a GPU
        self.cores = 0 if torch.cuda.is_available() else torch.get_num_threads()
        self.lock = threading.Lock()  # one add / remove at a time
        self.counting = threading.Lock()  # each Served's running / solo
        try:
            for i, (name, (model, adapter)) in enumerate(served.items()):
                self.add(name, adapter, model, share=(i, len(served)))
        except BaseException:
            for s in self.served.values():
                s.manager.stop(block=True)
            raise
        # requests continuous batching cannot serve (engine/decode.py) and the direct path run here, at most
        # max_concurrency at once
        self.pool = ThreadPoolExecutor(
            config.max_concurrency, "expertkit-decode", initializer=single_threaded if self.cores else None
        )

    def add(self, name: str, adapter: str | None = None, model: str | None = None, share=(0, 1)) -> Served:
        """Load `name` (model + adapter merged, with its own batching manager) and serve it; blocking (seconds)."""
        if self.cores:  # on CPU, in a thread that ends with the load (engine/cpu_threads.py)
            return in_passing_thread(lambda: self.load(name, adapter, model, share), self.cores)
        return self.load(name, adapter, model, share)

    def load(self, name: str, adapter: str | None, model: str | None, share: tuple[int, int]) -> Served:
        model = model or self.config.model_name_or_path
        if adapter:
            check_adapter_path(name, adapter)
        with self.lock:
            if name in self.served:
                raise ExpertkitError(f"the model '{name}' is served already", hint="remove it first")
            if model not in self.bases:
                self.bases[model] = load_base_model(self.config, model)
            base = self.bases[model]
            tokenizer = load_chat_tokenizer(self.config, adapter, model)
            if adapter and self.config.quantization_bit:  # never merged into 4/8-bit weights: a base of its own
                from expertkit.model.quant import apply_adapter

                merged = apply_adapter(load_base_model(self.config, model), adapter)
            else:
                merged = merge_adapter_copy(base, adapter) if adapter else base
            stop = eos_ids(merged.generation_config.eos_token_id, tokenizer)
            served = Served(name, tokenizer, merged, None, stop, model)
            served.manager = start_manager(self.config, served, share, self.cores)
            self.served = {**self.served, name: served}
        return served

    def remove(self, name: str) -> Served:
        """Stop serving `name`: out of `served` at once, its manager stopped (blocking: call it when no request
        uses it any more) and a base no name uses is let go."""
        with self.lock:
            served = self.served[name]
            self.served = {n: s for n, s in self.served.items() if n != name}
            if all(s.base != served.base for s in self.served.values()):
                self.bases.pop(served.base, None)
        served.manager.stop(block=True)
        return served

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

    def speed(self) -> str:
        """What this engine does to decode faster on this machine, for the server's start-up lines ("" on a GPU)."""
        from expertkit.model.packed import has_packed

        if not self.cores:
            return ""
        packed = any(has_packed(s.model) for s in self.served.values())
        weights = "linear weights packed for oneDNN" if packed else "linear weights as loaded"
        return f"CPU, {weights}, one batching thread on {self.cores} cores (docs/engine.md)"

    def model_names(self) -> list[str]:
        return list(self.served)

    def pick(self, model: str | None = None) -> Served:
        """The served model a request's `model` names (None or "": the default), or UnknownModelError."""
        return pick_served(self.served, model)

    def prompt_ids(self, messages: list[dict], model: str | None = None, tools: list[dict] | None = None) -> list[int]:
        return prompt_ids(self.pick(model).tokenizer, messages, tools)

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
        own = needs_own_loop(params)
        if own:
            job = OwnLoopJob(self.pool, served.model, served.tokenizer, prompt, params, served.eos_ids)
        else:
            job = self.batched_job(served, prompt, params)
        try:
            async with aclosing(answer_deltas(job, served.tokenizer, prompt, params, served.eos_ids)) as deltas:
                async for delta in deltas:
                    yield delta
        finally:
            if not own:
                with self.counting:
                    served.running -= 1
                    if served.solo is job:
                        served.solo = None

    def batched_job(self, served: Served, prompt: list[int], params: SamplingParams) -> BatchedJob | SoloJob:
        """A request for continuous batching: alone on its model, it starts on the direct path (SoloJob); the next
        one to arrive hands it over to the manager and joins it there."""
        sampling = sampling_kwargs(params, len(served.tokenizer))
        with self.counting:
            served.running += 1
            if served.running == 1 and self.solo_first:
                # on CPU in the manager's thread (while its loop runs: a loop that died would never run it)
                lane = served.lane if served.lane is not None and served.manager.is_running() else self.pool
                served.solo = SoloJob(
                    lane,
                    served.manager,
                    served.model,
                    served.tokenizer,
                    prompt,
                    params,
                    served.eos_ids,
                    sampling,
                )
                return served.solo
            if served.solo is not None:
                served.solo.hand_over()
                served.solo = None
        return BatchedJob(served.manager, prompt, params, served.eos_ids, sampling)

    def stream_text(self, prompt: str, params: SamplingParams, model: str | None = None) -> AsyncIterator[Delta]:
        """Continue `prompt` as raw text, no chat template (/v1/completions, Ollama's raw generate)."""
        return self.stream(RawPrompt(prompt), params, model)

    def text_ids(self, prompt: str, model: str | None = None) -> list[int]:
        """A raw prompt's ids (with BOS where the tokenizer adds one)."""
        return text_ids(self.pick(model).tokenizer, prompt)

    def count_text_tokens(self, prompt: str, model: str | None = None) -> int:
        return len(self.text_ids(prompt, model))

    async def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for served in self.served.values():
            served.manager.stop(block=True)


def sampling_kwargs(params: SamplingParams, vocab_size: int) -> dict:
    """Per-request temperature / top_k / top_p for the manager's per-request processors (greedy: top_k 1)."""
    if params.greedy:
        return {"temperature": 1.0, "top_k": 1, "top_p": 1.0}
    return {
        "temperature": float(params.temperature),
        "top_k": int(min(params.top_k, vocab_size) or vocab_size),
        "top_p": float(params.top_p),
    }


def start_manager(config: EngineConfig, served: Served, share: tuple[int, int], cores: int = 0):
    """A started continuous-batching manager for one served model.

    `max_concurrency` caps the requests decoded in one step (`max_requests_per_batch`); a step holds at most 256
    tokens per request on a GPU, 256 in all on CPU (`max_batch_tokens`: longer prompts are prefilled in chunks).
    The KV cache: on a GPU, the i-th of n served models gets 1/n of 80 % of the memory free at start (so n managers
    never ask for more than one would); on CPU, room for `max_concurrency` requests of up to 4096 tokens each (the
    CPU default, 60 % of free RAM per manager, would take the machine). On CPU its loop runs on `cores` cores and
    decodes a request alone too (`served.lane`).
    """
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    on_gpu = served.model.device.type == "cuda"
    # GPU: transformers' per-request processors (they exist only for values that differ from the neutral ones; each
    # request then sets its own) and sampling for every row. CPU: the manager takes the argmax and BatchSampler
    # samples the sampled rows only (engine/batch_sampling.py); its Python branches stay off CUDA graphs
    neutral = {"do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 0.95} if on_gpu else {"do_sample": False}
    generation = GenerationConfig(
        **neutral,
        max_new_tokens=config.max_new_tokens,
        eos_token_id=served.eos_ids,
        pad_token_id=served.tokenizer.pad_token_id,
    )
    cb = ContinuousBatchingConfig(
        per_request_processors=True,
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
    model = batching_copy(served.model)
    manager = model.init_continuous_batching(generation_config=generation, continuous_batching_config=cb)
    if not on_gpu:
        manager.logit_processor = BatchSampler()  # read when the generation thread builds its batch processor
    if cores:  # the loop's thread decodes on every core, and a request alone too (engine/cpu_threads.py)
        served.lane = LoopLane(manager, cores)
    manager.start()
    return manager


def batching_copy(model):
    """The model for continuous batching: new module objects and config over the same weights and buffers.

    transformers sets `config.is_causal` for the length of each forward that passes `is_causal` (continuous batching
    passes False with its own mask) and restores it after; that is not thread-safe, so a plain forward in another
    thread on the same config (the own decode loop, embeddings) could run bidirectional, and a restore racing with
    it can leave the config bidirectional for good. Continuous batching gets a config of its own.
    """
    import copy

    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)
