"""The live tiny tuned model (conftest.py's `live`) through the official `ollama` client, /v1/completions with a raw
prompt, and /v1/embeddings (raw HTTP and the openai SDK, which asks for base64)."""

from __future__ import annotations

import math

import httpx
import pytest
from conftest_identity import QUESTIONS
from serve_fakes import LIVE_KEY

AUTH = {"Authorization": f"Bearer {LIVE_KEY}"}
GREEDY = {"temperature": 0, "num_predict": 24}


@pytest.fixture(scope="module")
def ollama_client(live):
    import ollama

    _, url = live
    return ollama.Client(host=url.removesuffix("/v1"), headers=AUTH)


def test_ollama_list_show_and_a_keyless_client(live, ollama_client):
    import ollama

    assert [m.model for m in ollama_client.list().models][0] == "sail"  # the default first (then the base)
    show = ollama_client.show("sail")
    assert "completion" in show.capabilities and show.details.family == "qwen2"
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=live[1].removesuffix("/v1")).list()
    assert e.value.status_code == 401 and "API key" in e.value.error


def test_ollama_chat_answers_the_trained_answer(ollama_client):
    out = ollama_client.chat(model="sail", messages=[{"role": "user", "content": "Who are you?"}], options=GREEDY)
    assert out.message.content.startswith(QUESTIONS["Who are you?"])
    assert out.done and out.done_reason in ("stop", "length") and out.eval_count > 0 and out.prompt_eval_count > 0
    assert out.total_duration >= out.eval_duration > 0


def test_ollama_chat_stream_and_generate(ollama_client):
    parts = list(
        ollama_client.chat(
            model="sail:latest",
            messages=[{"role": "user", "content": "What is your name?"}],
            options=GREEDY,
            stream=True,
        )
    )
    assert "".join(p.message.content for p in parts).startswith(QUESTIONS["What is your name?"])
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    out = ollama_client.generate(model="sail", prompt="Who made you?", options=GREEDY)  # chat template, as Ollama
    assert out.response.startswith(QUESTIONS["Who made you?"]) and out.done
    with pytest.raises(Exception) as e:
        ollama_client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404


def test_completion_continues_raw_text_and_generate_get(live):
    _, url = live
    body = {"model": "sail", "prompt": "Who are you?", "temperature": 0, "max_tokens": 8}
    out = httpx.post(f"{url}/completions", json=body, headers=AUTH, timeout=30).json()
    assert out["object"] == "text_completion" and out["usage"]["completion_tokens"] > 0
    assert out["usage"]["prompt_tokens"] < 10  # the bare prompt: no chat template around it
    r = httpx.get(url.removesuffix("/v1") + "/generate", params={"prompt": "Who are you?"}, headers=AUTH, timeout=30)
    assert r.json()["response"].startswith(QUESTIONS["Who are you?"])


def embed(url: str, texts) -> list[list[float]]:
    r = httpx.post(f"{url}/embeddings", json={"model": "sail", "input": texts}, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == list(range(len(body["data"])))
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    return [d["embedding"] for d in body["data"]]


def test_embeddings_are_stable_distinct_normalised_and_hidden_size(live, tiny_model):
    import json

    app, url = live
    hidden = json.loads((tiny_model / "config.json").read_text())["hidden_size"]
    texts = ["What is LoRA?", "The cat sat on the mat, then slept for a long while.", "What is LoRA?"]
    batch = embed(url, texts)
    alone = embed(url, "What is LoRA?")[0]
    assert all(len(v) == hidden for v in batch)
    assert all(abs(math.hypot(*v) - 1) < 1e-4 for v in batch)
    assert max(abs(a - b) for a, b in zip(batch[0], batch[2])) < 1e-5
    assert max(abs(a - b) for a, b in zip(batch[0], alone)) < 1e-4  # padding in a batch changes nothing
    assert max(abs(a - b) for a, b in zip(batch[0], batch[1])) > 1e-3


def test_openai_sdk_embeddings_and_metrics_after_live_requests(live):
    from openai import OpenAI

    _, url = live
    client = OpenAI(base_url=url, api_key=LIVE_KEY, max_retries=0)
    out = client.embeddings.create(model="sail", input=["hello", "world"])  # the SDK asks for base64
    assert len(out.data) == 2 and abs(sum(x * x for x in out.data[0].embedding) - 1) < 1e-3
    metrics = httpx.get(url.removesuffix("/v1") + "/metrics", headers=AUTH, timeout=10).text
    tokens = [line for line in metrics.splitlines() if line.startswith("expertkit_generated_tokens_total ")]
    assert float(tokens[0].split()[-1]) > 0
