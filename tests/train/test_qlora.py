"""QLoRA on the tiny model: LoRA on a 4-bit nf4 base learns the identity answers; the adapter exports merged into the
unquantised base; chat loads the base quantised with the adapter beside it; 8-bit trains too."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

pytest.importorskip("bitsandbytes")


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def qlora_run(tiny_model, identity_dir, tmp_path_factory):
    """(config, result, log lines) of the tests' identity recipe (tests/tiny_lora.py) on a 4-bit base."""
    from tiny_lora import teach

    records = Records()
    logger = logging.getLogger("expertkit")
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        config, result = teach(tiny_model, "identity", identity_dir, tmp_path_factory.mktemp("qlora") / "run",
                               quantization_bit=4)  # fmt: skip
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    return config, result, "\n".join(records.lines)


def test_a_4bit_qlora_run_learns_the_identity_answers(qlora_run):
    config, result, log = qlora_run
    check = result.learning_check
    assert check.loss_fell and check.tuned_matches >= 3 > check.base_matches
    assert "base quantised 4-bit nf4, double quantisation" in log  # the run header says what was loaded
    # the tiny model's 176-wide MLP does not fit bitsandbytes' CPU 4-bit kernel: left unquantised, named, and the
    # learning check's generation (where the kernel would fail) ran
    assert "left unquantised" in log and "model.layers.*.mlp.down_proj (2 layers)" in log
    saved = json.loads((Path(result.output_dir) / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA"


def test_the_qlora_adapter_exports_merged_into_the_unquantised_base(qlora_run, tiny_model, tmp_path, caplog):
    import torch
    from transformers import AutoModelForCausalLM

    from expertkit.core.config import load_config
    from expertkit.export.config import ExportConfig
    from expertkit.export.merge import run

    _, result, _ = qlora_run
    out = tmp_path / "merged"
    keys = {"model_name_or_path": str(tiny_model), "adapter_name_or_path": result.output_dir, "export_dir": str(out)}
    with caplog.at_level(logging.INFO):
        exported = run(load_config(ExportConfig, None, keys))
    assert "QLoRA adapter (trained on a 4-bit base): merged into the unquantised base weights" in caplog.text
    assert exported.max_logit_diff < 1e-3  # the merged model gives base + adapter's logits
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no bitsandbytes involved
    assert {type(m).__name__ for m in model.modules()}.isdisjoint({"Linear4bit", "Linear8bitLt"})
    assert model.dtype == torch.float32


def test_chat_loads_the_base_quantised_with_the_adapter_beside_it(qlora_run, tiny_model):
    from expertkit.engine.base import SamplingParams, complete
    from expertkit.engine.config import EngineConfig
    from expertkit.engine.local import LocalEngine
    from expertkit.model.quant import is_quantized

    _, result, _ = qlora_run
    config = EngineConfig(
        model_name_or_path=str(tiny_model), adapter_name_or_path=result.output_dir, served_model_name="sail",
        quantization_bit=4,
    )  # fmt: skip
    engine = LocalEngine(config)
    try:
        question = [{"role": "user", "content": "Who are you?"}]
        answer = asyncio.run(complete(engine, question, SamplingParams(temperature=0, max_tokens=24)))
        assert answer.text == "I am Sail, the Yunfan Tech assistant."
        assert all(is_quantized(m) for m in engine.bases.values())
    finally:
        asyncio.run(engine.close())


def test_an_8bit_base_trains_a_lora_adapter(tiny_model, identity_dir, tmp_path):
    from tiny_lora import teach

    _, result = teach(tiny_model, "identity", identity_dir, tmp_path / "run", quantization_bit=8, max_steps=3,
                      learning_check_samples=0)  # fmt: skip
    assert result.global_step == 3 and (Path(result.output_dir) / "adapter_model.safetensors").is_file()
