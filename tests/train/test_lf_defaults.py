"""Same YAML, same run: expertkit's defaults are LLaMA-Factory's for every key that changes what is computed, and a
LLaMA-Factory key that changes the result is never silently ignored."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import yaml

from expertkit.cli.main import main
from expertkit.core.config import describe_keys, load_config
from expertkit.core.errors import ConfigError
from expertkit.train.config import TrainConfig
from expertkit.train.lf_keys import LF_REFUSED, LF_UNSUPPORTED

# LLaMA-Factory 0.9.x, read from its hparams dataclasses (finetuning_args.py: LoraArguments, FreezeArguments;
# data_args.py: DataArguments; model_args.py) and, for the training keys it keeps, transformers'
# Seq2SeqTrainingArguments (llamafactory-cli passes them through unchanged).
LLAMA_FACTORY_DEFAULTS = {
    # transformers' TrainingArguments, kept by LLaMA-Factory
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "learning_rate": 5e-5,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0,
    "num_train_epochs": 3.0,
    "max_steps": -1,
    "weight_decay": 0.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "max_grad_norm": 1.0,
    "seed": 42,
    "save_steps": 500,
    "save_total_limit": None,
    "eval_strategy": "no",
    "eval_steps": None,
    # FinetuningArguments / LoraArguments / FreezeArguments
    "stage": "sft",
    "finetuning_type": "lora",
    "lora_rank": 8,
    "lora_alpha": None,  # None means lora_rank * 2 in both tools
    "lora_dropout": 0.0,
    "lora_target": "all",
    "use_rslora": False,
    "use_dora": False,
    "freeze_trainable_layers": 2,
    "reward_model": None,
    "reward_model_type": "lora",
    "ppo_epochs": 4,
    "ppo_buffer_size": 1,
    "ppo_target": 6.0,
    "ppo_score_norm": False,
    "ppo_whiten_rewards": False,
    # GeneratingArguments (stage ppo's rollouts)
    "max_new_tokens": 1024,
    "top_k": 50,
    "top_p": 0.7,
    "temperature": 0.95,
    # DataArguments
    "cutoff_len": 2048,
    "val_size": 0.0,
    "max_samples": None,
    "mask_history": False,
    "train_on_prompt": False,
    "packing": False,  # None there: off for sft
    "dataset_dir": "data",
    # ModelArguments
    "trust_remote_code": False,
    "adapter_name_or_path": None,
}

# keys LLaMA-Factory passes to transformers unchanged: the installed transformers must still agree with the table,
# so a new transformers default shows up here rather than as a silently different run in one of the two tools
TRANSFORMERS_KEYS = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "num_train_epochs",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "seed",
    "save_steps",
)


def _defaults() -> TrainConfig:
    return TrainConfig.model_construct()


def _field_default(name: str):
    return TrainConfig.model_fields[name].get_default(call_default_factory=True)


@pytest.mark.parametrize("key", sorted(LLAMA_FACTORY_DEFAULTS))
def test_default_is_llamafactorys(key):
    ours = _field_default(key)
    theirs = LLAMA_FACTORY_DEFAULTS[key]
    if key == "lora_target":
        ours = ",".join(ours)
    elif hasattr(ours, "value"):
        ours = ours.value
    assert ours == theirs, f"{key}: expertkit's default {ours!r} differs from LLaMA-Factory's {theirs!r}"


@pytest.mark.parametrize("key", TRANSFORMERS_KEYS)
def test_the_table_still_matches_transformers(key):
    from transformers import Seq2SeqTrainingArguments

    field = {f.name: f for f in dataclasses.fields(Seq2SeqTrainingArguments)}[key]
    default = field.default
    if hasattr(default, "value"):
        default = default.value
    assert default == LLAMA_FACTORY_DEFAULTS[key]


def test_lora_alpha_unset_is_twice_the_rank_as_in_llamafactory():
    config = load_config(TrainConfig, None, {"model_name_or_path": "m", "dataset": "d", "lora_rank": 16})
    assert config.lora_alpha == 32


def test_every_default_that_differs_is_documented():
    """A key both tools have whose default is not LLaMA-Factory's must say so in the reference, with the reason."""
    page = describe_keys(TrainConfig, markdown=True)
    for key in TrainConfig.lf_differs:
        assert key in TrainConfig.model_fields, key
        row = next(line for line in page.splitlines() if line.startswith(f"| `{key}` |"))
        assert "Differs from LLaMA-Factory" in row
    overlap = set(TrainConfig.lf_differs) & set(LLAMA_FACTORY_DEFAULTS)
    assert not overlap, f"a key cannot both match and differ: {overlap}"


def test_a_yaml_without_batch_keys_trains_with_llamafactorys_values(tmp_path):
    path = tmp_path / "lf.yaml"
    path.write_text("model_name_or_path: m\ndataset: d\nstage: sft\nfinetuning_type: lora\n")
    config = load_config(TrainConfig, path)
    saved = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    assert saved["per_device_train_batch_size"] == 8
    assert saved["gradient_accumulation_steps"] == 1
    assert saved["learning_rate"] == 5e-5
    assert saved["lr_scheduler_type"] == "linear"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("use_unsloth", True),
        ("neftune_noise_alpha", 5),
        ("rope_scaling", "linear"),
        ("use_galore", True),
        ("enable_thinking", False),
    ],
)
def test_a_key_that_changes_the_result_is_refused_by_name(tmp_path, key, value):
    path = tmp_path / "lf.yaml"
    path.write_text(yaml.safe_dump({"model_name_or_path": "m", "dataset": "d", key: value}))
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, path)
    text = str(e.value)
    assert f"{path}:3" in text or f"{path}:1" in text or str(path) in text
    assert key in text and "ignoring it would change the result" in text and "fix:" in text


def test_the_default_value_of_such_a_key_is_accepted_with_the_warning(tmp_path, caplog):
    path = tmp_path / "lf.yaml"
    path.write_text(
        "model_name_or_path: m\ndataset: d\nneftune_noise_alpha: null\nuse_unsloth: false\nfsdp: ''\n"
        "enable_thinking: true\nswanlab_project: demo\nflash_attn: auto\n"
    )
    with caplog.at_level(logging.WARNING):
        load_config(TrainConfig, path)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "ignoring LLaMA-Factory keys" in warned and "swanlab_project" in warned


def test_all_refusals_are_reported_at_once(tmp_path):
    path = tmp_path / "lf.yaml"
    path.write_text("model_name_or_path: m\ndataset: d\nuse_galore: true\nuse_unsloth: true\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, path)
    assert f"{path}:3" in str(e.value) and f"{path}:4" in str(e.value)


def test_refused_keys_are_llamafactory_keys_with_a_fix():
    assert not set(LF_REFUSED) - LF_UNSUPPORTED
    assert not set(LF_REFUSED) & set(TrainConfig.model_fields)
    for key, (_default, does, instead) in LF_REFUSED.items():
        assert does and instead, key


def test_cli_refuses_a_refused_key_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "lf.yaml"
    path.write_text("model_name_or_path: m\ndataset: d\nuse_galore: true\n")
    assert main(["train", str(path)]) != 0
    err = capsys.readouterr().err
    assert "use_galore: True" in err and "Traceback" not in err
