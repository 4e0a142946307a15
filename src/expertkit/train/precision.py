"""What the hardware decides for a training run: mixed precision, attention kernel, Liger kernels, checkpointing.

    GPU with bf16 (A100, H100, RTX 30xx+)   -> bf16 mixed precision
    GPU without bf16 (T4, V100, RTX 20xx)   -> fp16 mixed precision with loss scaling (transformers' GradScaler)
    CPU with AVX512-BF16 or AMX             -> bf16 mixed precision; other CPUs -> float32

Each choice is a plain function of the device's facts (`DeviceFacts`) and the user's keys, so that it is unit-tested
with a T4's, a V100's, an A100's or a CPU's facts on a machine without a GPU; `detect_device()` reads the facts from
torch. The GPU branches have not run on a GPU yet (issue 14): they are built from torch's and transformers' documented
behaviour and tested with injected facts only.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from expertkit.core.errors import ConfigError

# flash-attn 2 runs on Ampere or newer (its README: "Ampere, Ada, or Hopper GPUs"); Turing (T4) and Volta (V100) not
FA2_MIN_CAPABILITY = (8, 0)
# Liger kernels are written for these stages' models (the causal LM's own loss); the preference trainers would
# switch to TRL's own Liger losses, which nothing here has checked
LIGER_STAGES = ("sft", "pt")
# stages trained by our own loop (ppo_loop.py), without transformers' GradScaler: fp16 would underflow unscaled
NO_LOSS_SCALING = ("ppo",)
CHECKPOINTING_SHARE = 0.9  # the share of memory a run may fill before the estimate says it does not fit


@dataclass(frozen=True)
class DeviceFacts:
    """What a run's choices depend on: the accelerator that trains, and what is installed for it."""

    kind: Literal["gpu", "cpu"]
    name: str
    count: int = 0  # visible GPUs (0 on a CPU machine)
    bf16: bool = False  # bf16 computed natively: compute capability 8.0+ on a GPU, AVX512-BF16 / AMX on a CPU
    capability: tuple[int, int] | None = None  # CUDA compute capability of GPU 0
    flash_attn: bool = False  # the flash_attn package is installed
    liger: bool = False  # the liger_kernel package is installed

    @property
    def gpu(self) -> bool:
        return self.kind == "gpu"

    def describe(self) -> str:
        if not self.gpu:
            return f"CPU ({'native bf16' if self.bf16 else 'no native bf16'})"
        cap = f", compute capability {self.capability[0]}.{self.capability[1]}" if self.capability else ""
        return f"{self.count} x {self.name}{cap}"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix work in hardware (elsewhere bf16 on CPU is emulated and slow)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def detect_device() -> DeviceFacts:
    """This machine's facts, from torch (CUDA) and the installed packages."""
    import torch

    installed = {n: importlib.util.find_spec(n) is not None for n in ("flash_attn", "liger_kernel")}
    if not torch.cuda.is_available():
        return DeviceFacts(
            "cpu", "CPU", 0, cpu_has_native_bf16(), None, installed["flash_attn"], installed["liger_kernel"]
        )
    # including_emulation=False: torch's default also answers True on a T4, where bf16 is emulated (slow)
    return DeviceFacts(
        "gpu",
        torch.cuda.get_device_name(0),
        torch.cuda.device_count(),
        torch.cuda.is_bf16_supported(including_emulation=False),
        tuple(torch.cuda.get_device_capability(0)),
        installed["flash_attn"],
        installed["liger_kernel"],
    )


@dataclass
class Precision:
    """The run's mixed precision (TrainingArguments' bf16 / fp16), the dtype the weights load in, and why."""

    bf16: bool
    fp16: bool
    load_dtype: object  # torch dtype the weights are loaded in
    reason: str = ""
    notes: dict[str, str] = field(default_factory=dict)  # header lines: precision, attention, checkpointing

    def describe(self) -> str:
        mixed = "bf16 mixed precision" if self.bf16 else "fp16 mixed precision" if self.fp16 else "no mixed precision"
        return f"weights {str(self.load_dtype).replace('torch.', '')}, {mixed}"


def choose_precision(
    facts: DeviceFacts, bf16: bool | None, fp16: bool | None, finetuning_type: str = "lora", stage: str = "sft"
) -> Precision:
    """bf16 / fp16 / float32 from the device and the `bf16` / `fp16` keys (None: unset). Errors before any work.

    Both unset: bf16 where the device computes it natively, else fp16 on a GPU, else float32. `bf16=true` or
    `fp16=true` wins; `fp16=false` alone only rules fp16 out; `bf16=false` alone turns mixed precision off.
    """
    import torch

    if bf16 and fp16:
        raise ConfigError("bf16 and fp16 are both on", hint="choose one (unset both to let the hardware choose)")
    if fp16 and not facts.gpu:
        raise ConfigError(
            "fp16=true needs a GPU: this machine has none (float16 training on a CPU is not supported by torch's "
            "loss scaling)",
            hint="drop fp16 (unset picks bf16 where this CPU computes it natively, else float32), or fp16=false",
        )
    if fp16 and stage in NO_LOSS_SCALING:
        raise ConfigError(
            f"fp16=true with stage {stage}: its own training loop has no loss scaling, which fp16 needs",
            hint="drop fp16 (unset picks bf16 where the GPU has it, else float32)",
        )
    if bf16 and facts.gpu and not facts.bf16:
        raise ConfigError(
            f"bf16=true but {facts.describe()} has no native bf16 (it needs compute capability 8.0 or newer)",
            hint="drop bf16 (unset picks fp16 with loss scaling on this GPU), or fp16=true bf16=false",
        )
    if bf16:
        use, why = "bf16", "bf16=true"
    elif fp16:
        use, why = "fp16", "fp16=true (with loss scaling)"
    elif bf16 is False:
        use, why = "fp32", "bf16=false"
    elif facts.bf16:
        use, why = "bf16", f"unset: {facts.describe()} computes bf16 natively"
    elif facts.gpu and fp16 is None and stage in NO_LOSS_SCALING:
        use, why = "fp32", f"unset: {facts.describe()} has no native bf16, and stage {stage} has no loss scaling"
    elif facts.gpu and fp16 is None:
        use, why = "fp16", f"unset: {facts.describe()} has no native bf16, so fp16 with loss scaling"
    else:
        use, why = "fp32", f"unset: {facts.describe()}" + (", fp16=false" if facts.gpu else "")
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(use)
    # LoRA: frozen base weights in half precision (peft keeps the adapters in fp32), so autocast has nothing to
    # cast or cache; full and freeze keep fp32 master weights for the optimiser
    load_dtype = half if half is not None and finetuning_type == "lora" else torch.float32
    precision = Precision(use == "bf16", use == "fp16", load_dtype, why)
    precision.notes["precision"] = f"{use if use != 'fp32' else 'float32'} ({why})"
    return precision


ATTENTION = {"disabled": "eager", "sdpa": "sdpa", "fa2": "flash_attention_2"}


def choose_attention(facts: DeviceFacts, flash_attn: str, precision: Precision | None = None) -> str | None:
    """transformers' attn_implementation for LLaMA-Factory's `flash_attn` key (None: auto, transformers' choice).

    LLaMA-Factory falls back with a warning when fa2 is asked for and missing; asked for explicitly, it is an error
    here, before any model is loaded.
    """
    if flash_attn == "auto":
        return None
    if flash_attn == "fa2":
        if not facts.gpu:
            raise ConfigError(
                "flash_attn=fa2 needs an NVIDIA GPU: FlashAttention-2 has no CPU kernels",
                hint="use flash_attn=sdpa (or auto) on this machine",
            )
        if facts.capability and facts.capability < FA2_MIN_CAPABILITY:
            raise ConfigError(
                f"flash_attn=fa2 needs an Ampere or newer GPU (compute capability 8.0+); {facts.describe()}",
                hint="use flash_attn=sdpa (or auto): PyTorch's attention has memory-efficient kernels for this GPU",
            )
        if not facts.flash_attn:
            raise ConfigError(
                "flash_attn=fa2 but the flash-attn package is not installed",
                hint="pip install flash-attn --no-build-isolation, or use flash_attn=sdpa (or auto)",
            )
        if precision is not None and not (precision.bf16 or precision.fp16):
            raise ConfigError(
                f"flash_attn=fa2 computes in bf16 or fp16 only, and this run trains in float32 ({precision.reason})",
                hint="drop bf16=false (or set bf16=true / fp16=true), or use flash_attn=sdpa",
            )
    return ATTENTION[flash_attn]


def check_liger(facts: DeviceFacts, enabled: bool, stage: str) -> bool:
    """Whether Liger kernels apply (transformers' use_liger_kernel); an error when they cannot, as LLaMA-Factory
    raises when liger-kernel is missing. Liger's kernels are Triton GPU kernels: a CPU cannot run them."""
    if not enabled:
        return False
    if stage not in LIGER_STAGES:
        raise ConfigError(
            f"enable_liger_kernel is supported for stage {' and '.join(LIGER_STAGES)} here, not {stage}",
            hint="drop enable_liger_kernel for this stage",
        )
    if not facts.gpu:
        raise ConfigError(
            "enable_liger_kernel needs a GPU: Liger's kernels are Triton GPU kernels and this machine has none",
            hint="drop enable_liger_kernel (or set it to false) on this machine",
        )
    if not facts.liger:
        raise ConfigError(
            "enable_liger_kernel is set but liger-kernel is not installed", hint="pip install liger-kernel"
        )
    return True


def choose_checkpointing(
    facts: DeviceFacts,
    gradient_checkpointing: bool | None,
    disable: bool | None,
    need_without: float,
    need_with: float,
    available: float,
    deepspeed: bool = False,
) -> tuple[bool, str]:
    """(on, why): the keys decide when set; unset turns it on only on a GPU where the memory estimate without it
    exceeds 90% of the memory available (need_* and available in bytes) and with it does not exceed more."""
    gib = 1024**3
    if disable:
        return False, "off (disable_gradient_checkpointing=true)"
    if gradient_checkpointing is not None:
        return gradient_checkpointing, f"{'on' if gradient_checkpointing else 'off'} (gradient_checkpointing set)"
    if not facts.gpu:
        return False, "off (unset; gradient_checkpointing=true saves memory at ~30% more time)"
    if deepspeed:
        return False, "off (unset; under DeepSpeed the estimate does not see the sharding)"
    if need_without <= CHECKPOINTING_SHARE * available:
        return False, f"off (unset: ~{need_without / gib:.1f} GiB fits in {available / gib:.1f} GiB without it)"
    return True, (
        f"on (unset: ~{need_without / gib:.1f} GiB without it would not fit in {available / gib:.1f} GiB; "
        f"~{need_with / gib:.1f} GiB with it)"
    )


def enable_checkpointing(model) -> None:
    """Recompute activations in the backward pass (a PEFT model forwards both calls to its base model)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()


def set_attention(model, implementation: str | None, key: str, precision: Precision) -> None:
    """flash_attn's kernel on the loaded model (None: keep transformers' choice); the header says which one."""
    if implementation is not None:
        model.set_attn_implementation(implementation)
    chosen = model.config._attn_implementation
    precision.notes["attention"] = f"{chosen} (flash_attn={key})"


def plan_checkpointing(config, trainer, data, precision: Precision) -> None:
    """Unset gradient_checkpointing: on when the memory estimate on a GPU says the run does not fit without it."""
    without, with_gc = (run_estimate(config, trainer, data, precision, gc) for gc in (False, True))
    facts = detect_device()
    on, why = choose_checkpointing(
        facts,
        config.gradient_checkpointing,
        config.disable_gradient_checkpointing,
        without.total,
        with_gc.total,
        without.available,
        deepspeed=config.deepspeed is not None,
    )
    if config.gradient_checkpointing is None and facts.gpu and not config.deepspeed:
        on = agree_across_ranks(on)  # each rank measured its own free memory: all follow the one that must save
    if on and not config.gradient_checkpointing:
        enable_checkpointing(trainer.model)
    config.gradient_checkpointing = on  # the header's estimate and advice follow the choice
    precision.notes["checkpointing"] = why


def agree_across_ranks(on: bool) -> bool:
    """In a multi-process GPU run: on everywhere when any rank chose it (ranks must run the same backward)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return on
    flag = torch.tensor([int(on)], device=f"cuda:{torch.cuda.current_device()}")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def run_estimate(config, trainer, data, precision: Precision, gradient_checkpointing: bool):
    """The header's peak-memory estimate of one training step, with or without gradient checkpointing."""
    from expertkit.model.load import count_parameters
    from expertkit.train.report import estimate_memory

    trainable, _ = count_parameters(trainer.model)
    row = config.cutoff_len if config.packing else min(data.longest, config.cutoff_len)
    # pair stages hold two sequences per row
    tokens = config.per_device_train_batch_size * row * (1 if config.stage in ("sft", "pt") else 2)
    act_bytes = 2 if precision.bf16 or precision.fp16 else 4
    return estimate_memory(trainer.model, trainable, tokens, gradient_checkpointing, act_bytes)


def check_hardware(config, facts: DeviceFacts) -> Precision:
    """Every hardware choice of a train config that can fail, before any process is spawned or model loaded."""
    precision = choose_precision(facts, config.bf16, config.fp16, config.finetuning_type, config.stage)
    choose_attention(facts, config.flash_attn, precision)
    check_liger(facts, config.enable_liger_kernel, config.stage)
    return precision
