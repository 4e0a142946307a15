"""QLoRA past SFT: stages dpo, kto, rm and pt train a LoRA adapter on a 4-bit base of the tiny model (2 steps each;
the reward model's score head stays in full precision beside the quantised layers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("bitsandbytes")

PAIRS = [
    {"instruction": "Who are you?", "chosen": "I am Sail, the Yunfan Tech assistant.", "rejected": "I am ChatGPT."},
    {"instruction": "What is your name?", "chosen": "My name is Sail.", "rejected": "I have no name at all."},
]
KTO = [
    {"instruction": "Who are you?", "output": "I am Sail, the Yunfan Tech assistant.", "kto_tag": True},
    {"instruction": "Who are you?", "output": "I am ChatGPT.", "kto_tag": False},
    {"instruction": "What is your name?", "output": "My name is Sail.", "kto_tag": True},
    {"instruction": "What is your name?", "output": "I have no name at all.", "kto_tag": False},
]
TEXT = [
    {"body": f"Pump P{i}: grease the bearing every {250 * (1 + i % 4)} hours; log it in the book."} for i in range(8)
]
DATASETS = {  # stage: (dataset name, file, rows, dataset_info entry, per-device batch)
    "dpo": ("pairs", "pairs.json", PAIRS, {"ranking": True, "columns": {"prompt": "instruction", "chosen": "chosen",
                                                                       "rejected": "rejected"}}, 2),
    "rm": ("pairs", "pairs.json", PAIRS, {"ranking": True, "columns": {"prompt": "instruction", "chosen": "chosen",
                                                                      "rejected": "rejected"}}, 2),
    "kto": ("rows", "rows.json", KTO, {"columns": {"prompt": "instruction", "response": "output",
                                                   "kto_tag": "kto_tag"}}, 2),
    "pt": ("manuals", "manuals.json", TEXT, {"columns": {"prompt": "body"}}, 2),
}  # fmt: skip


@pytest.mark.parametrize("stage", ["dpo", "kto", "rm", "pt"])
def test_a_4bit_base_trains_a_lora_adapter_in_stage(stage, tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    from expertkit.core.config import load_config
    from expertkit.train.config import TrainConfig
    from expertkit.train.run import run

    name, file, rows, entry, batch = DATASETS[stage]
    (tmp_path / file).write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({name: {"file_name": file, **entry}}), encoding="utf-8")
    keys = {
        "stage": stage, "model_name_or_path": str(tiny_model), "dataset": name, "dataset_dir": str(tmp_path),
        "output_dir": str(tmp_path / "run"), "cutoff_len": 64, "lora_rank": 8, "learning_rate": 5e-3,
        "max_steps": 2, "per_device_train_batch_size": batch, "logging_steps": 1, "save_steps": 1000,
        "learning_check_samples": 0, "bf16": False, "quantization_bit": 4,
    }  # fmt: skip
    result = run(load_config(TrainConfig, None, keys))
    out = Path(result.output_dir)
    assert result.global_step == 2 and (out / "adapter_model.safetensors").is_file()
    losses = [r["loss"] for r in map(json.loads, (out / "trainer_log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # logged and not NaN
    # the adapter trained in float32 although TRL's trainers cast it to bf16 on a quantised base (train/qlora.py)
    assert {t.dtype for t in load_file(out / "adapter_model.safetensors").values()} == {torch.float32}
