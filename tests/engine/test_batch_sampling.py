"""Continuous batching on CPU chooses tokens with engine/batch_sampling.py: the manager takes the argmax and only
sampled rows are sampled. Greedy requests batched together (and beside sampled ones) give model.generate's tokens."""

from __future__ import annotations

import asyncio

import pytest

from expertkit.engine.base import Delta, SamplingParams

QUESTIONS = ["Hi", "Tell me a story", "What is 2 + 2?", "Name three colours"]


def generate(engine, question: str, max_tokens: int) -> tuple[str, int]:
    """model.generate's greedy answer to one question: its text and token count (the end token counts, as in usage)."""
    import torch

    served = engine.pick("tiny")
    prompt = engine.prompt_ids([{"role": "user", "content": question}], "tiny")
    with torch.inference_mode():
        out = served.model.generate(
            torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False, eos_token_id=served.eos_ids
        )
    return served.tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True), out.shape[1] - len(prompt)


async def answer(engine, question: str, params: SamplingParams) -> Delta:
    out = Delta()
    async for d in engine.stream([{"role": "user", "content": question}], params, "tiny"):
        out.extend(d)
    return out


@pytest.fixture
def batched_only(engine, monkeypatch):
    """Every request goes to the manager (no lone request on the direct path); counts the requests it gets."""
    manager = engine.pick("tiny").manager
    added = []
    add_request = manager.add_request
    monkeypatch.setattr(engine, "solo_first", False)
    monkeypatch.setattr(manager, "add_request", lambda ids, **k: (added.append(k), add_request(ids, **k)))
    return added


def test_four_greedy_requests_batched_give_generates_tokens(engine, batched_only):
    greedy = SamplingParams(temperature=0, max_tokens=24)

    async def all_at_once():
        return await asyncio.gather(*[answer(engine, q, greedy) for q in QUESTIONS])

    for question, got in zip(QUESTIONS, asyncio.run(all_at_once())):
        assert (got.text, got.usage.completion_tokens) == generate(engine, question, 24), question
    assert len(batched_only) == len(QUESTIONS)


def test_greedy_requests_beside_sampled_ones_keep_generates_tokens(engine, batched_only):
    greedy = SamplingParams(temperature=0, max_tokens=16)
    sampled = SamplingParams(temperature=1.5, top_k=50, top_p=0.9, max_tokens=16)

    async def mixed():
        return await asyncio.gather(*[answer(engine, q, greedy if i % 2 else sampled) for i, q in enumerate(QUESTIONS)])

    answers = asyncio.run(mixed())
    for i, (question, got) in enumerate(zip(QUESTIONS, answers)):
        if i % 2:
            assert (got.text, got.usage.completion_tokens) == generate(engine, question, 16), question
        else:
            assert got.usage.completion_tokens > 0 and got.finish_reason in ("stop", "length")
    assert [k["top_k"] for k in batched_only].count(1) == 2  # the greedy ones


def test_the_sampler_leaves_greedy_rows_and_samples_within_top_k_and_top_p():
    import torch

    from expertkit.engine.batch_sampling import KEYS, BatchSampler, as_int32

    sampler = BatchSampler()
    scores = torch.tensor([[0.0, 5.0, 1.0, 4.9], [3.0, 0.0, 2.9, 0.0], [0.0, 0.0, 9.0, 8.0], [1.0, 2.0, 3.0, 4.0]])
    kwargs = {
        "temperature": [1.0, 2.0, 1.0, 0.5],
        "top_k": [1, 2, 0, 1],  # rows 0 and 3: greedy
        "top_p": [1.0, 1.0, 0.01, 1.0],  # row 2: only its best token is left
    }
    args = torch.stack([as_int32(key, kwargs[key], "cpu") for key in KEYS])
    for _ in range(20):
        out = sampler(None, scores, args)
        assert torch.equal(out[0], scores[0]) and torch.equal(out[3], scores[3])
        assert int(out[1].argmax()) in (0, 2) and torch.isinf(out[1]).sum() == 3
        assert int(out[2].argmax()) == 2
    greedy = torch.stack([as_int32(key, [1.0 if key != "top_k" else 1] * 4, "cpu") for key in KEYS])
    assert sampler(None, scores, greedy) is scores  # an all-greedy step is the manager's argmax
