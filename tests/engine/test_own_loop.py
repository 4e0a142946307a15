"""The per-request decode loop on the real tiny model: seeds that repeat under load, repetition penalty as
transformers applies it, the model's real log probabilities, JSON mode, and the same greedy answer as continuous
batching."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from test_local import QUESTIONS

from expertkit.engine.base import SamplingParams, complete
from expertkit.engine.decode import needs_own_loop


def user(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def run(engine, question: str, model: str | None = None, **params):
    return complete(engine, user(question), SamplingParams(**params), model)


def test_which_requests_take_the_own_loop():
    assert not needs_own_loop(SamplingParams(temperature=0))
    assert not needs_own_loop(SamplingParams(temperature=0.8))  # unseeded sampling stays batched
    assert not needs_own_loop(SamplingParams(temperature=0, seed=3))  # greedy needs no seed
    assert needs_own_loop(SamplingParams(temperature=0.8, seed=3))
    assert needs_own_loop(SamplingParams(temperature=0, repetition_penalty=1.2))
    assert needs_own_loop(SamplingParams(temperature=0, logprobs=True))
    assert needs_own_loop(SamplingParams(temperature=0, response_format={"type": "json_object"}))
    assert not needs_own_loop(SamplingParams(temperature=0, response_format={"type": "text"}))


def test_greedy_answers_are_the_same_through_both_paths(engine):
    async def both():
        batched = [run(engine, q, temperature=0, max_tokens=24) for q in QUESTIONS]
        own = [run(engine, q, temperature=0, max_tokens=24, logprobs=True) for q in QUESTIONS]
        base = [run(engine, "Hi", "tiny", temperature=0, max_tokens=12, **kw) for kw in ({}, {"logprobs": True})]
        return await asyncio.gather(*batched, *own, *base)

    answers = asyncio.run(both())
    batched, own, base = answers[:4], answers[4:8], answers[8:]
    for (question, expected), b, o in zip(QUESTIONS.items(), batched, own):
        assert b.text == o.text == expected, question
        assert (b.finish_reason, b.usage) == (o.finish_reason, o.usage)
    assert base[0].text == base[1].text and base[0].usage == base[1].usage  # the random base model: 12 tokens of it
    # continuous batching runs on its own copy of each model (engine.local.batching_copy): its forwards, which set
    # config.is_causal=False for their length, never leak into the model the own loop and embeddings use
    assert all(getattr(engine.pick(n).model.config, "is_causal", None) is None for n in engine.model_names())
    stopped = asyncio.run(run(engine, "Who are you?", temperature=0, stop=["Yunfan"], logprobs=True))
    assert stopped.text == "I am Sail, the " and stopped.finish_reason == "stop"


def test_a_seed_repeats_its_answer_whatever_runs_beside_it(engine):
    params = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 24}
    alone = asyncio.run(run(engine, "Hi", "tiny", seed=11, **params))

    async def crowded():
        others = [run(engine, q, temperature=1.0, max_tokens=24) for q in QUESTIONS]  # unseeded: batched
        others += [run(engine, "Hi", "tiny", seed=s, **params) for s in (12, 13)]
        return await asyncio.gather(run(engine, "Hi", "tiny", seed=11, **params), *others)

    crowd = asyncio.run(crowded())
    assert crowd[0].text == alone.text and crowd[0].usage == alone.usage
    assert len({alone.text, crowd[-2].text, crowd[-1].text}) == 3  # other seeds, other answers
    assert alone.usage.completion_tokens == 24


def test_repetition_penalty_matches_transformers_generate(engine):
    """The own loop's greedy answer with a penalty is token for token what model.generate gives with it."""
    import torch

    answers = {}
    for model, question, penalty in [("tiny", "Hi", 1.3), ("sail", "Who are you?", 1.3), ("sail", "Who are you?", 3.0)]:
        served = engine.pick(model)
        prompt = engine.prompt_ids(user(question), model)
        out = asyncio.run(run(engine, question, model, temperature=0, max_tokens=16, repetition_penalty=penalty))
        with torch.inference_mode():
            ids = served.model.generate(
                torch.tensor([prompt]),
                do_sample=False,
                max_new_tokens=16,
                repetition_penalty=penalty,
                eos_token_id=served.eos_ids,
                pad_token_id=served.tokenizer.pad_token_id,
            )[0, len(prompt) :].tolist()
        assert out.text == served.tokenizer.decode(ids, skip_special_tokens=True), (model, penalty)
        answers[model, penalty] = out.text
    assert answers["sail", 3.0] != QUESTIONS["Who are you?"][: len(answers["sail", 3.0])]  # it changed the answer


def test_logprobs_are_the_models_own_with_the_top_alternatives(engine):
    """Each answer token's logprob is the model's log-softmax at its position (checked against one forward pass of
    prompt + answer); top_logprobs lists the n most likely, best first, the greedy choice among them."""
    import torch

    out = asyncio.run(run(engine, "Who are you?", temperature=0, logprobs=True, top_logprobs=5))
    assert out.text == QUESTIONS["Who are you?"]
    served = engine.pick()
    prompt = engine.prompt_ids(user("Who are you?"))
    answer = served.tokenizer(out.text, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = served.model(torch.tensor([prompt + answer])).logits[0].float()
    expected = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    assert [t.token for t in out.logprobs] == [served.tokenizer.decode([i]) for i in answer]
    for k, (t, token) in enumerate(zip(out.logprobs, answer)):
        assert t.logprob == pytest.approx(float(expected[k, token]), abs=1e-4)
        assert len(t.top) == 5 and [a.logprob for a in t.top] == sorted((a.logprob for a in t.top), reverse=True)
        assert t.top[0].token == t.token and t.top[0].logprob == t.logprob  # greedy: the best one
        assert t.top[1].logprob == pytest.approx(float(expected[k].topk(2).values[1]), abs=1e-4)
    assert any(t.logprob < -1e-3 for t in out.logprobs)  # real values, not 0.0
    sampled = asyncio.run(run(engine, "Hi", "tiny", temperature=1.5, seed=2, max_tokens=8, logprobs=True))
    assert len(sampled.logprobs) == 8 and all(t.top == [] and t.logprob <= 0 for t in sampled.logprobs)


@pytest.mark.parametrize("model", ["tiny", "sail"])
def test_json_mode_answers_are_valid_json(engine, model):
    async def many():
        asks = [
            run(engine, "Give me JSON", model, temperature=t, seed=s, max_tokens=m, response_format={"type": k})
            for (t, s, m, k) in [
                (0.0, None, 24, "json_object"),
                (1.0, 1, 48, "json_object"),
                (1.0, 2, 6, "json_object"),
                (1.8, 3, 32, "json_object"),
                (0.7, 4, 20, "json_object"),
            ]
        ]
        schema = {"type": "json_schema", "json_schema": {"name": "xs", "schema": {"type": "array"}}}
        asks.append(run(engine, "Give me JSON", model, temperature=1.0, seed=5, max_tokens=16, response_format=schema))
        return await asyncio.gather(*asks)

    answers = asyncio.run(many())
    for out in answers[:-1]:
        assert isinstance(json.loads(out.text), dict), out.text
        assert out.finish_reason == "stop"
    assert isinstance(json.loads(answers[-1].text), list), answers[-1].text


def test_abandoned_own_loop_stream_stops_its_worker(engine, monkeypatch):
    import expertkit.engine.answer as answer

    ended, steps = threading.Event(), []

    def counting(model, tokenizer, prompt, params, eos_ids, emit, cancelled):
        try:
            answer_decode(model, tokenizer, prompt, params, eos_ids, lambda s: (steps.append(s), emit(s)), cancelled)
        finally:
            ended.set()

    answer_decode = answer.decode
    monkeypatch.setattr(answer, "decode", counting)

    async def start_then_leave():
        params = SamplingParams(temperature=1.0, seed=1, max_tokens=3000)
        stream = engine.stream(user("Hi"), params, "tiny")
        await stream.__anext__()
        await stream.aclose()
        return await asyncio.to_thread(ended.wait, 10)

    assert asyncio.run(start_then_leave())
    assert len(steps) < 3000
