"""One request decoded on its own, for what continuous batching cannot do per request.

transformers' continuous batching samples every request with one shared random generator, gives its per-request
processors one token (not the history) and reports no alternatives to the chosen token. So a request that needs
one of these runs here instead (`needs_own_loop`), in a worker thread, as a plain KV-cached decode loop:

- `seed` with sampling: its own `torch.Generator`, so the same seed, parameters and prompt give the same answer
  whatever else runs at the same time;
- `repetition_penalty` other than 1: transformers' `RepetitionPenaltyLogitsProcessor` over prompt + answer;
- `logprobs`: the model's own log-softmax (before penalty, temperature, top-k/top-p and the JSON mask, as vLLM
  reports by default) of the chosen token and of the `top_logprobs` most likely ones, best first;
- `response_format` JSON: `json_output.JsonConstraint` picks among the tokens that keep the text valid JSON.

Greedy requests without these stay on continuous batching; both paths give the same greedy tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from expertkit.engine.base import FinishReason, SamplingParams, TokenLogprob
from expertkit.engine.json_output import JsonConstraint, Vocabulary, root_of

TRIES = 8  # sampled tokens checked one by one against the JSON constraint before masking the whole vocabulary


@dataclass
class Step:
    """What a generation has produced so far: every token, whether it ended, the new tokens' log probabilities."""

    tokens: list[int]
    finished: bool
    logprobs: list[TokenLogprob] = field(default_factory=list)
    reason: FinishReason | None = None  # why it ended, when the decoder knows (None: judged from the tokens)
    error: str | None = None


def needs_own_loop(params: SamplingParams) -> bool:
    """Whether a request needs the per-request decode loop (continuous batching cannot honour it)."""
    return (
        (params.seed is not None and not params.greedy)
        or params.repetition_penalty != 1.0
        or params.logprobs
        or root_of(params.response_format) is not None
    )


class Sampler:
    """Chooses each next token: repetition penalty, then greedy or temperature / top-k / top-p sampling with the
    request's own generator, among the tokens the JSON constraint allows (when there is one)."""

    def __init__(self, params: SamplingParams, constraint: JsonConstraint | None = None):
        import torch
        from transformers import (
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.greedy, self.constraint = params.greedy, constraint
        self.penalty = (
            RepetitionPenaltyLogitsProcessor(params.repetition_penalty) if params.repetition_penalty != 1.0 else None
        )
        self.warpers = []
        if not self.greedy:
            if params.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(float(params.temperature)))
            if params.top_k:
                self.warpers.append(TopKLogitsWarper(int(params.top_k)))
            if params.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(float(params.top_p)))
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()

    def choose(self, logits, history) -> int | None:
        """The next token for `logits` (1-D, CPU float) after `history` (1 x n ids); None when nothing is allowed."""
        scores = logits[None]
        if self.penalty is not None:
            scores = self.penalty(history, scores)
        warped = self.warp(history, scores)
        if self.constraint is None:
            return self.pick(warped)
        trial = warped.clone()
        for _ in range(TRIES):  # usually the first token tried is allowed: no pass over the whole vocabulary
            token = self.pick(trial)
            if token is None or self.constraint.allows(token):
                return token
            trial[0, token] = float("-inf")
        allowed = self.constraint.mask()
        return self.pick(self.warp(history, scores.masked_fill(~allowed[None], float("-inf"))))

    def warp(self, history, scores):
        for w in self.warpers:
            scores = w(history, scores)
        return scores

    def pick(self, scores) -> int | None:
        import torch

        if torch.isneginf(scores).all():
            return None
        if self.greedy:
            return int(scores[0].argmax())
        probs = torch.softmax(scores[0], dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def token_logprob(tokenizer, vocab: Vocabulary, logprobs, token: int, top: int) -> TokenLogprob:
    """The chosen token's log probability and, when `top`, the `top` most likely tokens (best first)."""
    chosen = token_entry(tokenizer, vocab, token, float(logprobs[token]))
    if top:
        values, ids = logprobs.topk(top)
        chosen.top = [token_entry(tokenizer, vocab, int(i), float(v)) for v, i in zip(values, ids)]
    return chosen


def token_entry(tokenizer, vocab: Vocabulary, token: int, logprob: float) -> TokenLogprob:
    text = tokenizer.decode([token])
    piece = vocab.pieces[token] if token < len(vocab.pieces) else None
    return TokenLogprob(text, min(logprob, 0.0), list(piece if piece is not None else text.encode("utf-8")))


def decode(
    model,
    tokenizer,
    prompt: list[int],
    params: SamplingParams,
    eos_ids: list[int],
    emit: Callable[[Step], None],
    cancelled: threading.Event,
) -> None:
    """Generate one answer token by token with a KV cache, handing each step to `emit`; stops early when
    `cancelled` is set (the client left, a stop string was written). Runs in a worker thread."""
    import torch

    eos = set(eos_ids)
    device = model.device
    history = torch.tensor([prompt])
    generated: list[int] = []
    forward = cached_forward(model)
    with torch.inference_mode():
        logits, cache = forward(history.to(device), None)
        vocab = Vocabulary.of(tokenizer, len(logits)) if params.logprobs or params.response_format else None
        root = root_of(params.response_format)
        constraint = JsonConstraint(vocab, root, eos_ids, params.max_tokens) if root else None
        sampler = Sampler(params, constraint)
        while not cancelled.is_set():
            token = sampler.choose(logits, history)
            if token is None:  # the JSON constraint allows nothing (max_tokens too small to close it)
                emit(Step(list(generated), True, reason="length"))
                return
            generated.append(token)
            entries = []
            if params.logprobs and token not in eos:
                logprobs = torch.log_softmax(logits, dim=-1)
                entries.append(token_logprob(tokenizer, vocab, logprobs, token, params.top_logprobs))
            if constraint is not None:
                constraint.advance(token)
            reason = "stop" if token in eos or (constraint is not None and constraint.done) else None
            if reason is None and len(generated) >= params.max_tokens:
                reason = "length"
            emit(Step(list(generated), reason is not None, entries, reason))
            if reason is not None:
                return
            history = torch.cat([history, torch.tensor([[token]])], dim=1)
            logits, cache = forward(torch.tensor([[token]], device=device), cache)


def cached_forward(model) -> Callable:
    """`forward(ids, cache) -> (last position's logits on the CPU, cache)`; transformers 5 names the KV cache
    `cache`, 4.x `past_key_values`."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def forward(ids, cache):
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **({name: cache} if cache is not None else {}))
        return out.logits[0, -1].float().cpu(), out[name] if name in out else out.past_key_values

    return forward
