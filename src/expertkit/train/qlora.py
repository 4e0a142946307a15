"""QLoRA in the run skeleton: LoRA on a base loaded quantised by bitsandbytes (`quantization_bit: 4 | 8`).

    expertkit train examples/train/qwen2.5-0.5b-instruct_qlora_sft.yaml
    expertkit train my.yaml quantization_bit=4 quantization_type=fp4 double_quantization=false

`check_quantized_run` refuses, before anything loads, what cannot train (the value checks live on the keys, in
model/quant.py); `load_kwargs` is what `build_model` hands `load_model`. As in LLaMA-Factory, the weights that stay
unquantised keep the run's dtype (peft's `prepare_model_for_kbit_training` would cast them all to float32) and
the LoRA adapter trains in float32.
"""

from __future__ import annotations

from expertkit.core.errors import ConfigError
from expertkit.model.quant import BNB_MIN, bitsandbytes_version, quantized_load_kwargs, require_bitsandbytes


def check_quantized_run(config) -> None:
    """bitsandbytes is there, and the launch can shard a quantised base (no ZeRO-3 or FSDP)."""
    if not config.quantization_bit:
        return
    require_bitsandbytes("quantization_bit (QLoRA)")
    version = bitsandbytes_version()
    if _older(version, BNB_MIN):
        raise ConfigError(
            f"quantization_bit needs bitsandbytes {BNB_MIN} or newer (installed: {version})",
            hint="pip install --upgrade 'expertkit[qlora]'",
        )
    if _zero3(config.deepspeed) or getattr(config, "fsdp", None):
        what = "DeepSpeed ZeRO-3" if _zero3(config.deepspeed) else "FSDP"
        raise ConfigError(
            f"quantization_bit {config.quantization_bit} with {what}: expertkit loads the base before the processes "
            "shard it, so the quantised weights cannot be partitioned (LLaMA-Factory's FSDP / ZeRO-3 QLoRA loads "
            "inside DeepSpeed's zero.Init; not supported here)",
            hint="QLoRA's base is small already: train it with DDP (FORCE_TORCHRUN=1 NPROC_PER_NODE=N) or "
            "deepspeed=examples/deepspeed/ds_z2_config.json (ZeRO-2 shards the adapter's optimiser state), or drop "
            "quantization_bit to use ZeRO-3",
        )


def load_kwargs(config, compute_dtype, head: str | None = None) -> dict:
    """`load_model`'s `quantization` argument for this run ({} without quantization_bit)."""
    return quantized_load_kwargs(config, config.model_name_or_path, compute_dtype, config.trust_remote_code, bool(head))


def _zero3(deepspeed) -> bool:
    """Whether the `deepspeed` key asks for ZeRO-3 (a file that is missing or not JSON is launch.py's to report)."""
    import json
    from pathlib import Path

    if isinstance(deepspeed, str):
        try:
            deepspeed = json.loads(Path(deepspeed).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
    zero = deepspeed.get("zero_optimization") if isinstance(deepspeed, dict) else None
    return isinstance(zero, dict) and zero.get("stage") == 3


def _older(version: str, floor: str) -> bool:
    def parts(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split(".")[:3] if p.isdigit())

    return bool(version) and parts(version) < parts(floor)


def keep_adapter_float32(model) -> int:
    """Cast a quantised model's trainable weights back to float32; the number cast.

    TRL's DPO, KTO, reward (and SFT) trainers cast them to bf16 when the base is quantised (the QLoRA paper's choice;
    trl's comment points to peft#2889). expertkit trains the adapter in float32 like LLaMA-Factory and its own SFT
    (plain Trainer): bf16 optimiser updates of small LoRA weights round away, and a reward model's new score head
    left in bf16 fails on float32 hidden states (`expected m1 and m2 to have the same dtype`).
    """
    import torch

    from expertkit.model.quant import is_quantized

    if not is_quantized(model):  # a peft model answers for its base
        return 0
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast
