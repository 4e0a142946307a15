"""`tool_choice` "required" and a named function, forced: the server writes the call's start, the model its JSON
arguments (JSON mode), the parser the `tool_calls`; against a fake engine, a remote (forwarded as it is) and the real
tiny model behind a Hermes-style chat template, with the official openai SDK."""

from __future__ import annotations

import json
import shutil

import pytest
from chat_templates import HERMES_TEMPLATE
from fake_openai import CALLS, MODEL, build_fake_openai, free_port, running
from serve_fakes import LIVE_KEY
from test_protocol import HI, assert_error, sse_events

from expertkit.engine.base import Delta

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
WEATHER_START = '<tool_call>\n{"name": "get_weather", "arguments": '


class HermesTokenizer:
    """The two things the server reads of a chat tokenizer: its template's source and the rendered conversation."""

    chat_template = "{% for m in messages %}...{% endfor %} calls as <tool_call>{...}</tool_call>"
    bos_token = None

    def apply_chat_template(self, messages, tools=None, add_generation_prompt=False, tokenize=True):
        assert not tokenize and add_generation_prompt
        shown = "".join(json.dumps(t) for t in tools or [])
        return f"<tools>{shown}</tools>" + "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages) + "<|a|>\n"


@pytest.fixture
def hermes(fake):
    fake.tokenizer = HermesTokenizer()
    return fake


def only_call(r) -> tuple[str, dict]:
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None, choice
    (call,) = choice["message"]["tool_calls"]
    return call["function"]["name"], json.loads(call["function"]["arguments"])


@pytest.mark.anyio
async def test_a_named_function_is_forced_the_model_writes_only_its_arguments(client, hermes):
    hermes.queue.append('{"city": "Paris"}')
    body = {**HI, "tools": [WEATHER, TIME], "tool_choice": NAMED, "stop": ["}"], "max_tokens": 20}
    r = await client.post("/v1/chat/completions", json=body)
    assert only_call(r) == ("get_weather", {"city": "Paris"})
    prompt, params, _ = hermes.calls[0]
    assert isinstance(prompt, str) and prompt.startswith("<tools>") and '"get_time"' in prompt  # every tool shown
    assert prompt.endswith("<|user|>hi\n<|a|>\n" + WEATHER_START)
    # the arguments in JSON mode against the function's parameters (vLLM enforces the whole schema)
    schema = {"type": "json_schema", "json_schema": {"name": "arguments", "schema": WEATHER["function"]["parameters"]}}
    assert params.response_format == schema and params.stop == [] and params.max_tokens == 20


@pytest.mark.anyio
async def test_a_forced_call_streams_as_one_tool_calls_chunk(client, hermes):
    hermes.queue.append([Delta(text='{"city"'), Delta(text=': "Oslo"}')])
    body = {**HI, "tools": [WEATHER], "tool_choice": NAMED, "stream": True}
    events = sse_events((await client.post("/v1/chat/completions", json=body)).text)
    assert events[-1] == "[DONE]"
    choices = [e["choices"][0] for e in events[:-1]]
    assert "".join(c["delta"].get("content") or "" for c in choices) == ""
    (calls,) = [c["delta"]["tool_calls"] for c in choices if c["delta"].get("tool_calls")]
    assert [(t["index"], t["function"]["name"], json.loads(t["function"]["arguments"])) for t in calls] == [
        (0, "get_weather", {"city": "Oslo"})
    ]
    assert choices[-1]["finish_reason"] == "tool_calls"


@pytest.mark.anyio
async def test_required_with_several_tools_lets_the_model_name_one_of_them(client, hermes):
    hermes.queue.append('{"name": "get_time", "arguments": {"tz": "CET"}}')
    body = {**HI, "tools": [WEATHER, TIME], "tool_choice": "required"}
    assert only_call(await client.post("/v1/chat/completions", json=body)) == ("get_time", {"tz": "CET"})
    assert hermes.calls[0][0].endswith("<|a|>\n<tool_call>\n")


@pytest.mark.anyio
async def test_required_with_one_tool_is_that_tool_named(client, hermes):
    hermes.queue.append("{}")
    body = {**HI, "tools": [WEATHER], "tool_choice": "required"}
    assert only_call(await client.post("/v1/chat/completions", json=body)) == ("get_weather", {})
    assert hermes.calls[0][0].endswith(WEATHER_START)


@pytest.mark.anyio
async def test_required_whose_model_names_no_tool_is_one_clear_error(client, hermes):
    hermes.queue += ['{"name": "get_news", "arguments": {}}', '{"name": "get_time", "arguments": [1]}']
    body = {**HI, "tools": [WEATHER, TIME], "tool_choice": "required"}
    err = assert_error(await client.post("/v1/chat/completions", json=body), 500, "tool_choice", "tool_choice_unmet")
    assert "get_news" in err.message and "get_weather, get_time" in err.message and "name the function" in err.message
    events = sse_events((await client.post("/v1/chat/completions", json={**body, "stream": True})).text)
    assert events[-2]["error"]["code"] == "tool_choice_unmet" and events[-1] == "[DONE]"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "tools, tool_choice, words",
    [
        ([WEATHER], {"type": "function", "function": {"name": "get_news"}}, "not in tools: get_weather"),
        ([WEATHER], {"type": "function", "function": {}}, "has no name"),
        ([WEATHER], "any", '"required" or'),
        (None, "required", "needs `tools`"),
        (None, NAMED, "needs `tools`"),
    ],
)
async def test_tool_choice_the_server_cannot_honour_is_400(client, hermes, tools, tool_choice, words):
    body = {**HI, "tool_choice": tool_choice} | ({"tools": tools} if tools else {})
    err = assert_error(await client.post("/v1/chat/completions", json=body), 400, "tool_choice")
    assert words in err.message and hermes.calls == []


@pytest.mark.anyio
async def test_a_template_without_tool_call_blocks_or_no_tokenizer_is_400_naming_the_templates(client, fake):
    body = {**HI, "tools": [WEATHER], "tool_choice": NAMED}
    err = assert_error(await client.post("/v1/chat/completions", json=body), 400, "tool_choice", "unsupported_value")
    assert "Hermes/Qwen-style <tool_call>" in err.message
    fake.tokenizer = HermesTokenizer()
    fake.tokenizer.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert_error(await client.post("/v1/chat/completions", json=body), 400, "tool_choice")
    assert fake.calls == []


@pytest.mark.anyio
@pytest.mark.parametrize("tool_choice", [None, "auto"])
async def test_auto_or_absent_leaves_the_choice_to_the_model(client, hermes, tool_choice):
    hermes.queue.append("In prose.")
    body = {**HI, "tools": [WEATHER]} | ({"tool_choice": tool_choice} if tool_choice else {})
    r = await client.post("/v1/chat/completions", json=body)
    assert r.json()["choices"][0]["message"]["content"] == "In prose."
    messages, params, _ = hermes.calls[0]
    assert messages == [{"role": "user", "content": "hi"}] and params.response_format is None
    assert hermes.tools_seen == [[WEATHER]]


# ---- engine=openai: forwarded to the remote as it is ---------------------------------------------------------------


def test_engine_openai_forwards_tool_choice_to_the_remote():
    from openai import OpenAI

    from expertkit.engine.factory import load_engine
    from expertkit.serve.app import build_app
    from expertkit.serve.config import ServeConfig

    bodies: list[dict] = []
    with running(build_fake_openai(bodies), free_port()) as remote:
        config = ServeConfig(engine="openai", base_url=remote + "/v1", port=free_port())
        with running(build_app(lambda: load_engine(config), config), config.port) as url:
            client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
            ask = [{"role": "user", "content": "Weather in Oslo?"}]
            out = client.chat.completions.create(model=MODEL, messages=ask, tools=[WEATHER], tool_choice=NAMED)
            client.chat.completions.create(model=MODEL, messages=ask, tools=[WEATHER], tool_choice="required")
            client.chat.completions.create(model=MODEL, messages=ask, tools=[WEATHER], tool_choice="auto")
    assert [c.model_dump() for c in out.choices[0].message.tool_calls] == CALLS  # the remote's own calls
    assert [b.get("tool_choice") for b in bodies] == [NAMED, "required", None]


# ---- the real tiny model -------------------------------------------------------------------------------------------


# Qwen2.5's tool prompt, shortened: the tools in the system message, calls and results as Hermes blocks
@pytest.fixture(scope="module")
def hermes_live(tiny_model, tmp_path_factory):
    """(OpenAI client, model name) of a real server on the tiny model with a Qwen2.5-like tool template (the tiny
    model's own template ignores `tools`, so `live` refuses forcing)."""
    from openai import OpenAI

    from expertkit.engine.factory import load_engine
    from expertkit.serve.app import build_app
    from expertkit.serve.config import ServeConfig

    model = tmp_path_factory.mktemp("hermes") / "tiny-hermes"
    shutil.copytree(tiny_model, model)
    (model / "chat_template.jinja").write_text(HERMES_TEMPLATE, encoding="utf-8")
    config = ServeConfig(model_name_or_path=str(model), port=free_port(), api_key=LIVE_KEY, max_concurrency=2)
    with running(build_app(lambda: load_engine(config), config), config.port) as url:
        yield OpenAI(base_url=url + "/v1", api_key=LIVE_KEY, max_retries=0, timeout=120), "tiny-hermes"


ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_live_a_named_function_gets_its_call_from_the_random_model(hermes_live):
    client, model = hermes_live
    prose = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER], temperature=0, max_tokens=12)
    assert prose.choices[0].finish_reason != "tool_calls"  # left to itself, the random model writes no call
    out = client.chat.completions.create(
        model=model, messages=ASK, tools=[WEATHER, TIME], tool_choice=NAMED, temperature=0, max_tokens=24
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments), dict)
    assert call.id.startswith("call_") and 0 < out.usage.completion_tokens <= 24


def test_live_required_streamed_and_sampled_choices_are_calls(hermes_live):
    client, model = hermes_live
    calls: dict[int, dict] = {}
    finish = None
    stream = client.chat.completions.create(
        model=model, messages=ASK, tools=[TIME], tool_choice="required", max_tokens=16, seed=3, stream=True
    )
    for chunk in stream:
        for c in chunk.choices:
            assert not c.delta.content
            finish = c.finish_reason or finish
            for t in c.delta.tool_calls or []:
                calls[t.index] = {"name": t.function.name, "arguments": t.function.arguments}
    assert finish == "tool_calls" and [c["name"] for c in calls.values()] == ["get_time"]
    assert isinstance(json.loads(calls[0]["arguments"]), dict)
    out = client.chat.completions.create(
        model=model, messages=ASK, tools=[WEATHER], tool_choice=NAMED, n=2, seed=1, max_tokens=16
    )
    for choice in out.choices:
        assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]
        assert isinstance(json.loads(choice.message.tool_calls[0].function.arguments), dict)


def test_live_a_template_without_tool_calls_refuses_forcing(live):
    from openai import BadRequestError, OpenAI

    _, url = live
    client = OpenAI(base_url=url, api_key=LIVE_KEY, max_retries=0)
    with pytest.raises(BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER], tool_choice=NAMED, max_tokens=4)
    assert e.value.body["param"] == "tool_choice" and "<tool_call>" in e.value.body["message"]
