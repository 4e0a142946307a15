"""GGUF export, the parts that need no llama.cpp / Go: conversion read back with gguf's own reader, the Modelfile,
and each bad input refused with nothing left in export_dir. The runtime checks are in test_gguf_live.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from expertkit.core.config import load_config
from expertkit.core.errors import ConfigError, ExpertkitError
from expertkit.export.config import ExportConfig

gguf = pytest.importorskip("gguf")


def gguf_config(base, out, adapter=None, **overrides) -> ExportConfig:
    keys = dict(model_name_or_path=str(base), export_dir=str(out), export_format="gguf")
    if adapter is None:
        keys["finetuning_type"] = "full"
    else:
        keys["adapter_name_or_path"] = str(adapter)
    keys.update(overrides)
    return load_config(ExportConfig, None, keys)


def field_value(reader, key: str):
    f = reader.fields[key]
    if len(f.types) == 1 and f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]].tolist()[0] if len(f.data) == 1 else [f.parts[i].tolist()[0] for i in f.data]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_tiny_qwen2_converts_to_f16_gguf_with_training_metadata(tiny_model, tokenizer, tmp_path):
    from safetensors import safe_open

    from expertkit.export.gguf_convert import convert

    info = convert(tiny_model, tokenizer, tmp_path / "model-f16.gguf", "f16")
    reader = gguf.GGUFReader(tmp_path / "model-f16.gguf")
    assert field_value(reader, "general.architecture") == "qwen2" == info.architecture
    assert (
        field_value(reader, "tokenizer.ggml.pre") == "qwen2" and field_value(reader, "tokenizer.ggml.model") == "gpt2"
    )
    assert field_value(reader, "tokenizer.chat_template") == tokenizer.chat_template
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert (
        field_value(reader, "tokenizer.ggml.eos_token_id") == eos == field_value(reader, "tokenizer.ggml.eot_token_id")
    )
    assert field_value(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == len(tokenizer)
    assert len(reader.fields["tokenizer.ggml.merges"].data) > 1000
    config = json.loads((tiny_model / "config.json").read_text())
    assert field_value(reader, "qwen2.block_count") == config["num_hidden_layers"]
    assert field_value(reader, "qwen2.context_length") == config["max_position_embeddings"]
    tensors = {t.name: t for t in reader.tensors}
    with safe_open(str(tiny_model / "model.safetensors"), framework="pt") as f:
        hf = {k: f.get_slice(k).get_shape() for k in f.keys()}
    assert len(tensors) == len(hf) == info.tensors  # tied embeddings: no output.weight, as llama.cpp writes them
    assert "output.weight" not in tensors
    assert list(tensors["token_embd.weight"].shape) == hf["model.embed_tokens.weight"][::-1]
    assert list(tensors["blk.1.attn_q.bias"].shape) == hf["model.layers.1.self_attn.q_proj.bias"]
    assert tensors["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_q8_0_quantizes_rows_that_fit_its_blocks(tiny_model, tokenizer, tmp_path):
    from expertkit.export.gguf_convert import convert

    convert(tiny_model, tokenizer, tmp_path / "q.gguf", "q8_0")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "q.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0  # rows of 64
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.F16  # rows of 176: not a multiple of 32


@pytest.mark.parametrize(
    ("template", "family", "system", "stop"),
    [
        (None, "chatml", "You are a helpful assistant.", "<|im_end|>"),
        ("qwen3", "qwen3", None, "<|im_end|>"),
        ("llama3", "llama3", None, "<|im_end|>"),
        ("deepseek3", "deepseek-r1", None, "<|im_end|>"),
    ],
)
def test_modelfile_has_the_templates_go_form_system_stops_and_context(tiny_model, template, family, system, stop):
    from transformers import AutoTokenizer

    from expertkit.export.modelfile import build_modelfile, template_family
    from expertkit.model.templates import apply_template

    tok = AutoTokenizer.from_pretrained(tiny_model)
    if template:
        tok.chat_template = {"qwen3": "", "llama3": "", "deepseek3": ""}[template] or None
        apply_template(tok, template)
    ollama = template_family(tok)
    assert (ollama.family, ollama.system) == (family, system)
    text = build_modelfile("model-q4_k_m.gguf", ollama, [stop, "<|endoftext|>"], 128, ["a header"])
    assert text.startswith("# a header\nFROM ./model-q4_k_m.gguf\n")
    assert f'TEMPLATE """{ollama.template}"""' in text
    assert ("SYSTEM " in text) == (system is not None)
    assert f'PARAMETER stop "{stop}"\nPARAMETER stop "<|endoftext|>"\nPARAMETER num_ctx 128' in text
    assert "bos" not in ollama.template.lower()


def test_export_with_skip_check_writes_gguf_modelfile_and_says_what_it_skipped(tiny_model, identity_adapter, tmp_path):
    from expertkit.export.gguf import run

    adapter = Path(identity_adapter[1].output_dir)
    result = run(gguf_config(tiny_model, tmp_path / "gguf", adapter, export_quantization="f16,q8_0", skip_check=True))
    out = tmp_path / "gguf"
    assert result.files == ["model-f16.gguf", "model-q8_0.gguf"]
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "model-f16.gguf", "model-q8_0.gguf"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gguf"], "temp folders left behind"
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model-f16.gguf" in modelfile and "PARAMETER num_ctx 128" in modelfile  # the run's cutoff_len
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    readme = (out / "README.md").read_text()
    assert "NOT CHECKED (skip_check)" in readme and "llama.cpp was not run" in readme
    assert any("merged model: logits equal" in c for c in result.checks)


def test_unknown_and_imatrix_quantizations_list_the_known_ones(tiny_model, tmp_path):
    with pytest.raises(ConfigError) as e:
        gguf_config(tiny_model, tmp_path / "g", export_quantization="f16,q4_k_x")
    assert "unknown quantisation 'q4_k_x'" in str(e.value) and "q4_k_m" in str(e.value) and "q8_0" in str(e.value)
    with pytest.raises(ConfigError, match="needs an importance matrix"):
        gguf_config(tiny_model, tmp_path / "g", export_quantization="iq2_xxs")
    assert gguf_config(tiny_model, tmp_path / "g", export_quantization=" F16 , Q4_K_M").export_quantization == (
        "f16,q4_k_m"
    )


def test_adapter_without_its_base_is_refused(identity_adapter, tmp_path):
    adapter = Path(identity_adapter[1].output_dir)
    with pytest.raises(ConfigError):
        load_config(ExportConfig, None, dict(adapter_name_or_path=str(adapter), export_dir=str(tmp_path / "g")))


def test_unsupported_architecture_names_the_families(tiny_model, tmp_path):
    from expertkit.export.gguf import run

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    config = json.loads((base / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExpertkitError, match="does not convert MistralForCausalLM") as e:
        run(gguf_config(base, tmp_path / "g", skip_check=True))
    assert "Qwen3" in str(e.value) and "Llama 3" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_unmapped_pre_tokenizer_is_refused(tokenizer):
    from tokenizers import pre_tokenizers

    from expertkit.export.gguf_convert import pre_tokenizer_name

    assert pre_tokenizer_name(tokenizer) == "qwen2"
    other = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    other.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    with pytest.raises(ExpertkitError, match="pre-tokenizer is not one llama.cpp implements") as e:
        pre_tokenizer_name(other)
    assert "llama-bpe" in str(e.value) and "nothing was written" in str(e.value)


def test_no_disk_room_says_how_much_is_needed_and_keeps_export_dir(tiny_model, tmp_path, monkeypatch):
    from expertkit.export import gguf as gguf_export

    out = tmp_path / "g"
    out.mkdir()
    (out / "Modelfile").write_text("FROM ./old.gguf\n")
    real = shutil.disk_usage
    monkeypatch.setattr(gguf_export.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(ExpertkitError, match=r"needs about [0-9.]+ GB .*f16 intermediate") as e:
        gguf_export.run(gguf_config(tiny_model, out, skip_check=True))
    assert "1e-06 GB are free" in str(e.value) or "0.0 GB are free" in str(e.value)
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["g"] and (out / "Modelfile").read_text() == "FROM ./old.gguf\n"
    )


def test_export_dir_holding_other_files_is_refused(tiny_model, tmp_path):
    from expertkit.export.gguf import run

    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "notes.txt").write_text("mine")
    with pytest.raises(ExpertkitError, match="not a model export"):
        run(gguf_config(tiny_model, tmp_path / "g", skip_check=True))
