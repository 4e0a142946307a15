"""`/v1/completions` with several prompts and `n`: P prompts x n choices, choice index prompt_index * n + j, whole or
interleaved in one stream, usage counting each prompt once; against a fake engine, then the live tiny model through
the official openai SDK (LangChain's `OpenAI` LLM batches its prompts this way)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from serve_fakes import BASE_URL, LIVE_KEY, FakeEngine, make_client
from test_protocol import assert_error, sse_events

from expertkit.engine.base import Delta, TokenLogprob, Usage
from expertkit.serve.app import build_app
from expertkit.serve.config import ServeConfig


def answer(text: str, prompt_tokens: int, completion_tokens: int, finish: str = "stop") -> list[Delta]:
    return [Delta(text=text, finish_reason=finish, usage=Usage(prompt_tokens, completion_tokens))]


@pytest.mark.anyio
async def test_prompts_times_n_choices_in_order_with_usage_counting_each_prompt_once(client, fake):
    fake.queue += [answer("a1", 3, 1), answer("a2", 3, 2, "length"), answer("b1", 5, 3), answer("b2", 5, 4)]
    body = {"prompt": ["Hello", "Bye now"], "n": 2, "seed": 7, "max_tokens": 4}
    r = await client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert [(c["index"], c["text"], c["finish_reason"]) for c in out["choices"]] == [
        (0, "a1", "stop"),
        (1, "a2", "length"),
        (2, "b1", "stop"),
        (3, "b2", "stop"),
    ]
    assert out["usage"] == {"prompt_tokens": 8, "completion_tokens": 10, "total_tokens": 18}
    assert [prompt for prompt, _, _ in fake.calls] == ["Hello", "Hello", "Bye now", "Bye now"]
    # choice j of each prompt samples as choice j of that prompt sent alone
    assert [p.seed for _, p, _ in fake.calls] == [7, 8, 7, 8]


@pytest.mark.anyio
async def test_stream_interleaves_every_choice_with_its_echo_finish_and_one_usage(client, fake):
    fake.queue += [
        [Delta(text="x"), Delta(text="y", finish_reason="stop", usage=Usage(2, 2))],
        [Delta(text="z", finish_reason="length", usage=Usage(2, 1))],
        [Delta(text="w", finish_reason="stop", usage=Usage(4, 1))],
        [Delta(text="v"), Delta(text="u", finish_reason="stop", usage=Usage(4, 2))],
    ]
    body = {"prompt": ["A ", "B "], "n": 2, "stream": True, "echo": True, "stream_options": {"include_usage": True}}
    r = await client.post("/v1/completions", json=body)
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    echoes = [e["choices"][0] for e in events[:4]]
    assert [(c["index"], c["text"]) for c in echoes] == [(0, "A "), (1, "A "), (2, "B "), (3, "B ")]
    texts, finishes = {}, {}
    for e in events[:-2]:
        (c,) = e["choices"]
        texts[c["index"]] = texts.get(c["index"], "") + c["text"]
        if c["finish_reason"]:
            finishes.setdefault(c["index"], []).append(c["finish_reason"])
    assert texts == {0: "A xy", 1: "A z", 2: "B w", 3: "B vu"}
    assert finishes == {0: ["stop"], 1: ["length"], 2: ["stop"], 3: ["stop"]}
    usage = {"prompt_tokens": 6, "completion_tokens": 6, "total_tokens": 12}
    assert events[-2]["choices"] == [] and events[-2]["usage"] == usage
    assert all(e["usage"] is None for e in events[:-2]) and fake.closed_streams == 4


@pytest.mark.anyio
async def test_logprobs_per_choice_count_offsets_after_its_own_echo(client, fake):
    def tokens(*texts: str) -> list[TokenLogprob]:
        return [TokenLogprob(t, -0.5, list(t.encode())) for t in texts]

    fake.queue += [
        [Delta(text="ab", finish_reason="stop", usage=Usage(1, 2), logprobs=tokens("a", "b"))],
        [Delta(text="c", finish_reason="stop", usage=Usage(2, 1), logprobs=tokens("c"))],
    ]
    r = await client.post("/v1/completions", json={"prompt": ["Hi", "Hello"], "echo": True, "logprobs": 0})
    choices = r.json()["choices"]
    assert [c["text"] for c in choices] == ["Hiab", "Helloc"]
    assert [c["logprobs"]["text_offset"] for c in choices] == [[2, 3], [5]]
    assert [c["logprobs"]["tokens"] for c in choices] == [["a", "b"], ["c"]]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"prompt": ["x"] * 33}, "prompt", "at most 32"),
        ({"prompt": ["a", "b", ""]}, "prompt", "prompt[2] is empty"),
        ({"prompt": [1, 2, 3]}, "prompt", "token-id prompts"),
        ({"prompt": [[1, 2], [3]]}, "prompt", "token-id prompts"),
        ({"prompt": ["x"] * 17, "n": 2}, "n", "34 choices: at most 32"),
        ({"prompt": ["x", "y"], "n": 0}, "n", "n=0"),
    ],
)
async def test_bad_prompt_lists_are_400s_naming_the_problem_and_generate_nothing(client, fake, body, param, words):
    err = assert_error(await client.post("/v1/completions", json=body), 400, param=param)
    assert words in err.message and not fake.calls


@pytest.mark.anyio
async def test_each_prompt_is_checked_against_the_context_and_gets_the_length_it_leaves():
    fake = FakeEngine()
    fake.context_length = 20  # the fake counts a prompt's words as its tokens
    async with make_client(fake) as client:
        r = await client.post("/v1/completions", json={"prompt": ["one", "two three four", "w " * 30]})
        err = assert_error(r, 400, param="prompt", code="context_length_exceeded")
        assert err.message.startswith("prompt[2]: the prompt is 30 tokens") and not fake.calls
        r = await client.post("/v1/completions", json={"prompt": ["one", "w " * 16], "max_tokens": 5})
        err = assert_error(r, 400, param="prompt", code="context_length_exceeded")
        assert err.message.startswith("prompt[1]: ") and "max_tokens is 5" in err.message
        r = await client.post("/v1/completions", json={"prompt": ["one", "two three four"], "n": 2})
        assert r.status_code == 200, r.text
    assert [p.max_tokens for _, p, _ in fake.calls] == [19, 19, 17, 17]  # no max_tokens: what each prompt leaves


@pytest.mark.anyio
async def test_a_batch_is_admitted_once_and_released_when_every_choice_is_done():
    fake = FakeEngine()
    app = build_app(fake, ServeConfig(model_name_or_path="fake", max_concurrency=1, max_queue=0))
    state = app.state.server
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as client:
        fake.gate = asyncio.Event()
        body = {"prompt": ["a", "b"], "n": 2}
        first = asyncio.ensure_future(client.post("/v1/completions", json=body))
        while len(fake.calls) < 4:  # all four generations started, under one admission
            await asyncio.sleep(0.001)
        assert state.active == 1
        assert_error(await client.post("/v1/completions", json=body), 429, code="queue_full")
        fake.gate.set()
        r = await first
        assert r.status_code == 200 and len(r.json()["choices"]) == 4 and state.active == 0
        fake.gate = None
        r = await client.post("/v1/completions", json={**body, "stream": True})
        assert r.status_code == 200 and sse_events(r.text)[-1] == "[DONE]" and state.active == 0
    assert fake.closed_streams == 8


@pytest.mark.anyio
async def test_an_engine_failure_in_one_choice_stops_every_stream():
    class Failing(FakeEngine):
        async def stream(self, messages, params, model=None, tools=None):
            if messages == "bad":
                self.calls.append((messages, params, model))
                raise RuntimeError("boom")
                yield  # an async generator
            async for d in super().stream(messages, params, model):
                yield d

    fake = Failing(delay=0.05)
    async with make_client(fake) as client:
        r = await client.post("/v1/completions", json={"prompt": ["good", "bad"], "stream": True})
        events = sse_events(r.text)
        assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "engine_error"
        r = await client.post("/v1/completions", json={"prompt": ["good", "bad"]})
        assert_error(r, 500, code="engine_error")
    assert fake.closed_streams == 2  # the good prompt's streams, both times cut short
    assert fake.finished_streams == 0


# the live tiny model through the openai SDK


@pytest.fixture(scope="module")
def sdk(live):
    from openai import OpenAI

    return OpenAI(base_url=live[1], api_key=LIVE_KEY, max_retries=0)


PROMPTS = ["Who are you?", "The capital of France is"]


def test_sdk_prompt_list_with_n_gives_each_prompts_greedy_answer_n_times(sdk):
    alone = [sdk.completions.create(model="sail", prompt=p, temperature=0, max_tokens=8) for p in PROMPTS]
    out = sdk.completions.create(model="sail", prompt=PROMPTS, n=2, temperature=0, max_tokens=8)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    texts = [c.text for c in out.choices]
    assert texts == [alone[0].choices[0].text] * 2 + [alone[1].choices[0].text] * 2
    assert all(t for t in texts)
    assert out.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    assert out.usage.completion_tokens == 2 * sum(a.usage.completion_tokens for a in alone)
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_sdk_stream_of_a_prompt_list_matches_the_whole_answer_and_sums_usage(sdk):
    whole = sdk.completions.create(model="sail", prompt=PROMPTS, n=2, temperature=0, max_tokens=8, echo=True)
    stream = sdk.completions.create(
        model="sail",
        prompt=PROMPTS,
        n=2,
        temperature=0,
        max_tokens=8,
        echo=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    texts, finishes = {}, {}
    for chunk in chunks[:-1]:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert texts == {c.index: c.text for c in whole.choices}
    assert texts[0].startswith(PROMPTS[0]) and texts[2].startswith(PROMPTS[1])  # echo, per prompt
    assert finishes == {c.index: c.finish_reason for c in whole.choices}
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_prompt_list_errors_through_http_and_the_context_checked_for_every_prompt(live):
    app, url = live

    def post(**body) -> httpx.Response:
        body = {"model": "sail", "max_tokens": 8, **body}
        headers = {"Authorization": f"Bearer {LIVE_KEY}"}
        return httpx.post(url + "/completions", json=body, headers=headers, timeout=120)

    assert "at most 32" in assert_error(post(prompt=["hi"] * 33), 400, param="prompt").message
    assert "prompt[1] is empty" in assert_error(post(prompt=["hi", ""]), 400, param="prompt").message
    err = assert_error(post(prompt=[[15, 16], [17]]), 400, param="prompt", code="unsupported_value")
    assert "token-id" in err.message
    long = "hello " * 5000  # the tiny model's context is 4096 tokens
    for max_tokens in (None, 8):  # the server's default length, a client's own
        r = post(prompt=["hi", long], max_tokens=max_tokens)
        err = assert_error(r, 400, param="prompt", code="context_length_exceeded")
        assert err.message.startswith("prompt[1]: the prompt is ") and "4096 tokens" in err.message
    assert app.state.server.active == 0
