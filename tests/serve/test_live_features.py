"""The live server (tiny tuned model on 127.0.0.1) through the official openai SDK: JSON mode, seeds that repeat,
real logprobs in chat and legacy completions, and the same greedy answer whichever way it is decoded."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest_identity import QUESTIONS
from serve_fakes import LIVE_KEY


@pytest.fixture(scope="module")
def client(live):
    from openai import OpenAI

    return OpenAI(base_url=live[1], api_key=LIVE_KEY, max_retries=0)


def ask(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


@pytest.mark.parametrize("model", ["sail", "tiny"])
def test_json_object_answers_parse(client, model):
    for seed, temperature in [(1, 1.0), (2, 0.7), (3, 1.5), (None, 0.0)]:
        out = client.chat.completions.create(
            model=model,
            messages=ask("Who are you? Answer in JSON."),
            response_format={"type": "json_object"},
            temperature=temperature,
            seed=seed,
            max_tokens=40,
        )
        assert isinstance(json.loads(out.choices[0].message.content), dict), out.choices[0].message.content
    chunks = client.chat.completions.create(
        model=model,
        messages=ask("JSON please"),
        response_format={"type": "json_object"},
        seed=4,
        max_tokens=30,
        stream=True,
    )
    assert isinstance(json.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)), dict)


def test_seeded_answers_repeat_under_concurrent_load(client):
    def sample(seed: int) -> str:
        out = client.chat.completions.create(
            model="tiny", messages=ask("Hi"), temperature=1.0, seed=seed, max_tokens=16
        )
        return out.choices[0].message.content

    def greedy(question: str) -> str:
        return client.chat.completions.create(model="sail", messages=ask(question), temperature=0, max_tokens=24)

    first = sample(21)
    with ThreadPoolExecutor(8) as pool:
        crowd = [pool.submit(greedy, q) for q in QUESTIONS] + [pool.submit(sample, s) for s in (21, 21, 22)]
        results = [f.result() for f in crowd]
    assert results[4] == results[5] == first and results[6] != first


def test_chat_logprobs_are_real_and_the_greedy_answer_is_unchanged(client):
    plain = client.chat.completions.create(model="sail", messages=ask("Who made you?"), temperature=0, max_tokens=24)
    out = client.chat.completions.create(
        model="sail", messages=ask("Who made you?"), temperature=0, max_tokens=24, logprobs=True, top_logprobs=3
    )
    assert out.choices[0].message.content == plain.choices[0].message.content == QUESTIONS["Who made you?"]
    content = out.choices[0].logprobs.content
    assert "".join(t.token for t in content) == QUESTIONS["Who made you?"]
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token for t in content)
    assert all(t.logprob < 0 for t in content)


def test_completions_logprobs_through_the_sdk(client):
    out = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, temperature=0, logprobs=2)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    assert all(
        1 <= len(top) <= 3 and max(top.values()) >= lp.token_logprobs[i] for i, top in enumerate(lp.top_logprobs)
    )
    stream = client.completions.create(
        model="tiny", prompt="Hello", max_tokens=5, temperature=0, logprobs=2, stream=True
    )
    tokens = [t for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == lp.tokens


def test_ollama_client_format_json_and_seed(live):
    import ollama

    client = ollama.Client(host=live[1].removesuffix("/v1"), headers={"Authorization": f"Bearer {LIVE_KEY}"})
    options = {"seed": 3, "temperature": 1.0, "num_predict": 30, "repeat_penalty": 1.1}
    answers = [client.chat(model="tiny", messages=ask("hi"), format="json", options=options) for _ in range(2)]
    assert isinstance(json.loads(answers[0].message.content), dict)
    assert answers[0].message.content == answers[1].message.content
    schema = {"type": "array", "items": {"type": "integer"}}
    out = client.generate(model="tiny", prompt="numbers", format=schema, options={"seed": 1, "num_predict": 20})
    assert isinstance(json.loads(out.response), list)
