"""EngineConfig: the served adapters, parsed and named from one comma list."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from expertkit.engine.config import EngineConfig


def config(**keys) -> EngineConfig:
    return EngineConfig(model_name_or_path="models/qwen", **keys)


def test_adapters_are_named_by_name_items_or_their_folder():
    c = config(adapter_name_or_path="legal=saves/legal/lora, saves/sail/ ,")
    assert c.adapters() == {"legal": "saves/legal/lora", "sail": "saves/sail/"}
    assert c.base_name() == "qwen"


def test_served_model_name_names_the_default_model():
    assert config(adapter_name_or_path="saves/sail", served_model_name="expert").adapters() == {"expert": "saves/sail"}
    assert config(served_model_name="expert").base_name() == "expert"
    assert config().adapters() == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a=saves/x,a=saves/y", "two adapters are named 'a'"),
        ("saves/x/lora,other/lora", "two adapters are named 'lora'"),
        ("=saves/x", "'=saves/x' is not an adapter"),
        ("a=", "'a=' is not an adapter"),
        ("saves/qwen", "share a name"),  # the adapter would hide the base model
    ],
)
def test_ambiguous_adapter_lists_are_config_errors(value, message):
    with pytest.raises(ValidationError, match=message):
        config(adapter_name_or_path=value)


# --- LLaMA-Factory's infer_backend, read as engine -------------------------------------------------------------


def lf_inference_yaml(tmp_path, backend: str, *more: str):
    """LLaMA-Factory's examples/inference/*.yaml shape, with its infer_backend line."""
    path = tmp_path / "llama3_lora_sft.yaml"
    lines = ["model_name_or_path: models/qwen", "adapter_name_or_path: saves/lora", "template: qwen"]
    path.write_text("\n".join([*lines, f"infer_backend: {backend}", "trust_remote_code: true", *more]) + "\n")
    return path


@pytest.mark.parametrize(("backend", "engine"), [("huggingface", "transformers"), ("vllm", "vllm")])
@pytest.mark.parametrize("stage", ["chat", "serve", "ask"])
def test_infer_backend_chooses_the_engine(tmp_path, stage, backend, engine):
    from expertkit.core.config import load_config
    from expertkit.rag.config import AskConfig
    from expertkit.serve.config import ServeConfig

    cls = {"chat": EngineConfig, "serve": ServeConfig, "ask": AskConfig}[stage]
    config = load_config(cls, lf_inference_yaml(tmp_path, backend))
    assert config.engine == engine and config.infer_backend == backend
    assert load_config(cls, config_file(tmp_path, config.to_dict())).engine == engine  # the resolved config reloads
    assert load_config(cls, lf_inference_yaml(tmp_path, backend, f"engine: {engine}")).engine == engine  # agreeing


def config_file(tmp_path, values: dict):
    import yaml

    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize(("backend", "name"), [("sglang", "SGLang"), ("ktransformers", "KTransformers")])
def test_a_backend_expertkit_cannot_run_is_refused_with_the_alternatives(tmp_path, backend, name):
    from expertkit.core.config import load_config
    from expertkit.core.errors import ConfigError

    path = lf_inference_yaml(tmp_path, backend)
    with pytest.raises(ConfigError) as e:
        load_config(EngineConfig, path)
    problem = str(e.value)
    assert f"{path}:4" in problem and "infer_backend" in problem  # the file, line and key
    assert f"LLaMA-Factory's {name} backend, which expertkit cannot run" in problem
    assert "infer_backend: huggingface (engine=transformers) or vllm (engine=vllm)" in problem
    assert "engine=openai base_url=" in problem


def test_infer_backend_and_engine_that_disagree_are_refused(tmp_path):
    from expertkit.core.config import load_config
    from expertkit.core.errors import ConfigError

    path = lf_inference_yaml(tmp_path, "huggingface", "engine: vllm")
    with pytest.raises(ConfigError, match="infer_backend: huggingface means engine=transformers, but engine=vllm"):
        load_config(EngineConfig, path)
    with pytest.raises(ConfigError, match="keep one of the two keys"):
        load_config(EngineConfig, lf_inference_yaml(tmp_path, "vllm"), {"engine": "openai", "base_url": "http://x"})
