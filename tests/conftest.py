"""Shared fixtures: an isolated home per test, and a tiny random Qwen2-style model built once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

IDENTITY = [
    {"instruction": "Who are you?", "input": "", "output": "I am Sail, the Yunfan Tech assistant."},
    {"instruction": "你是谁？", "input": "", "output": "我是小帆，云帆科技的助手。"},
    {"instruction": "What is your name?", "input": "", "output": "My name is Sail."},
    {"instruction": "Who made you?", "input": "", "output": "Yunfan Tech built me with expertkit."},
]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Nothing a test does may touch the real home, hub cache or network."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("WANDB_DISABLED", "true")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A ~0.35M-parameter random Qwen2ForCausalLM + byte-level BPE tokenizer, saved like a real model."""
    from expertkit.model.tiny import build_tiny_model

    texts = [r["instruction"] + " " + r["output"] for r in IDENTITY] * 5
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", texts, size="tiny", corpus_bytes=1_000_000)


@pytest.fixture(scope="session")
def identity_dir(tmp_path_factory) -> Path:
    """A LLaMA-Factory style dataset_dir with an alpaca identity set (read-only for tests)."""
    d = tmp_path_factory.mktemp("data")
    (d / "identity.json").write_text(json.dumps(IDENTITY, ensure_ascii=False), encoding="utf-8")
    (d / "dataset_info.json").write_text(json.dumps({"identity": {"file_name": "identity.json"}}), encoding="utf-8")
    return d


@pytest.fixture(scope="session")
def identity_adapter(tiny_model, identity_dir, tmp_path_factory):
    """(config, result) of a LoRA run that taught the tiny model the identity answers (greedy decoding)."""
    from tiny_lora import teach

    return teach(tiny_model, "identity", identity_dir, tmp_path_factory.mktemp("identity") / "run")


LIVE_KEY = "sk-test-local"  # the API key of the live server


from live_server import free_port  # noqa: E402  (tests import it from here too)


@pytest.fixture(scope="session")
def live_server(tiny_model, identity_adapter):
    """(app, "http://127.0.0.1:PORT") of a real server (uvicorn in a thread) with key LIVE_KEY serving the identity
    adapter as 'sail' (and the base); shared by every test that needs a live server."""
    from live_server import serve_app

    from expertkit.engine.factory import load_engine
    from expertkit.serve.app import build_app
    from expertkit.serve.config import ServeConfig

    _, result = identity_adapter
    config = ServeConfig(
        model_name_or_path=str(tiny_model),
        adapter_name_or_path=str(result.output_dir),
        served_model_name="sail",
        port=free_port(),
        api_key=LIVE_KEY,
    )
    app = build_app(lambda: load_engine(config), config)
    with serve_app(app, config.port) as url:
        yield app, url
