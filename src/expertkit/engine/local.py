"""A local transformers model behind the `Engine` protocol, with continuous batching.

Requests are decoded together by transformers' continuous-batching manager (paged KV cache, requests join and
leave the running batch between steps), so concurrent requests share forward passes instead of queueing one by
one. An adapter is merged into the base in memory at load time, so serving costs nothing extra per token.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from expertkit.engine.base import Delta, SamplingParams, Usage
from expertkit.engine.config import EngineConfig
from expertkit.engine.text import THINK_OPEN, ReasoningSplitter, StopStrings

logger = logging.getLogger(__name__)


def load_chat_tokenizer(config: EngineConfig):
    """The adapter's tokenizer when it saved one (it carries the training chat template), else the base's."""
    from expertkit.model.load import load_tokenizer
    from expertkit.model.templates import apply_template

    source = config.model_name_or_path
    if config.adapter_name_or_path and (Path(config.adapter_name_or_path) / "tokenizer_config.json").is_file():
        source = config.adapter_name_or_path
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    apply_template(tokenizer, config.template)
    return tokenizer


def load_merged_model(config: EngineConfig):
    import torch

    from expertkit.model.load import load_model

    dtype = None if config.dtype == "auto" else getattr(torch, config.dtype)
    device = "cuda" if torch.cuda.is_available() else None
    model = load_model(config.model_name_or_path, dtype, config.trust_remote_code, device=device)
    if config.adapter_name_or_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, config.adapter_name_or_path).merge_and_unload()
    model.eval()
    return model


class LocalEngine:
    def __init__(self, config: EngineConfig):
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        self.config = config
        self.tokenizer = load_chat_tokenizer(config)
        self.model = load_merged_model(config)
        self.name = config.served_model_name or Path(config.adapter_name_or_path or config.model_name_or_path).name
        self.eos_ids = sorted(set(self._eos_ids()))
        # processors exist only for values that differ from the neutral ones; each request then sets its own
        generation = GenerationConfig(
            do_sample=True,
            temperature=0.7,
            top_k=50,
            top_p=0.95,
            max_new_tokens=config.max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        cb = ContinuousBatchingConfig(per_request_processors=True, max_batch_tokens=None)
        cb_kwargs = {"max_batch_tokens": 256 * config.max_concurrency} if hasattr(cb, "max_batch_tokens") else {}
        cb = ContinuousBatchingConfig(per_request_processors=True, **cb_kwargs)
        self.manager = self.model.init_continuous_batching(generation_config=generation, continuous_batching_config=cb)
        self.manager.start()
        self.vocab_size = len(self.tokenizer)

    def _eos_ids(self):
        ids = self.model.generation_config.eos_token_id
        yield from ids if isinstance(ids, list) else ([ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            yield self.tokenizer.eos_token_id

    def model_names(self) -> list[str]:
        return [self.name]

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    async def stream(
        self, messages: list[dict], params: SamplingParams, model: str | None = None
    ) -> AsyncIterator[Delta]:
        prompt = self.prompt_ids(messages)
        prompt_text = self.tokenizer.decode(prompt[-8:])
        request_id = f"req-{uuid.uuid4().hex}"
        results: asyncio.Queue = asyncio.Queue()
        self.manager.register_result_handler(request_id, results.put_nowait)  # before adding: no result is missed
        sampling = {
            "temperature": 1.0 if params.greedy else float(params.temperature),
            "top_k": 1 if params.greedy else int(params.top_k or self.vocab_size),
            "top_p": float(params.top_p),
        }
        self.manager.add_request(
            prompt,
            request_id=request_id,
            max_new_tokens=params.max_tokens,
            streaming=True,
            eos_token_id=self.eos_ids,
            **sampling,
        )
        stops = StopStrings(params.stop)
        split = ReasoningSplitter(started_in_reasoning=prompt_text.rstrip().endswith(THINK_OPEN))
        text_so_far, tokens, finished = "", [], False
        try:
            while not finished:
                out = await results.get()
                if out.error:
                    raise RuntimeError(f"generation failed: {out.error}")
                tokens, finished = out.generated_tokens, out.is_finished()
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                if text.endswith("\ufffd"):
                    if not finished:
                        continue  # half of a multi-byte character: wait for the rest
                    text = text.rstrip("\ufffd")  # cut off by max_tokens mid-character
                new, text_so_far = text[len(text_so_far) :], text
                answer, reasoning = split.feed(stops.feed(new))
                if stops.stopped and not finished:
                    self.manager.cancel_request(request_id)
                    finished = True
                if answer or reasoning:
                    yield Delta(text=answer, reasoning=reasoning)
            a, r = split.feed(stops.flush())
            a2, r2 = split.flush()
            length = (
                not stops.stopped and len(tokens) >= params.max_tokens and not (tokens and tokens[-1] in self.eos_ids)
            )
            yield Delta(
                text=a + a2,
                reasoning=r + r2,
                finish_reason="length" if length else "stop",
                usage=Usage(len(prompt), len(tokens)),
            )
        finally:
            if not finished:  # the client went away: free the slot
                self.manager.cancel_request(request_id)
            self._forget(request_id)

    def _forget(self, request_id: str) -> None:
        """Drop the result handler of a request we stopped early (stop string, disconnect).

        transformers removes a handler only when it delivers a finished result; a cancelled request may never
        deliver one, and a handler left behind whose event loop has closed kills the generation thread.
        """
        router = getattr(self.manager, "output_router", None)
        handlers = getattr(router, "result_handlers", None)
        if handlers is not None:
            with router._lock:
                handlers.pop(request_id, None)

    async def close(self) -> None:
        self.manager.stop(block=True)
