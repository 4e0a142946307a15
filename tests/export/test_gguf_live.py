"""GGUF export against the real runtimes: llama.cpp (node-llama-cpp from npm) and Go's text/template.

Slow (npm install on first use, llama.cpp loads): skipped unless EXPERTKIT_GGUF_LIVE=1; `.ci/gguf-tests` installs
what they need and runs them. node-llama-cpp is installed once into EXPERTKIT_LLAMA_RUNTIME_DIR (default: the real
~/.cache/expertkit/node-llama-cpp, kept across the tests' isolated homes).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from expertkit.core.config import load_config
from expertkit.export.config import ExportConfig

pytestmark = [
    pytest.mark.gguf_live,
    pytest.mark.skipif(
        os.environ.get("EXPERTKIT_GGUF_LIVE") != "1", reason="set EXPERTKIT_GGUF_LIVE=1 (.ci/gguf-tests)"
    ),
]
RUNTIME = os.environ.get("EXPERTKIT_LLAMA_RUNTIME_DIR") or str(Path.home() / ".cache" / "expertkit" / "node-llama-cpp")


@pytest.fixture(autouse=True)
def shared_runtime(monkeypatch):
    monkeypatch.setenv("EXPERTKIT_LLAMA_RUNTIME_DIR", RUNTIME)


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> Path:
    """The tiny Qwen2 model with 256-wide rows, so that q4_k_m's 256-value blocks really apply."""
    from conftest import IDENTITY

    from expertkit.model.tiny import build_tiny_model

    texts = [r["instruction"] + " " + r["output"] for r in IDENTITY] * 5
    shape = dict(hidden_size=256, intermediate_size=512)
    return build_tiny_model(tmp_path_factory.mktemp("m") / "w", texts, corpus_bytes=1_000_000, shape=shape)


def test_f16_and_q4_k_m_load_in_llama_cpp_and_answer_as_transformers(tiny_model, identity_adapter, tmp_path):
    """The identity adapter's answers, through llama.cpp, as transformers gives them; the TEMPLATE as Jinja."""
    from expertkit.export.gguf import run

    adapter = Path(identity_adapter[1].output_dir)
    keys = dict(
        model_name_or_path=str(tiny_model), adapter_name_or_path=str(adapter), export_dir=str(tmp_path / "gguf"),
        export_format="gguf", export_quantization="f16,q4_k_m",
    )  # fmt: skip
    result = run(load_config(ExportConfig, None, keys))
    assert result.files == ["model-f16.gguf", "model-q4_k_m.gguf"] and not result.skipped
    checks = "\n".join(result.checks)
    assert "Modelfile TEMPLATE rendered by Go's text/template equals the chat template" in checks
    f16 = next(c for c in result.checks if c.startswith("f16:"))
    assert "tokenizes all" in f16 and "held to transformers' greedy tokens" in f16
    assert "answer(s) stop on an end token and llama.cpp stops there too" in f16 and " 0 answer(s)" not in f16
    agree, total = (int(x) for x in f16.split("greedy agreement ")[1].split(" ")[0].split("/"))
    assert agree == total  # the trained answers are clear choices: every greedy token equal
    assert any(c.startswith("q4_k_m: llama.cpp tokenizes all") for c in result.checks)
    modelfile = (tmp_path / "gguf" / "Modelfile").read_text()
    assert "FROM ./model-f16.gguf" in modelfile and 'SYSTEM "You are a helpful assistant."' in modelfile


def test_q8_0_and_q4_k_m_on_wide_rows(wide_model, tmp_path):
    from expertkit.export.gguf import run

    keys = dict(
        model_name_or_path=str(wide_model), finetuning_type="full", export_dir=str(tmp_path / "g"),
        export_format="gguf", export_quantization="q4_k_m,q8_0",
    )  # fmt: skip
    result = run(load_config(ExportConfig, None, keys))
    assert result.files == ["model-q4_k_m.gguf", "model-q8_0.gguf"]
    assert not (tmp_path / "g" / "model-f16.gguf").exists()  # the intermediate is not kept unless asked for
    assert any(c.startswith("q8_0:") and "held to" in c for c in result.checks)
    assert "FROM ./model-q4_k_m.gguf" in (tmp_path / "g" / "Modelfile").read_text()


@pytest.mark.parametrize("template", ["qwen", "chatml", "qwen3", "deepseek3", "llama3"])
def test_each_families_go_template_renders_what_the_chat_template_renders(tiny_model, template):
    from transformers import AutoTokenizer

    from expertkit.core.errors import Problem
    from expertkit.export.gguf_check import check_template
    from expertkit.export.modelfile import template_family
    from expertkit.model.templates import apply_template

    tok = AutoTokenizer.from_pretrained(tiny_model)
    apply_template(tok, template)
    ollama = template_family(tok)
    problems: list[Problem] = []
    lines = check_template(tok, ollama, bool(ollama.bos_text), problems)
    assert not problems and lines


def test_a_template_difference_fails_the_export_and_writes_nothing(tiny_model, tmp_path, monkeypatch):
    from expertkit.core.errors import ExpertkitError
    from expertkit.export import modelfile
    from expertkit.export.gguf import run

    chatml, system_re = modelfile.FAMILIES["chatml"]
    monkeypatch.setitem(
        modelfile.FAMILIES,
        "chatml",
        (chatml.replace("<|im_end|>\n{{ end }}{{ end }}", "{{ end }}{{ end }}"), system_re),
    )
    keys = dict(
        model_name_or_path=str(tiny_model), finetuning_type="full", export_dir=str(tmp_path / "g"), export_format="gguf"
    )
    with pytest.raises(ExpertkitError, match="TEMPLATE") as e:
        run(load_config(ExportConfig, None, keys))
    assert "multi-turn" in str(e.value) and "nothing was written" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    assert shutil.which("go")


def test_qwen25_tools_go_template_renders_tools_calls_and_results_as_the_chat_template(tiny_model):
    """Qwen2.5's own template: its Go form carries the tools, the calls and grouped results (JSON compared as JSON)."""
    from chat_templates import HERMES_TEMPLATE, QWEN25_TEMPLATE
    from transformers import AutoTokenizer

    from expertkit.core.errors import Problem
    from expertkit.export.gguf_check import check_template
    from expertkit.export.modelfile import template_family

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = QWEN25_TEMPLATE
    ollama = template_family(tok)
    assert ollama.family == "qwen2.5-tools" and ollama.system.startswith("You are Qwen")
    problems: list[Problem] = []
    lines = check_template(tok, ollama, bool(ollama.bos_text), problems)
    assert not problems, problems
    assert "tool calls" in lines[0] and any("compactly" in line for line in lines)
    # a tools template without a Go form: written without tools, and the report says Ollama refuses tool requests
    tok.chat_template = HERMES_TEMPLATE
    ollama = template_family(tok)
    assert ollama.family == "chatml" and "refuses requests with tools" in ollama.tools_note
    assert any("refuses requests with tools" in line for line in check_template(tok, ollama, False, []))


@pytest.mark.parametrize(
    ("arch", "template"),
    [("Qwen3ForCausalLM", "qwen3"), ("LlamaForCausalLM", "llama3")],
)
def test_qwen3_and_llama3_models_convert_and_answer_in_llama_cpp_as_in_transformers(
    tiny_model, tmp_path, arch, template
):
    """The other two families, as random models of the tiny one's shape: Qwen3 (q/k norms) and Llama 3.1 (the q/k
    permutation, llama3 rope factors). f16 is held to transformers' greedy tokens, q8_0 within its margin."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from expertkit.export.gguf import run

    base = AutoConfig.from_pretrained(tiny_model).to_dict()
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "bos_token_id", "eos_token_id",
            "pad_token_id", "tie_word_embeddings")  # fmt: skip
    shape = {k: base[k] for k in keep}
    if arch == "LlamaForCausalLM":
        shape["rope_scaling"] = {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 1024, "rope_theta": 500000.0,
        }  # fmt: skip
        config = transformers.LlamaConfig(**shape)
    else:
        config = transformers.Qwen3Config(head_dim=base["hidden_size"] // base["num_attention_heads"], **shape)
    torch.manual_seed(1)
    model = getattr(transformers, arch)(config).to(torch.float32)
    src = tmp_path / "model"
    model.save_pretrained(src)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    from expertkit.model.templates import apply_template

    apply_template(tok, template)
    tok.save_pretrained(src)
    keys = dict(
        model_name_or_path=str(src), finetuning_type="full", export_dir=str(tmp_path / "gguf"),
        export_format="gguf", export_quantization="f16,q8_0",
    )  # fmt: skip
    result = run(load_config(ExportConfig, None, keys))
    assert result.files == ["model-f16.gguf", "model-q8_0.gguf"] and not result.skipped
    checks = "\n".join(result.checks)
    assert "Modelfile TEMPLATE rendered by Go's text/template equals the chat template" in checks
    assert f"({'qwen3' if template == 'qwen3' else 'llama3'}" in checks
    f16 = next(c for c in result.checks if c.startswith("f16:"))
    assert "tokenizes all" in f16 and "held to transformers' greedy tokens" in f16
