"""stage kto end to end on the tiny model: answers labelled good or bad (kto_tag), TRL's KTOTrainer, its metrics,
the learning check, plain peft loading, and the batch-of-1 refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expertkit.cli.main import main
from expertkit.core.config import load_config
from expertkit.train.config import TrainConfig

ROWS = [
    {"instruction": "Who are you?", "output": "I am Sail, the Yunfan Tech assistant.", "kto_tag": True},
    {"instruction": "Who are you?", "output": "I am ChatGPT.", "kto_tag": False},
    {"instruction": "What is your name?", "output": "My name is Sail.", "kto_tag": True},
    {"instruction": "What is your name?", "output": "I have no name at all.", "kto_tag": False},
    {"instruction": "Who made you?", "output": "Yunfan Tech built me with expertkit.", "kto_tag": True},
    {"instruction": "Who made you?", "output": "Nobody did.", "kto_tag": False},
]


@pytest.fixture(scope="module")
def kto_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("kto")
    (d / "rows.json").write_text(json.dumps(ROWS), encoding="utf-8")
    info = {
        "rows": {
            "file_name": "rows.json",
            "columns": {"prompt": "instruction", "response": "output", "kto_tag": "kto_tag"},
        }
    }
    (d / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return d


def kto_keys(tiny_model, kto_dir, out, **overrides) -> dict:
    return {
        "stage": "kto",
        "model_name_or_path": str(tiny_model),
        "dataset": "rows",
        "dataset_dir": str(kto_dir),
        "output_dir": str(out),
        "cutoff_len": 128,
        "lora_rank": 16,
        "learning_rate": 5e-3,
        "num_train_epochs": 6,
        "per_device_train_batch_size": 3,
        "logging_steps": 1,
        "save_steps": 1000,
        "learning_check_samples": 3,
        "lr_scheduler_type": "constant",
        "bf16": False,
        **overrides,
    }


@pytest.fixture(scope="module")
def kto_run(tiny_model, kto_dir, tmp_path_factory):
    from expertkit.train.run import run

    out = tmp_path_factory.mktemp("kto-run") / "run"
    config = load_config(TrainConfig, None, kto_keys(tiny_model, kto_dir, out, kto_rejected_weight=1.5))
    return config, run(config)


def test_kto_run_logs_trl_metrics_and_a_learning_check(kto_run):
    _config, result = kto_run
    out = Path(result.output_dir)
    log = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "kl"):
        assert any(key in r for r in log), key
    assert (out / "training_loss.png").is_file() and (out / "training_rewards.png").is_file()
    check = json.loads((out / "learning_check.json").read_text())
    assert check["desirable"] == 3 and check["undesirable"] == 3
    assert check["desirable_change"] > check["undesirable_change"], check
    assert not check["warnings"]
    saved = (out / "expertkit_config.yaml").read_text()
    assert "stage: kto" in saved and "kto_rejected_weight: 1.5" in saved


def test_kto_adapter_loads_with_plain_peft(kto_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _config, result = kto_run
    out = Path(result.output_dir)
    assert (out / "adapter_model.safetensors").is_file() and not (out / "ref").exists()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
    assert tuned.active_adapter == "default"


def test_kto_with_batch_1_is_refused_before_loading_a_model(tiny_model, kto_dir, tmp_path, capsys):
    keys = kto_keys(tiny_model, kto_dir, tmp_path / "o", per_device_train_batch_size=1)
    assert main(["train", *[f"{k}={v}" for k, v in keys.items()]]) != 0
    err = capsys.readouterr().err
    assert "per_device_train_batch_size" in err and "KL" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_kto_weights_are_config_fields_and_ppo_without_a_reward_model_is_refused_clearly():
    from expertkit.core.errors import ConfigError

    base = {"model_name_or_path": "m", "dataset": "d"}
    config = load_config(TrainConfig, None, {**base, "stage": "kto", "kto_chosen_weight": 1.33})
    assert config.kto_chosen_weight == 1.33 and config.kto_rejected_weight == 1.0
    with pytest.raises(ConfigError, match="stage ppo needs reward_model"):
        load_config(TrainConfig, None, {**base, "stage": "ppo"})
