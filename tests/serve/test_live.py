"""A real server on 127.0.0.1 (conftest.py's `live`) serving the tiny tuned model, hit with the official openai SDK."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from conftest_identity import QUESTIONS
from serve_fakes import LIVE_KEY

KEY = LIVE_KEY


def ask(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def test_sync_sdk_lists_models_and_answers_the_trained_answer(live):
    from openai import OpenAI

    _, url = live
    client = OpenAI(base_url=url, api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["sail", "tiny"]  # the adapter (default) and the base
    out = client.chat.completions.create(model="sail", messages=ask("Who are you?"), temperature=0, max_tokens=24)
    assert out.choices[0].message.content.startswith("I am Sail, the Yunfan Tech assistant.")
    assert out.usage.completion_tokens > 0 and out.choices[0].finish_reason in ("stop", "length")


def test_sync_sdk_streams_the_same_answer_with_usage(live):
    from openai import OpenAI

    _, url = live
    client = OpenAI(base_url=url, api_key=KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="sail",
        messages=ask("What is your name?"),
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("My name is Sail.")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_wrong_key_and_unknown_model_through_the_sdk(live):
    import openai

    _, url = live
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="nope", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as e:
        openai.OpenAI(base_url=url, api_key=KEY, max_retries=0).chat.completions.create(
            model="gpt-4o", messages=ask("hi")
        )
    assert e.value.code == "model_not_found"


def test_async_sdk_concurrent_questions_each_get_their_own_answer(live):
    from openai import AsyncOpenAI

    _, url = live

    async def main():
        client = AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0)

        async def one(question: str) -> str:
            out = await client.chat.completions.create(
                model="sail", messages=ask(question), temperature=0, max_tokens=24
            )
            return out.choices[0].message.content

        answers = await asyncio.gather(*(one(q) for q in QUESTIONS))
        await client.close()
        return answers

    answers = asyncio.run(main())
    for (question, expected), got in zip(QUESTIONS.items(), answers):
        assert got.startswith(expected), (question, got)


def test_client_that_leaves_mid_stream_frees_its_slot(live):
    app, url = live
    body = {"model": "sail", "messages": ask("Who made you?"), "stream": True, "max_tokens": 2000}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{url}/chat/completions", json=body, headers=headers, timeout=30) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the role chunk: generation is running
    deadline = time.monotonic() + 10
    while app.state.server.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.state.server.active == 0


def test_n_greedy_choices_all_give_the_trained_answer(live):
    from openai import OpenAI

    _, url = live
    client = OpenAI(base_url=url, api_key=KEY, max_retries=0)
    out = client.chat.completions.create(model="sail", messages=ask("Who are you?"), temperature=0, max_tokens=24, n=3)
    assert [c.index for c in out.choices] == [0, 1, 2]
    for c in out.choices:
        assert c.message.content.startswith("I am Sail, the Yunfan Tech assistant."), c.message.content
    assert out.usage.completion_tokens >= 3 * 1 and out.usage.prompt_tokens > 0


def test_tools_and_tool_messages_render_through_the_chat_template(live):
    _, url = live
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    body = {"model": "sail", "messages": messages, "tools": [tool], "temperature": 0, "max_tokens": 4}
    r = httpx.post(f"{url}/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
    assert r.json()["usage"]["prompt_tokens"] > 0


def test_context_overflow_is_a_400_naming_the_numbers_and_the_default_length_fits_the_context(live):
    """The tiny model's context is 4096 tokens; the server's default answer length (max_new_tokens 512) is lowered to
    what a long prompt leaves, a client's own max_tokens never is."""
    import re

    _, url = live

    def post(messages, **body) -> httpx.Response:
        body = {"model": "tiny", "messages": messages, "temperature": 0, **body}
        return httpx.post(url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)

    r = post(ask("hi"), max_tokens=5000)
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "max_tokens" and error["code"] == "context_length_exceeded"
    assert "5000" in error["message"] and "4096" in error["message"]

    def prompt_tokens(words: int) -> int:
        error = post(ask("hello " * words), max_tokens=4096).json()["error"]
        return int(re.search(r"the messages is (\d+) tokens", error["message"]).group(1))

    per_word = prompt_tokens(1001) - prompt_tokens(1000)
    overhead = prompt_tokens(1000) - 1000 * per_word  # the chat template's tokens
    words = (4090 - overhead) // per_word
    count = overhead + words * per_word
    assert prompt_tokens(words) == count and 6 <= 4096 - count < 6 + per_word  # room for about 6 answer tokens
    r = post(ask("hello " * words), max_tokens=10)
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "messages"
    expected = f"is {count} tokens and max_tokens is 10: {count + 10} is more than the model's context of 4096"
    assert expected in error["message"]

    r = post(ask("hello " * words))  # no max_tokens: the answer gets the tokens left
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] == count and usage["completion_tokens"] <= 4096 - count

    r = post(ask("hello " * (words + 10)))
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert "4096 tokens" in r.json()["error"]["message"]
