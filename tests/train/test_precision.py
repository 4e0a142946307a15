"""GPUs of every kind (issue 14): precision, attention kernel, Liger kernels and gradient checkpointing are chosen
from the device's facts, so every GPU branch is tested here with a T4's, a V100's or an A100's facts injected (no
GPU has run them); the CPU branches also run for real on the tiny model."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from expertkit.cli.main import main
from expertkit.core.config import load_config
from expertkit.core.errors import ConfigError
from expertkit.train import launch, precision
from expertkit.train.config import TrainConfig
from expertkit.train.precision import (
    DeviceFacts,
    check_liger,
    choose_attention,
    choose_checkpointing,
    choose_precision,
)
from expertkit.train.report import GIB, MemoryEstimate

T4 = DeviceFacts("gpu", "Tesla T4", 1, bf16=False, capability=(7, 5))
V100 = DeviceFacts("gpu", "Tesla V100-SXM2-16GB", 8, bf16=False, capability=(7, 0), flash_attn=True)
A100 = DeviceFacts("gpu", "NVIDIA A100-SXM4-80GB", 2, bf16=True, capability=(8, 0))
A100_KERNELS = DeviceFacts("gpu", "NVIDIA A100-SXM4-80GB", 1, True, (8, 0), flash_attn=True, liger=True)
CPU_BF16 = DeviceFacts("cpu", "CPU", bf16=True)
CPU = DeviceFacts("cpu", "CPU", bf16=False)


@pytest.mark.parametrize(
    ("facts", "bf16", "fp16", "kind", "mixed", "lora_dtype"),
    [
        (T4, None, None, "lora", "fp16", torch.float16),  # no bf16: fp16 with loss scaling, chosen automatically
        (V100, None, None, "lora", "fp16", torch.float16),
        (T4, None, None, "full", "fp16", torch.float32),  # full: fp32 master weights, fp16 autocast
        (A100, None, None, "lora", "bf16", torch.bfloat16),
        (A100, None, None, "full", "bf16", torch.float32),
        (CPU_BF16, None, None, "lora", "bf16", torch.bfloat16),
        (CPU, None, None, "lora", "fp32", torch.float32),
        (A100, None, True, "lora", "fp16", torch.float16),  # fp16=true wins on a bf16 GPU
        (A100, False, None, "lora", "fp32", torch.float32),  # bf16=false alone: no mixed precision
        (T4, None, False, "lora", "fp32", torch.float32),  # fp16=false alone: only fp16 ruled out
        (A100, None, False, "lora", "bf16", torch.bfloat16),
        (CPU, True, None, "lora", "bf16", torch.bfloat16),  # allowed, emulated (slow), as before
    ],
)
def test_precision_is_chosen_from_the_device_and_the_keys(facts, bf16, fp16, kind, mixed, lora_dtype):
    p = choose_precision(facts, bf16, fp16, kind)
    assert (p.bf16, p.fp16) == (mixed == "bf16", mixed == "fp16")
    assert p.load_dtype == lora_dtype
    assert p.notes["precision"].startswith(mixed if mixed != "fp32" else "float32")


def test_stage_ppo_never_trains_fp16_without_loss_scaling():
    p = choose_precision(T4, None, None, stage="ppo")
    assert not (p.bf16 or p.fp16) and "stage ppo has no loss scaling" in p.notes["precision"]
    assert choose_precision(A100, None, None, stage="ppo").bf16
    with pytest.raises(ConfigError, match="fp16=true with stage ppo"):
        choose_precision(T4, None, True, stage="ppo")


def test_the_header_says_why_a_t4_trains_in_fp16():
    note = choose_precision(T4, None, None).notes["precision"]
    assert note == "fp16 (unset: 1 x Tesla T4, compute capability 7.5 has no native bf16, so fp16 with loss scaling)"
    assert "computes bf16 natively" in choose_precision(A100, None, None).notes["precision"]


@pytest.mark.parametrize(
    ("facts", "bf16", "fp16", "says", "hint"),
    [
        (CPU, None, True, "fp16=true needs a GPU", "drop fp16"),
        (CPU_BF16, None, True, "fp16=true needs a GPU", "drop fp16"),
        (T4, True, None, "has no native bf16", "unset picks fp16"),
        (A100, True, True, "both on", "choose one"),
    ],
)
def test_impossible_precision_is_one_clear_error(facts, bf16, fp16, says, hint):
    with pytest.raises(ConfigError, match=says) as e:
        choose_precision(facts, bf16, fp16)
    assert hint in e.value.hint


@pytest.mark.parametrize(
    ("facts", "key", "implementation"),
    [
        (CPU, "auto", None),
        (T4, "auto", None),
        (CPU, "disabled", "eager"),
        (T4, "sdpa", "sdpa"),
        (A100_KERNELS, "fa2", "flash_attention_2"),
    ],
)
def test_flash_attn_maps_to_transformers_attn_implementation(facts, key, implementation):
    assert choose_attention(facts, key) == implementation


@pytest.mark.parametrize(
    ("facts", "says"),
    [
        (CPU, "needs an NVIDIA GPU"),
        (V100, "needs an Ampere or newer GPU"),  # flash-attn installed, but Volta has no FA2 kernels
        (T4, "needs an Ampere or newer GPU"),
        (A100, "flash-attn package is not installed"),
    ],
)
def test_fa2_where_it_cannot_run_is_an_error(facts, says):
    with pytest.raises(ConfigError, match=says) as e:
        choose_attention(facts, "fa2")
    assert "sdpa" in e.value.hint or "pip install flash-attn" in e.value.hint


def test_fa2_refuses_a_float32_run():
    with pytest.raises(ConfigError, match="computes in bf16 or fp16 only") as e:
        choose_attention(A100_KERNELS, "fa2", choose_precision(A100_KERNELS, False, None))
    assert "bf16=false" in str(e.value) and "sdpa" in e.value.hint
    assert choose_attention(A100_KERNELS, "fa2", choose_precision(A100_KERNELS, None, None)) == "flash_attention_2"


def test_liger_kernels_apply_on_a_gpu_with_liger_installed():
    assert check_liger(A100_KERNELS, True, "sft") and check_liger(A100_KERNELS, True, "pt")
    assert not check_liger(CPU, False, "sft")  # off: nothing to check


@pytest.mark.parametrize(
    ("facts", "stage", "says"),
    [
        (CPU, "sft", "needs a GPU"),
        (A100, "sft", "liger-kernel is not installed"),
        (A100_KERNELS, "dpo", "stage sft and pt here, not dpo"),
    ],
)
def test_liger_where_it_cannot_run_is_an_error(facts, stage, says):
    with pytest.raises(ConfigError, match=says):
        check_liger(facts, True, stage)


@pytest.mark.parametrize(
    ("facts", "set_", "disable", "without", "available", "on", "says"),
    [
        (A100, None, None, 90, 80, True, "would not fit in 80.0 GiB"),
        (A100, None, None, 30, 80, False, "fits in 80.0 GiB"),
        (A100, None, True, 90, 80, False, "disable_gradient_checkpointing"),
        (A100, False, None, 90, 80, False, "gradient_checkpointing set"),
        (CPU, None, None, 90, 20, False, "unset"),  # CPU: as before, off unless asked
        (CPU, True, None, 1, 20, True, "gradient_checkpointing set"),
    ],
)
def test_gradient_checkpointing_follows_the_memory_estimate_on_a_gpu(
    facts, set_, disable, without, available, on, says
):
    chosen, why = choose_checkpointing(facts, set_, disable, without * GIB, 10 * GIB, available * GIB)
    assert chosen is on and says in why


def test_checkpointing_is_turned_on_when_the_estimate_says_the_run_will_not_fit(tiny_model, monkeypatch):
    from transformers import AutoModelForCausalLM

    from expertkit.train.run import attach_lora

    config = load_config(TrainConfig, None, {"model_name_or_path": str(tiny_model), "dataset": "d"})
    model = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_model), config)  # enabled through the PEFT model
    monkeypatch.setattr(precision, "detect_device", lambda: A100)
    estimates = {False: MemoryEstimate(60 * GIB, GIB, 20 * GIB, 70 * GIB, "GPU"), True: None}
    estimates[True] = MemoryEstimate(60 * GIB, GIB, GIB, 70 * GIB, "GPU")
    monkeypatch.setattr(precision, "run_estimate", lambda c, t, d, p, gc: estimates[gc])
    p = choose_precision(A100, None, None)
    precision.plan_checkpointing(config, SimpleNamespace(model=model), None, p)
    assert model.base_model.model.is_gradient_checkpointing and config.gradient_checkpointing is True
    inputs = torch.tensor([[1, 2, 3, 4]])
    model.train()
    model(input_ids=inputs, labels=inputs).loss.backward()  # recomputed in the backward pass, adapters get grads
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    assert p.notes["checkpointing"].startswith("on (unset: ~81.0 GiB without it would not fit in 70.0 GiB")


def test_a_t4_is_detected_without_bf16_although_torch_can_emulate_it(monkeypatch):
    # torch.cuda.is_bf16_supported() answers True on a T4 by default (emulation): the choice must not count that
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "device_count", lambda: 2)
    monkeypatch.setattr(cuda, "get_device_name", lambda i=0: "Tesla T4")
    monkeypatch.setattr(cuda, "get_device_capability", lambda i=0: (7, 5))
    monkeypatch.setattr(cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    facts = precision.detect_device()
    assert facts == DeviceFacts("gpu", "Tesla T4", 2, False, (7, 5), facts.flash_attn, facts.liger)
    assert choose_precision(facts, None, None).fp16


def test_this_machine_is_detected_as_a_cpu():
    facts = precision.detect_device()
    assert facts.kind == "cpu" and facts.count == 0 and not facts.gpu


def run_config(tiny_model, identity_dir, out, **over) -> TrainConfig:
    values = {
        "model_name_or_path": str(tiny_model),
        "dataset": "identity",
        "dataset_dir": str(identity_dir),
        "output_dir": str(out),
        "cutoff_len": 128,
        "max_steps": 2,
        "save_steps": 100,
        "logging_steps": 1,
        "per_device_train_batch_size": 2,
        "learning_check_samples": 0,
        "plot_loss": False,
        "bf16": False,
    }
    return load_config(TrainConfig, None, {**values, **over})


def test_flash_attn_is_honoured_and_eager_gives_sdpas_losses(tiny_model, identity_dir, tmp_path, caplog):
    import json

    from expertkit.train.run import run

    losses = {}
    for key in ("disabled", "sdpa"):
        with caplog.at_level(logging.INFO, logger="expertkit"):
            run(run_config(tiny_model, identity_dir, tmp_path / key, flash_attn=key))
        log = (tmp_path / key / "trainer_log.jsonl").read_text().splitlines()
        losses[key] = [json.loads(x)["loss"] for x in log if "loss" in json.loads(x)]
    header = caplog.text
    assert "eager (flash_attn=disabled)" in header and "sdpa (flash_attn=sdpa)" in header
    assert "float32 (bf16=false)" in header and "checkpointing" in header and "off (unset;" in header
    assert losses["disabled"] == pytest.approx(losses["sdpa"], abs=1e-4)


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        (["fp16=true"], "fp16=true needs a GPU"),
        (["flash_attn=fa2"], "flash_attn=fa2 needs an NVIDIA GPU"),
        (["enable_liger_kernel=true"], "enable_liger_kernel needs a GPU"),
    ],
)
def test_hardware_mistakes_are_refused_before_torchrun_spawns_anything(monkeypatch, capsys, keys, says):
    monkeypatch.setenv("FORCE_TORCHRUN", "1")
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    monkeypatch.setattr(launch, "relaunch", lambda *a: pytest.fail("a process was spawned"))
    code = main(["train", "model_name_or_path=m", "dataset=d", *keys])
    assert code == 1 and says in capsys.readouterr().err


def test_more_processes_than_gpus_is_refused_even_without_force_torchrun(monkeypatch, capsys):
    monkeypatch.delenv("FORCE_TORCHRUN", raising=False)
    monkeypatch.setenv("NPROC_PER_NODE", "4")
    monkeypatch.setattr(launch, "device_count", lambda: 1)
    monkeypatch.setattr(launch, "relaunch", lambda *a: pytest.fail("a process was spawned"))
    code = main(["train", "model_name_or_path=m", "dataset=d"])
    err = capsys.readouterr().err
    assert code == 1 and "NPROC_PER_NODE=4 but only 1 accelerator(s)" in err and "CUDA_VISIBLE_DEVICES" in err


def test_an_unknown_flash_attn_value_lists_the_known_ones():
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, {"model_name_or_path": "m", "dataset": "d", "flash_attn": "fa3"})
    assert "flash_attn" in str(e.value) and "sdpa" in str(e.value)
