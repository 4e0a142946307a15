"""End to end: a LoRA run on identity data teaches the tiny model its answers; what a run folder holds."""

from __future__ import annotations

import json

import pytest
import torch

from expertkit.cli.main import main
from expertkit.core.config import load_config
from expertkit.train.config import TrainConfig


def train_config(tiny_model, identity_dir, out, **overrides) -> TrainConfig:
    base = dict(
        model_name_or_path=str(tiny_model),
        dataset="identity",
        dataset_dir=str(identity_dir),
        output_dir=str(out),
        cutoff_len=128,
        lora_rank=16,
        learning_rate=5e-3,
        num_train_epochs=40,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        logging_steps=5,
        save_steps=1000,
        learning_check_samples=4,
        lr_scheduler_type="constant",
        bf16=False,
    )
    base.update(overrides)
    return load_config(TrainConfig, None, base)


def greedy(model, tokenizer, question: str) -> str:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.fixture(scope="module")
def lora_run(identity_adapter):
    return identity_adapter


def test_lora_learns_identity_answers_the_base_did_not_know(lora_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, result = lora_run
    # loaded the way any HF user would: base + adapter, tokenizer from the run folder
    tokenizer = AutoTokenizer.from_pretrained(result.output_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    base_answer = greedy(base, tokenizer, "Who are you?")
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), result.output_dir)
    assert greedy(tuned, tokenizer, "Who are you?").startswith("I am Sail, the Yunfan Tech assistant.")
    assert not base_answer.startswith("I am Sail")
    check = result.learning_check
    assert check.loss_fell and check.adapter_applied
    assert check.tuned_matches >= 3 > check.base_matches


def test_run_folder_holds_everything_a_user_needs(lora_run):
    from pathlib import Path

    config, result = lora_run
    out = Path(result.output_dir)
    for name in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer_config.json",
        "expertkit_config.yaml",
        "trainer_log.jsonl",
        "training_loss.png",
        "learning_check.json",
        "train_results.json",
        "trainer_state.json",
        "expertkit_finished",
    ]:
        assert (out / name).is_file(), name
    logs = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert logs[0]["current_steps"] == 1 and "loss" in logs[0] and "remaining_time" in logs[0]
    check = json.loads((out / "learning_check.json").read_text())
    assert 0 < check["loss_token_share"] < 1 and len(check["samples"]) == 4
    assert result.tokens_seen > 0 and result.tokens_per_second > 0
    # the saved tokenizer carries the chat template training used
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in (tok_cfg.get("chat_template") or (out / "chat_template.jinja").read_text())


def test_only_lora_weights_changed(lora_run, tiny_model):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    _, result = lora_run
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), result.output_dir)
    base = load_file(str(tiny_model / "model.safetensors"))
    for name, param in tuned.named_parameters():
        if "lora_B" in name:
            assert param.abs().sum() > 0, f"{name} was not trained"
        elif "lora_" not in name:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(param, base[key]), f"frozen {key} changed"


@pytest.mark.parametrize("kind", ["full", "freeze"])
def test_full_and_freeze_train_what_they_should(tiny_model, identity_dir, tmp_path, kind):
    from safetensors.torch import load_file

    from expertkit.train.run import run

    config = train_config(
        tiny_model,
        identity_dir,
        tmp_path / kind,
        finetuning_type=kind,
        max_steps=3,
        learning_rate=1e-3,
        freeze_trainable_layers=1,
        learning_check_samples=1,
    )
    run(config)
    before, after = (
        load_file(str(tiny_model / "model.safetensors")),
        load_file(str(tmp_path / kind / "model.safetensors")),
    )
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if kind == "full":
        assert changed == set(before) - {"lm_head.weight"}  # tied to the embeddings
    else:
        assert changed and all(k.startswith("model.layers.1.") for k in changed)


def test_same_seed_same_loss_curve(tiny_model, identity_dir, tmp_path):
    from expertkit.train.run import run

    losses = []
    for name in ("a", "b"):
        run(
            train_config(
                tiny_model,
                identity_dir,
                tmp_path / name,
                max_steps=4,
                logging_steps=1,
                learning_check_samples=0,
                lora_dropout=0.1,
            )
        )
        lines = (tmp_path / name / "trainer_log.jsonl").read_text().splitlines()
        losses.append([json.loads(x)["loss"] for x in lines if '"loss"' in x])
    assert len(losses[0]) == 4 and losses[0] == losses[1]


def test_llamafactory_yaml_with_dataset_info_trains(tiny_model, identity_dir, tmp_path, caplog):
    yaml_text = f"""\
### model
model_name_or_path: {tiny_model}
trust_remote_code: true
### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
### dataset
dataset: identity
dataset_dir: {identity_dir}
template: qwen
cutoff_len: 256
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
### output
output_dir: {tmp_path / "saves"}
logging_steps: 1
save_steps: 500
plot_loss: true
overwrite_output_dir: true
### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 2
learning_rate: 1.0e-4
num_train_epochs: 1.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: false
ddp_timeout: 180000000
"""
    path = tmp_path / "qwen_lora_sft.yaml"
    path.write_text(yaml_text)
    assert main(["train", str(path), "learning_check_samples=0"]) == 0
    assert (tmp_path / "saves" / "adapter_model.safetensors").is_file()
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "ddp_timeout, overwrite_cache, preprocessing_num_workers" in warned
    saved = (tmp_path / "saves" / "expertkit_config.yaml").read_text()
    assert "template: qwen" in saved and "learning_check_samples: 0" in saved


def test_a_second_run_into_a_finished_folder_is_refused(lora_run, capsys):
    config, result = lora_run
    code = main(
        [
            "train",
            f"model_name_or_path={config.model_name_or_path}",
            "dataset=identity",
            f"dataset_dir={config.dataset_dir}",
            f"output_dir={result.output_dir}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "already holds a finished run" in err and "overwrite_output_dir=true" in err


def test_validation_split_logs_eval_loss(tiny_model, identity_dir, tmp_path):
    from expertkit.train.run import run

    out = tmp_path / "eval"
    run(
        train_config(
            tiny_model,
            identity_dir,
            out,
            max_steps=4,
            val_size=1,
            eval_strategy="steps",
            eval_steps=2,
            logging_steps=1,
            learning_check_samples=0,
        )
    )
    records = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["current_steps"] for r in records if "eval_loss" in r] == [2, 4]
    assert (out / "training_loss.png").stat().st_size > 1000


def test_memory_estimate_warns_with_advice(tiny_model):
    from transformers import AutoModelForCausalLM

    from expertkit.train.report import estimate_memory, memory_advice

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    small = estimate_memory(model, 1000, 512, gradient_checkpointing=False, act_bytes=4)
    huge = estimate_memory(model, 1000, 10**9, gradient_checkpointing=False, act_bytes=4)
    assert small.fits() and not huge.fits()
    ckpt = estimate_memory(model, 1000, 10**9, gradient_checkpointing=True, act_bytes=4)
    assert ckpt.activations < huge.activations
    advice = memory_advice(huge, batch=8, cutoff_len=4096, gradient_checkpointing=False)
    assert "per_device_train_batch_size=4" in advice and "gradient_checkpointing=true" in advice
    assert "cutoff_len=2048" in advice
