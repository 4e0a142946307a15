"""stage ppo (EXPERIMENTAL) end to end on the tiny model: a reward model from stage rm, our PPO loop (rollouts,
reward, KL to the adapter-disabled reference, GAE, clipped updates), its log and plots, the learning check, resume
after SIGKILL, and every bad reward_model refused before any weights load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from reward_model import RANKED_PAIRS, train_reward_model

from expertkit.cli.main import main
from expertkit.core.config import load_config
from expertkit.core.errors import ConfigError
from expertkit.train.config import TrainConfig

# the reward model learns to prefer the identity answers over a curt "No."
PAIRS = [
    {"instruction": "Who are you?", "chosen": "I am Sail, the Yunfan Tech assistant.", "rejected": "No."},
    {"instruction": "What is your name?", "chosen": "My name is Sail.", "rejected": "No."},
    {"instruction": "Who made you?", "chosen": "Yunfan Tech built me with expertkit.", "rejected": "No."},
    {"instruction": "Where do you work?", "chosen": "At Yunfan Tech, as Sail.", "rejected": "No."},
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ppo-data")
    (d / "pairs.json").write_text(json.dumps(PAIRS), encoding="utf-8")
    prompts = [{"instruction": p["instruction"], "output": p["chosen"]} for p in PAIRS]
    (d / "prompts.json").write_text(json.dumps(prompts), encoding="utf-8")
    info = {"pairs": RANKED_PAIRS, "prompts": {"file_name": "prompts.json"}}
    (d / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def reward_run(tiny_model, data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rm") / "run"
    _config, result = train_reward_model(tiny_model, data_dir, out, learning_check_samples=0, plot_loss=False)
    return Path(result.output_dir)


def ppo_keys(tiny_model, data_dir, reward, out, **overrides) -> dict:
    return {
        "stage": "ppo",
        "model_name_or_path": str(tiny_model),
        "reward_model": str(reward),
        "dataset": "prompts",
        "dataset_dir": str(data_dir),
        "output_dir": str(out),
        "cutoff_len": 128,
        "lora_rank": 16,
        "learning_rate": 5e-3,
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "max_new_tokens": 8,
        "logging_steps": 1,
        "save_steps": 1000,
        "learning_check_samples": 2,
        "bf16": False,
        **overrides,
    }


@pytest.fixture(scope="module")
def ppo_run(tiny_model, data_dir, reward_run, tmp_path_factory):
    from expertkit.train.run import run

    config = load_config(TrainConfig, None, ppo_keys(tiny_model, data_dir, reward_run, tmp_path_factory.mktemp("p")))
    return config, run(config)


def test_ppo_logs_reward_kl_losses_and_the_learning_check(ppo_run):
    _config, result = ppo_run
    out = Path(result.output_dir)
    log = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["current_steps"] for r in log] == [1, 2, 3, 4]
    for key in ("loss", "policy_loss", "value_loss", "kl", "kl_coef", "rewards/score", "learning_rate"):
        assert all(key in r for r in log), key
    assert log[0]["kl"] == 0.0 and log[-1]["kl"] != 0.0  # the first rollout comes from the reference itself
    assert (out / "training_rewards.png").is_file() and (out / "training_loss.png").is_file()
    check = json.loads((out / "learning_check.json").read_text())
    # 4 steps on a random tiny model need not change its greedy answers: the check is asserted present, not a rise
    assert check["prompts"] == 2 and len(check["samples"]) == 2, check


def test_ppo_run_folder_is_a_causal_lm_adapter_plain_peft_loads(ppo_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _config, result = ppo_run
    adapter = json.loads((Path(result.output_dir) / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM" and not (Path(result.output_dir) / "reward").exists()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), result.output_dir)
    assert list(model.peft_config) == ["default"]


def test_ppo_sigkill_then_resume_continues_the_same_run(tiny_model, data_dir, reward_run, tmp_path):
    import sys

    from killed_run import kill_then_resume

    def args(out):
        keys = ppo_keys(tiny_model, data_dir, reward_run, out, max_steps=6, save_steps=2, ppo_epochs=1)
        keys.update(learning_check_samples=0, plot_loss=False, max_new_tokens=4)
        return [sys.executable, "-m", "expertkit", "train", *[f"{k}={v}" for k, v in keys.items()]]

    def losses(out):
        rows = map(json.loads, (out / "trainer_log.jsonl").read_text().splitlines())
        return {r["current_steps"]: (r["loss"], r["rewards/score"]) for r in rows}

    reference, out, last = kill_then_resume(args, tmp_path)
    ref, got = losses(reference), losses(out)
    assert sorted(got) == sorted(ref) == list(range(1, 7))
    for step in range(last + 1, 7):  # same prompts, same samples (RNG restored), same updates
        assert got[step] == pytest.approx(ref[step], abs=1e-4), f"step {step}"


# --- bad input: each a clear error before any model weights load ------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ({}, "stage ppo needs reward_model"),
        ({"reward_model": "r", "reward_model_type": "api"}, "reward_model_type api"),
        ({"reward_model": "r", "finetuning_type": "full"}, "LoRA adapter only"),
        ({"reward_model": "r", "top_p": 1.5}, "top_p"),
    ],
)
def test_bad_ppo_keys_are_config_errors(keys, says):
    with pytest.raises(ConfigError, match=says):
        load_config(TrainConfig, None, {"model_name_or_path": "m", "dataset": "d", "stage": "ppo", **keys})


def _refused(keys: dict, capsys, monkeypatch) -> str:
    import expertkit.model.load

    def no_weights(*args, **kwargs):
        raise AssertionError("model weights loaded before the reward model was checked")

    monkeypatch.setattr(expertkit.model.load, "load_model", no_weights)
    assert main(["train", *[f"{k}={v}" for k, v in keys.items()]]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "AssertionError" not in err, err
    return err


def test_a_folder_that_is_not_a_reward_model_is_refused(
    tiny_model, data_dir, reward_run, tmp_path, capsys, monkeypatch
):
    sft_like = tmp_path / "sft-like"
    shutil.copytree(reward_run, sft_like)
    (sft_like / "expertkit_config.yaml").unlink()
    cfg = json.loads((sft_like / "adapter_config.json").read_text())
    (sft_like / "adapter_config.json").write_text(json.dumps({**cfg, "task_type": "CAUSAL_LM"}))
    err = _refused(ppo_keys(tiny_model, data_dir, sft_like, tmp_path / "o1"), capsys, monkeypatch)
    assert "without a score head" in err and "stage: rm" in err
    err = _refused(ppo_keys(tiny_model, data_dir, tiny_model, tmp_path / "o2", reward_model_type="full"), capsys,
                   monkeypatch)  # fmt: skip
    assert "is not a reward model" in err and "Qwen2ForCausalLM" in err
    dpo_run = tmp_path / "dpo-run"
    shutil.copytree(reward_run, dpo_run)
    text = (dpo_run / "expertkit_config.yaml").read_text().replace("stage: rm", "stage: dpo")
    (dpo_run / "expertkit_config.yaml").write_text(text)
    err = _refused(ppo_keys(tiny_model, data_dir, dpo_run, tmp_path / "o3"), capsys, monkeypatch)
    assert "stage dpo run, not a reward model" in err


def test_reward_model_type_must_match_the_folder(tiny_model, data_dir, reward_run, tmp_path, capsys, monkeypatch):
    err = _refused(ppo_keys(tiny_model, data_dir, reward_run, tmp_path / "o1", reward_model_type="full"), capsys,
                   monkeypatch)  # fmt: skip
    assert "is a LoRA adapter" in err and "reward_model_type: lora" in err
    err = _refused(ppo_keys(tiny_model, data_dir, tiny_model, tmp_path / "o2"), capsys, monkeypatch)
    assert "full model folder" in err and "reward_model_type: full" in err
    err = _refused(ppo_keys(tiny_model, data_dir, tmp_path / "missing", tmp_path / "o3"), capsys, monkeypatch)
    assert "is not a folder" in err


def test_a_reward_model_of_another_base_is_refused(tiny_model, data_dir, reward_run, tmp_path, capsys, monkeypatch):
    other = tmp_path / "other-base"
    shutil.copytree(reward_run, other)
    cfg = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(tmp_path)}))
    err = _refused(ppo_keys(tiny_model, data_dir, other, tmp_path / "o"), capsys, monkeypatch)
    assert "trained on another base model" in err
