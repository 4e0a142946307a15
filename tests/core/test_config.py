"""Config: YAML + key=value + --key value; unknown keys with did-you-mean; every problem at once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from expertkit.core.config import load_config, split_cli_args
from expertkit.core.errors import ConfigError
from expertkit.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def test_split_cli_args_accepts_every_style():
    path, over = split_cli_args(
        ["my.yaml", "lora_rank=16", "--learning_rate", "2e-4", "--bf16", "--val-size=0.1", "dataset=a.json,b.jsonl"]
    )
    assert path == "my.yaml"
    assert over == {
        "lora_rank": "16",
        "learning_rate": "2e-4",
        "bf16": "true",
        "val_size": "0.1",
        "dataset": "a.json,b.jsonl",
    }


def test_overrides_win_over_yaml_and_are_typed(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model_name_or_path: m\ndataset: a, b\nlora_rank: 8\nlearning_rate: 1.0e-4\n")
    c = load_config(TrainConfig, f, {"lora_rank": "32", "learning_rate": "5e-4", "lora_target": "q_proj,v_proj"})
    assert (c.lora_rank, c.lora_alpha, c.learning_rate) == (32, 64, 5e-4)
    assert c.dataset == ["a", "b"] and c.lora_target == ["q_proj", "v_proj"]


def test_all_problems_reported_at_once_with_lines(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "model_name_or_path: m\ndataset: a\nlearnig_rate: 1e-4\nlora_rank: many\nfinetuning_type: qlora\n"
        "flash_attn: fa2\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, f)
    text = str(e.value)
    assert f"{f}:3: unknown key 'learnig_rate' (fix: did you mean 'learning_rate'?)" in text
    assert f"{f}:4 lora_rank:" in text and "'many'" in text
    assert f"{f}:5 finetuning_type:" in text and "'lora', 'full' or 'freeze'" in text
    assert "flash_attn" not in text  # a LLaMA-Factory key we ignore with a warning, not an error


def test_yaml_syntax_error_names_the_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model_name_or_path: m\ndataset: [a\nlora_rank: 8\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+: not valid YAML"):
        load_config(TrainConfig, f)


def test_missing_required_keys_and_no_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, {"lora_rank": "8"})
    assert "model_name_or_path" in str(e.value) and "dataset" in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainConfig, tmp_path / "nope.yaml")


def test_eval_without_validation_split_is_explained():
    with pytest.raises(ConfigError, match="set val_size"):
        load_config(TrainConfig, None, {"model_name_or_path": "m", "dataset": "a", "eval_strategy": "steps"})


def test_every_shipped_yaml_loads():
    from expertkit.evaluate.config import EvalConfig
    from expertkit.export.config import ExportConfig
    from expertkit.improve.config import ImproveConfig
    from expertkit.serve.config import ServeConfig

    stages = {"train": TrainConfig, "export": ExportConfig, "serve": ServeConfig, "eval": EvalConfig,
              "improve": ImproveConfig}  # fmt: skip
    files = sorted(ROOT.glob("examples/**/*.yaml")) + sorted(ROOT.glob("configs/**/*.yaml"))
    files = [f for f in files if f.parent.name != "accelerate"]  # accelerate's own configs: tests/train/test_fsdp.py
    assert len(files) >= 6
    for f in files:
        stage = f.parent.name
        assert stage in stages, f"{f}: put it under a folder named after its stage ({', '.join(stages)})"
        load_config(stages[stage], f)


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("learning_rate", "-1", "must be a positive number"),
        ("learning_rate", "0", "must be a positive number"),
        ("lora_rank", "0", "1 or more"),
        ("lora_dropout", "1.5", "from 0 up to"),
        ("per_device_train_batch_size", "0", "1 or more"),
        ("gradient_accumulation_steps", "0", "1 or more"),
        ("logging_steps", "0", "1 or more"),
        ("save_steps", "0", "1 or more"),
        ("warmup_ratio", "1.5", "from 0 up to"),
        ("max_steps", "0", "use -1 (train num_train_epochs) or a positive step count"),
        ("num_train_epochs", "0", "trains nothing"),
    ],
)
def test_values_that_would_crash_or_train_nothing_are_config_errors(key, value, says):
    # each of these used to reach torch / peft / transformers and end in a traceback, or train 0 steps
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, {"model_name_or_path": "m", "dataset": "a", key: value})
    text = str(e.value)
    assert says in text and "Value error" not in text


def test_max_steps_makes_zero_epochs_fine():
    c = load_config(
        TrainConfig, None, {"model_name_or_path": "m", "dataset": "a", "num_train_epochs": "0", "max_steps": "5"}
    )
    assert c.max_steps == 5


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["my.yaml", "cutoff_len", "=", "100"], "unexpected 'cutoff_len = 100': spaces around '='"),
        (["my.yaml", "cutoff_len=", "100"], "unexpected 'cutoff_len= 100': spaces around '='"),
        (["my.yaml", "-cutoff_len", "100"], "unexpected option '-cutoff_len'"),
    ],
)
def test_mistyped_overrides_say_how_to_write_them(args, says):
    # these used to say "only one config file can be given", naming a word of the override as the file
    with pytest.raises(ConfigError, match=re.escape(says)):
        split_cli_args(args)


def test_key_equals_value_lines_in_a_yaml_file_are_explained(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model_name_or_path=m\ndataset=a\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, f)
    assert "not key=value" in e.value.hint
