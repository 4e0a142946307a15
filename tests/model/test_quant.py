"""The quantisation keys (model/quant.py): bad values stop before any weights load; layers bitsandbytes' CPU 4-bit
kernel cannot take stay unquantised instead of failing inside it; a 4-bit base takes far less memory than bf16."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
import yaml

from expertkit.cli.main import main
from expertkit.core.config import load_config
from expertkit.core.errors import ConfigError, MissingExtraError
from expertkit.engine.config import EngineConfig
from expertkit.evaluate.config import EvalConfig
from expertkit.model.quant import QuantizationKeys, layers_left_unquantized, quantized_load_kwargs
from expertkit.train.config import TrainConfig
from expertkit.train.qlora import check_quantized_run

pytest.importorskip("bitsandbytes")


def random_model(folder, **shape):
    """A random Qwen2 model folder (weights only, no tokenizer): enough to load quantised and run forward."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    keys = dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4)
    config = Qwen2Config(**{**keys, "num_key_value_heads": 2, "tie_word_embeddings": True, **shape})
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return str(folder)


def train_yaml(tmp_path, **keys):
    path = tmp_path / "qlora.yaml"
    path.write_text(yaml.safe_dump({"model_name_or_path": "m", "dataset": "d", **keys}))
    return path


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ({"quantization_bit": 3}, "3 bits is not a bitsandbytes quantisation: use 4"),
        ({"quantization_bit": 4, "quantization_type": "int4"}, "quantization_type"),
        ({"quantization_bit": 4, "finetuning_type": "full"}, "a quantised base trains LoRA only"),
        ({"quantization_bit": 8, "finetuning_type": "freeze"}, "a quantised base trains LoRA only"),
    ],
)
def test_bad_quantization_values_are_config_errors_naming_the_key(tmp_path, keys, says):
    path = train_yaml(tmp_path, **keys)
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, path)
    assert says in str(e.value) and str(path) in str(e.value)


def test_the_cli_refuses_quantization_bit_3_without_a_traceback(tmp_path, capsys):
    assert main(["train", str(train_yaml(tmp_path)), "quantization_bit=3"]) != 0
    err = capsys.readouterr().err
    assert "quantization_bit" in err and "use 4 (QLoRA" in err and "Traceback" not in err


def test_chat_serve_and_eval_take_the_same_keys():
    from expertkit.evaluate.answering import engine_groups
    from expertkit.evaluate.config import Candidate

    assert EngineConfig(model_name_or_path="m", quantization_bit=8).describe_quantization() == "8-bit LLM.int8"
    config = EvalConfig(model_name_or_path="m", eval_file="q.jsonl", quantization_bit=4, double_quantization=False)
    [(engine_config, _)] = engine_groups([Candidate(name="base", model_name_or_path="m")], config)
    assert engine_config.describe_quantization() == "4-bit nf4"  # eval's local candidates load quantised
    with pytest.raises(ValueError, match="use 4 .QLoRA"):
        EngineConfig(model_name_or_path="m", quantization_bit=2)
    with pytest.raises(ValueError, match="vllm_config='{quantization: bitsandbytes}'"):
        EngineConfig(model_name_or_path="m", engine="vllm", quantization_bit=4)  # never silently unquantised


def test_zero3_or_fsdp_with_a_quantised_base_is_refused_before_loading(tmp_path):
    ds = tmp_path / "ds_z3.json"
    ds.write_text('{"zero_optimization": {"stage": 3}}')
    for deepspeed in (str(ds), {"zero_optimization": {"stage": 3}}):
        config = TrainConfig(model_name_or_path="m", dataset=["d"], quantization_bit=4, deepspeed=deepspeed)
        with pytest.raises(ConfigError, match="quantization_bit 4 with DeepSpeed ZeRO-3") as e:
            check_quantized_run(config)
        assert "ds_z2_config.json" in e.value.hint


def test_without_bitsandbytes_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(MissingExtraError, match="bitsandbytes") as e:
        check_quantized_run(TrainConfig(model_name_or_path="m", dataset=["d"], quantization_bit=4))
    assert "expertkit[qlora]" in str(e.value) + str(getattr(e.value, "hint", ""))


def test_a_352_wide_mlp_is_left_unquantised_on_cpu_instead_of_failing(tmp_path, caplog):
    """bitsandbytes 0.50 on an AVX512-BF16 CPU fails generating with a 4-bit layer whose input width is not a multiple
    of 64 (`shape '[128, 5]' is invalid for input of size 704` for a 352-wide down_proj)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path = random_model(tmp_path / "m", intermediate_size=352, num_hidden_layers=2)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with caplog.at_level(logging.WARNING):
        kwargs = quantized_load_kwargs(QuantizationKeys(quantization_bit=4), path, torch.float32)
    assert "left unquantised" in caplog.text and "model.layers.*.mlp.down_proj (2 layers)" in caplog.text
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs).eval()
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear"  # left alone
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"  # 128 in, 352 out: fits
    with torch.no_grad():
        assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == 8

    from bitsandbytes.functional import has_avx512bf16

    if has_avx512bf16():  # what the skip avoids, on the CPUs where bitsandbytes packs its weights
        plain = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
        broken = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, quantization_config=plain).eval()
        with torch.no_grad(), pytest.raises(RuntimeError, match="is invalid for input of size"):
            broken(ids)


def test_layers_left_unquantized_are_the_cpu_kernels_misfits():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(hidden_size=64, intermediate_size=176, num_hidden_layers=1,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=256))  # fmt: skip
    names = layers_left_unquantized(model)
    assert {n.rsplit(".", 1)[-1] for n in names} == {"gate_proj", "up_proj", "down_proj"}  # 176: not 64 / 32-wide


def test_a_4bit_base_holds_its_weights_in_far_less_memory_than_bf16(tmp_path):
    """The weights as loaded (what the run header's estimate counts): 4-bit nf4 vs bf16, on a model whose layers all
    fit the CPU kernel, so every decoder layer is quantised (the embedding and norms stay bf16 in both)."""
    from transformers import AutoModelForCausalLM

    from expertkit.train.report import estimate_memory

    path = random_model(tmp_path / "m")
    bf16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    kwargs = quantized_load_kwargs(QuantizationKeys(quantization_bit=4), path, torch.bfloat16)
    q4 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, **kwargs)
    kwargs8 = quantized_load_kwargs(QuantizationKeys(quantization_bit=8), path, torch.bfloat16)
    q8 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, **kwargs8)
    sizes = {name: m.get_memory_footprint() for name, m in (("bf16", bf16), ("nf4", q4), ("int8", q8))}
    assert sizes["nf4"] < 0.4 * sizes["bf16"], sizes  # measured: 0.32 (the bf16 embedding is ~8% of the model)
    assert sizes["nf4"] < sizes["int8"] < 0.65 * sizes["bf16"], sizes
    estimates = {name: estimate_memory(m, 0, 1, False, 2).weights for name, m in (("bf16", bf16), ("nf4", q4))}
    assert estimates["nf4"] < 0.4 * estimates["bf16"], estimates
