"""The model card (README.md) of an export: where it came from, how it was trained and checked, how to load it.

Figures come from the training run folder when it is local: `expertkit_config.yaml` (datasets and
hyper-parameters) and `learning_check.json` (did it learn); nothing is invented when they are missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from expertkit.core.runs import LEARNING_CHECK, RESOLVED_CONFIG

# training keys worth a line in the card, in this order
CARD_KEYS = [
    "finetuning_type",
    "template",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target",
    "freeze_trainable_layers",
    "learning_rate",
    "lr_scheduler_type",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "cutoff_len",
    "val_size",
    "seed",
]
LORA_ONLY = {"lora_rank", "lora_alpha", "lora_dropout", "lora_target"}


def write_model_card(out: Path, config, run_dir: Path | None, result) -> None:
    (out / "README.md").write_text(build_model_card(config, run_dir, result), encoding="utf-8")


def build_model_card(config, run_dir: Path | None, result) -> str:
    train = read_yaml(run_dir / RESOLVED_CONFIG) if run_dir else {}
    check = read_json(run_dir / LEARNING_CHECK) if run_dir else {}
    base = train.get("model_name_or_path") if config.finetuning_type != "lora" else config.model_name_or_path
    name = Path(config.export_dir).name
    lines = front_matter(base)
    lines += [f"# {name}", ""]
    what = (
        f"`{config.model_name_or_path}` with the LoRA adapter `{config.adapter_name_or_path}` merged into its weights"
        if config.adapter_name_or_path
        else f"the {config.finetuning_type}-tuned model `{config.model_name_or_path}`"
    )
    lines += [f"A standalone model: {what}, exported by expertkit. It loads with plain transformers.", ""]
    lines += source_section(config, base, train)
    lines += training_section(train)
    lines += learning_section(check)
    lines += [
        "## Export check",
        "",
        "Reloaded from disk with `AutoModelForCausalLM.from_pretrained` before it was moved into place:",
        "",
    ]
    lines += [f"- {c}" for c in result.checks]
    lines += [f"- weights: {result.dtype}, {', '.join(result.shards)}", ""]
    lines += usage_section(config)
    return "\n".join(lines) + "\n"


def front_matter(base: str | None) -> list[str]:
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": ["expertkit"]}
    if base and not Path(base).expanduser().exists():  # a hub id links the card to its base model on the hub
        meta["base_model"] = base
    return ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(), "---", ""]


def source_section(config, base: str | None, train: dict) -> list[str]:
    lines = ["## Source", "", f"- base model: `{base or 'unknown (no expertkit_config.yaml in the run folder)'}`"]
    if config.adapter_name_or_path:
        lines.append(f"- adapter: `{config.adapter_name_or_path}`")
    datasets = train.get("dataset")
    if datasets:
        names = datasets if isinstance(datasets, list) else [datasets]
        where = f" (from `{train['dataset_dir']}`)" if train.get("dataset_dir") else ""
        lines.append(f"- training data: {', '.join(f'`{d}`' for d in names)}{where}")
    if not train:
        lines.append("- training config: not found (the run folder has no expertkit_config.yaml)")
    return lines + [""]


def training_section(train: dict) -> list[str]:
    if not train:
        return []
    rows = []
    for key in CARD_KEYS:
        if key not in train or train[key] is None:
            continue
        if key in LORA_ONLY and train.get("finetuning_type") != "lora":
            continue
        if key == "freeze_trainable_layers" and train.get("finetuning_type") != "freeze":
            continue
        if key == "max_steps" and train[key] <= 0:
            continue
        if key == "num_train_epochs" and (train.get("max_steps") or 0) > 0:  # max_steps wins
            continue
        value = ", ".join(map(str, train[key])) if isinstance(train[key], list) else train[key]
        rows.append(f"| `{key}` | `{value}` |")
    return ["## Training", "", "| key | value |", "|---|---|", *rows, ""]


def learning_section(check: dict) -> list[str]:
    if not check:
        return []
    n = len(check.get("samples", []))
    lines = ["## Learning check (after training)", ""]
    first, last = check.get("first_loss"), check.get("last_loss")
    if first is not None and last is not None:
        lines.append(f"- training loss: {first:.4f} -> {last:.4f}")
    if n:
        lines.append(
            f"- training prompts answered as trained: tuned {check.get('tuned_matches', 0)}/{n}, "
            f"base {check.get('base_matches', 0)}/{n}"
        )
    if "max_logit_change" in check:
        lines.append(f"- max logit change from the base: {check['max_logit_change']:.3g}")
    lines += [f"- warning: {w}" for w in check.get("warnings", [])]
    return lines + [""]


def usage_section(config) -> list[str]:
    path = config.export_dir
    return [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{path}")  # with the chat template training used',
        f'model = AutoModelForCausalLM.from_pretrained("{path}", dtype="auto")',
        'messages = [{"role": "user", "content": "Who are you?"}]',
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, "
        'return_tensors="pt")',
        "out = model.generate(**inputs, max_new_tokens=256)  # stops at the template's end-of-turn token",
        'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
        "",
        f"It also serves as is: `vllm serve {path}`.",
    ]


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
