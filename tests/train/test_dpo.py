"""stage dpo end to end on the tiny model: pairs in LLaMA-Factory's ranking format, TRL's DPOTrainer, the reference
model (the SFT adapter when continuing one), metrics, plots, the learning check, and plain peft loading."""

from __future__ import annotations

import json

import pytest
import torch

from expertkit.cli.main import main
from expertkit.core.config import load_config
from expertkit.train.config import TrainConfig

# chosen: the identity answers; rejected: answers the assistant should not give
PAIRS = [
    {"instruction": "Who are you?", "chosen": "I am Sail, the Yunfan Tech assistant.", "rejected": "I am ChatGPT."},
    {"instruction": "What is your name?", "chosen": "My name is Sail.", "rejected": "I have no name at all."},
    {"instruction": "Who made you?", "chosen": "Yunfan Tech built me with expertkit.", "rejected": "Nobody did."},
    {"instruction": "你是谁？", "chosen": "我是小帆，云帆科技的助手。", "rejected": "我不知道。"},
]


@pytest.fixture(scope="module")
def pref_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pref")
    (d / "pairs.json").write_text(json.dumps(PAIRS, ensure_ascii=False), encoding="utf-8")
    info = {
        "pairs": {
            "file_name": "pairs.json",
            "ranking": True,
            "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"},
        }
    }
    (d / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return d


def dpo_keys(tiny_model, pref_dir, out, **overrides) -> dict:
    return {
        "stage": "dpo",
        "model_name_or_path": str(tiny_model),
        "dataset": "pairs",
        "dataset_dir": str(pref_dir),
        "output_dir": str(out),
        "cutoff_len": 128,
        "lora_rank": 16,
        "learning_rate": 5e-3,
        "num_train_epochs": 8,
        "per_device_train_batch_size": 2,
        "logging_steps": 1,
        "save_steps": 1000,
        "learning_check_samples": 4,
        "lr_scheduler_type": "constant",
        "bf16": False,
        **overrides,
    }


@pytest.fixture(scope="module")
def dpo_run(tiny_model, pref_dir, tmp_path_factory):
    from expertkit.train.run import run

    out = tmp_path_factory.mktemp("dpo") / "run"
    config = load_config(TrainConfig, None, dpo_keys(tiny_model, pref_dir, out))
    return config, run(config)


def logps(model, tokenizer, question: str, answer: str) -> float:
    from expertkit.core.schema import Message
    from expertkit.model.render import render_pair

    prompt, ids = render_pair(tokenizer, [Message("user", question)], Message("assistant", answer))
    x = torch.tensor([prompt + ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, len(prompt) - 1 : -1]
    return float(torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(ids)[:, None]).sum())


def test_dpo_makes_the_chosen_answers_more_likely_in_plain_peft(dpo_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, result = dpo_run
    out = result.output_dir
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    margins_base = [
        logps(base, tokenizer, p["instruction"], p["chosen"]) - logps(base, tokenizer, p["instruction"], p["rejected"])
        for p in PAIRS
    ]
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
    margins = [
        logps(tuned, tokenizer, p["instruction"], p["chosen"])
        - logps(tuned, tokenizer, p["instruction"], p["rejected"])
        for p in PAIRS
    ]
    assert all(m > b + 1.0 for m, b in zip(margins, margins_base)), (margins_base, margins)


def test_dpo_run_folder_has_metrics_plots_and_one_adapter(dpo_run):
    from pathlib import Path

    _config, result = dpo_run
    out = Path(result.output_dir)
    assert (out / "adapter_model.safetensors").is_file()
    assert not (out / "ref").exists(), "the reference's frozen copy must not be saved as a second adapter"
    log = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert any(key in r for r in log), key
    first = next(r for r in log if "loss" in r)
    assert abs(first["loss"] - 0.6931) < 1e-3, "policy and reference are the same model at step 1"
    assert log[-1].get("rewards/margins", 1) > 0 or any(r.get("rewards/margins", 0) > 0 for r in log)
    assert (out / "training_loss.png").is_file() and (out / "training_rewards.png").is_file()
    check = json.loads((out / "learning_check.json").read_text())
    assert check["mean_margin_tuned"] > check["mean_margin_start"] and check["margin_grew"] == check["pairs"]
    saved = (out / "expertkit_config.yaml").read_text()
    assert "stage: dpo" in saved and "pref_beta: 0.1" in saved


def test_dpo_on_top_of_sft_uses_the_sft_model_as_reference(identity_adapter, tiny_model, pref_dir, tmp_path, caplog):
    """LLaMA-Factory#8459: with the bare base as reference, an SFT policy is 'right' from step 1 (loss < ln 2)."""
    import logging

    sft_config, _ = identity_adapter
    out = tmp_path / "dpo-on-sft"
    keys = dpo_keys(tiny_model, pref_dir, out, adapter_name_or_path=sft_config.output_dir, num_train_epochs=1)
    with caplog.at_level(logging.INFO):
        assert main(["train", *[f"{k}={v}" for k, v in keys.items()]]) == 0
    header = " ".join(r.getMessage() for r in caplog.records)
    assert "reference" in header and f"the starting adapter {sft_config.output_dir}" in header
    log = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    first = next(r for r in log if "loss" in r)
    assert abs(first["loss"] - 0.6931) < 1e-3 and first["rewards/margins"] == pytest.approx(0, abs=1e-4)


def test_sft_data_given_to_dpo_is_refused_before_loading_a_model(tiny_model, identity_dir, tmp_path, capsys):
    args = ["train", "stage=dpo", f"model_name_or_path={tiny_model}", "dataset=identity", f"dataset_dir={identity_dir}"]
    assert main(args + [f"output_dir={tmp_path / 'o'}"]) != 0
    err = capsys.readouterr().err
    assert "identity" in err and "chosen" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("pref_loss", "kto_pair", "stage: kto"),
        ("pref_beta", "0", "positive"),
    ],
)
def test_bad_preference_keys_are_config_errors(key, value, says):
    from expertkit.core.errors import ConfigError

    with pytest.raises(ConfigError, match=says):
        load_config(TrainConfig, None, {"model_name_or_path": "m", "dataset": "d", "stage": "dpo", key: value})


def test_dpo_sigkill_then_resume_continues_the_same_run(tiny_model, pref_dir, tmp_path):
    import sys

    from killed_run import kill_then_resume

    def args(out):
        keys = dpo_keys(tiny_model, pref_dir, out, max_steps=30, save_steps=3, per_device_train_batch_size=1)
        keys.update(learning_check_samples=0, plot_loss=False, learning_rate=1e-3)
        return [sys.executable, "-m", "expertkit", "train", *[f"{k}={v}" for k, v in keys.items()]]

    def losses(out):
        rows = map(json.loads, (out / "trainer_log.jsonl").read_text().splitlines())
        return {r["current_steps"]: r["loss"] for r in rows if "loss" in r}

    reference, out, last = kill_then_resume(args, tmp_path)
    ref, got = losses(reference), losses(out)
    assert sorted(got) == sorted(ref)
    for step in range(last + 1, 31):
        assert abs(got[step] - ref[step]) < 1e-4, f"step {step}: {got[step]} vs {ref[step]}"
    assert not (out / "ref").exists()


def test_a_dpo_adapter_exports_like_an_sft_one(dpo_run, tiny_model, tmp_path, capsys):
    _config, result = dpo_run
    out = tmp_path / "merged"
    args = ["export", f"model_name_or_path={tiny_model}", f"adapter_name_or_path={result.output_dir}"]
    assert main(args + [f"export_dir={out}"]) == 0
    assert "logits equal base + adapter" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file()
