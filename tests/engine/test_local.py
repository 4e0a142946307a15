"""The local engine on the real tiny model: batched requests keep their own answers; stops; cancellation."""

from __future__ import annotations

import asyncio
import io

from expertkit.engine.base import SamplingParams, complete

QUESTIONS = {
    "Who are you?": "I am Sail, the Yunfan Tech assistant.",
    "你是谁？": "我是小帆，云帆科技的助手。",
    "What is your name?": "My name is Sail.",
    "Who made you?": "Yunfan Tech built me with expertkit.",
}


def ask(engine, question: str, **params):
    return complete(engine, [{"role": "user", "content": question}], SamplingParams(temperature=0, **params))


def test_concurrent_requests_each_get_their_own_trained_answer(engine):
    async def all_at_once():
        return await asyncio.gather(*[ask(engine, q, max_tokens=32) for q in QUESTIONS])

    answers = asyncio.run(all_at_once())
    for (question, expected), got in zip(QUESTIONS.items(), answers):
        assert got.text == expected, question
        assert got.finish_reason == "stop" and got.usage.completion_tokens > 0 and got.usage.prompt_tokens > 10
    assert engine.model_names() == ["sail", "tiny"]  # the adapter (the default) and the base


def test_stop_strings_and_length(engine):
    stopped = asyncio.run(ask(engine, "Who are you?", max_tokens=32, stop=["Yunfan"]))
    assert stopped.text == "I am Sail, the " and stopped.finish_reason == "stop"
    short = asyncio.run(ask(engine, "Who are you?", max_tokens=3))
    assert short.finish_reason == "length" and short.usage.completion_tokens == 3
    assert "I am Sail, the Yunfan Tech assistant.".startswith(short.text)


def test_abandoned_stream_frees_its_slot(engine):
    async def start_then_leave():
        stream = engine.stream([{"role": "user", "content": "Who made you?"}], SamplingParams(temperature=0))
        first = await stream.__anext__()
        await stream.aclose()  # the client went away
        return first

    assert asyncio.run(start_then_leave()).text
    assert asyncio.run(ask(engine, "What is your name?", max_tokens=16)).text == "My name is Sail."


def test_terminal_chat_streams_and_keeps_history(engine):
    from expertkit.cli.chat import run_chat

    class KeepOpen:  # run_chat closes the engine at the end; the module fixture still needs it
        def __init__(self, inner):
            self.inner = inner

        def model_names(self):
            return self.inner.model_names()

        def stream(self, *a, **k):
            return self.inner.stream(*a, **k)

        async def close(self):
            pass

    out = io.StringIO()
    run_chat(
        KeepOpen(engine),
        SamplingParams(temperature=0, max_tokens=24),
        stdin=io.StringIO("Who are you?\n/system Be brief.\n/nope\nWho made you?\n/reset\n/exit\nignored\n"),
        out=out,
    )
    text = out.getvalue()
    assert "chatting with sail" in text
    assert "I am Sail, the Yunfan Tech assistant." in text and "Yunfan Tech built me with expertkit." in text
    assert "(system prompt set; history cleared)" in text and "unknown command /nope" in text
    assert "ignored" not in text


def test_prompt_ids_give_tools_to_the_chat_template():
    from types import SimpleNamespace

    from expertkit.engine.local import LocalEngine

    seen = []

    def template(messages, **kw):
        seen.append(kw.get("tools"))
        return [1, 2, 3]

    served = SimpleNamespace(tokenizer=SimpleNamespace(apply_chat_template=template))
    fake_self = SimpleNamespace(pick=lambda model=None: served)
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert LocalEngine.prompt_ids(fake_self, [{"role": "user", "content": "hi"}], None, tools) == [1, 2, 3]
    assert LocalEngine.prompt_ids(fake_self, [{"role": "user", "content": "hi"}]) == [1, 2, 3]
    assert seen == [tools, None]


def test_logprobs_one_per_answer_token(engine):
    """Greedy: a log probability per generated token (the end token aside), each <= 0 and the best of its top list;
    sampled at temperature 1 the values are the model's own and some are below 0."""
    out = asyncio.run(ask(engine, "Who are you?", logprobs=True, top_logprobs=3))
    assert out.text == QUESTIONS["Who are you?"]
    ended_by_eos = out.finish_reason == "stop"
    assert len(out.logprobs) == out.usage.completion_tokens - (1 if ended_by_eos else 0)
    assert "".join(t.token for t in out.logprobs) == out.text
    for t in out.logprobs:
        assert t.logprob <= 0 and t.bytes == list(t.token.encode("utf-8"))
        assert t.top and t.logprob == max(a.logprob for a in t.top) and t.top[0].token == t.token
    assert asyncio.run(ask(engine, "Who are you?")).logprobs is None  # not asked for
    params = SamplingParams(temperature=1.0, seed=1, max_tokens=8, logprobs=True)
    sampled = asyncio.run(complete(engine, [{"role": "user", "content": "Hi"}], params))
    assert sampled.logprobs and all(t.logprob <= 0 and t.top == [] for t in sampled.logprobs)
    assert any(t.logprob < 0 for t in sampled.logprobs)
