"""What the gate's and the round's tests share: an untrained adapter (answers as the base does), a models file
serving it under an alias, and an eval YAML asking the identity questions the conftest's identity adapter learnt."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

QA = [
    ("Who are you?", "I am Sail, the Yunfan Tech assistant."),
    ("What is your name?", "My name is Sail."),
    ("Who made you?", "Yunfan Tech built me with expertkit."),
]


def untrained_adapter(model_dir: Path, folder: Path) -> Path:
    """A LoRA adapter whose B matrices are zero (peft's initialisation): the base model's answers, a worse model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")).save_pretrained(
        folder
    )
    return folder


def write_models(path: Path, base: Path, served: Path, name: str = "round0", alias: str = "expert") -> Path:
    path.write_text(
        yaml.safe_dump(
            {"base": str(base), "models": {name: {"adapter_name_or_path": str(served)}}, "aliases": {alias: name}},
            sort_keys=False,
        )  # fmt: skip
    )
    return path


def write_eval(folder: Path, **keys) -> Path:
    eval_file = folder / "held_out.jsonl"
    eval_file.write_text("".join(json.dumps({"question": q, "reference": r}) + "\n" for q, r in QA))
    path = folder / "eval.yaml"
    keys = {"eval_file": str(eval_file), "metrics": "rouge-l,contains", "max_new_tokens": 16, "concurrency": 4, **keys}
    path.write_text(yaml.safe_dump(keys))
    return path


def read_log(models: Path) -> list[dict]:
    path = Path(str(models) + ".promotions.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
