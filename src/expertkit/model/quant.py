"""A base model loaded quantised through bitsandbytes: LLaMA-Factory's `quantization_bit` keys (QLoRA).

    expertkit train my.yaml quantization_bit=4                    # LoRA on a 4-bit nf4 base (double quantisation)
    expertkit chat model_name_or_path=... quantization_bit=8      # the same keys on chat / serve / eval

`QuantizationKeys` holds the keys (train and the engines' configs inherit it); `quantized_load_kwargs` turns them
into `from_pretrained`'s `quantization_config` and `device_map`, as LLaMA-Factory's `configure_quantization` does:
4 bits with the compute dtype as both `bnb_4bit_compute_dtype` and `bnb_4bit_quant_storage`, 8 bits as LLM.int8.

bitsandbytes' CPU backend (0.49+) packs a 4-bit layer's weights for its AVX512-BF16 kernel the first time the layer
runs without gradients (generation, evaluation); that packing needs the layer's input width to be a multiple of the
block size (64) and its output width a multiple of 32, and fails deep inside otherwise (`shape '[128, 5]' is
invalid for input of size 704` on a 352-wide MLP). On a CPU such layers stay unquantised, with a warning naming
them (`layers_left_unquantized`).
"""

from __future__ import annotations

import logging
import os
from typing import Literal

from pydantic import field_validator, model_validator

from expertkit.core.config import StageConfig
from expertkit.core.errors import ExpertkitError

logger = logging.getLogger(__name__)

BLOCK_SIZE = 64  # bitsandbytes' 4-bit quantisation block (absmax per 64 input weights)
CPU_PACK_ROWS = 32  # its CPU kernel packs output rows in blocks of 32
BNB_MIN = "0.43.0"  # LLaMA-Factory's floor for 4-bit under ZeRO-3 / FSDP (bnb_4bit_quant_storage)
INSTALL_HINT = "pip install 'expertkit[qlora]' (bitsandbytes)"


class QuantizationKeys(StageConfig):
    """LLaMA-Factory's on-the-fly quantisation keys (bitsandbytes), shared by train, chat, serve and eval."""

    quantization_bit: int | None = None
    """Load the base model quantised by bitsandbytes: 4 (QLoRA, nf4 or fp4) or 8 (LLM.int8); unset: not quantised.
    Training: LoRA only; the adapter is saved in full precision and export merges it into the unquantised base."""

    quantization_type: Literal["nf4", "fp4"] = "nf4"
    """quantization_bit 4: the 4-bit data type, nf4 (NormalFloat, QLoRA's) or fp4."""

    double_quantization: bool = True
    """quantization_bit 4: quantise the quantisation constants too (QLoRA's double quantisation, ~0.4 bit/weight
    less)."""

    @field_validator("quantization_bit")
    @classmethod
    def _bits(cls, v: int | None) -> int | None:
        if v is not None and v not in (4, 8):
            raise ValueError(
                f"{v} bits is not a bitsandbytes quantisation: use 4 (QLoRA, nf4 / fp4) or 8 (LLM.int8), or leave "
                "it unset to load the base unquantised"
            )
        return v

    @model_validator(mode="after")
    def _where_it_applies(self):
        kind, engine = getattr(self, "finetuning_type", "lora"), getattr(self, "engine", "transformers")
        if self.quantization_bit and engine != "transformers":
            raise ValueError(
                f"quantization_bit loads a local model with transformers; engine={engine} "
                + (
                    "quantises in vLLM itself: vllm_config='{quantization: bitsandbytes}' (4-bit)"
                    if engine == "vllm"
                    else "runs the model elsewhere: drop quantization_bit"
                )
            )
        if self.quantization_bit and kind != "lora":
            raise ValueError(
                f"quantization_bit {self.quantization_bit} with finetuning_type {kind}: a quantised base trains LoRA "
                "only (its 4/8-bit weights take no gradient; LLaMA-Factory's rule too): set finetuning_type: lora "
                "(QLoRA), or drop quantization_bit"
            )
        return self

    def describe_quantization(self) -> str:
        """`4-bit nf4, double quantisation` (the run header's words); '' when not quantised."""
        if not self.quantization_bit:
            return ""
        if self.quantization_bit == 8:
            return "8-bit LLM.int8"
        return f"4-bit {self.quantization_type}" + (", double quantisation" if self.double_quantization else "")


def require_bitsandbytes(needed_for: str = "quantization_bit"):
    """bitsandbytes imported, or the extras' error with the install hint (never an ImportError)."""
    from expertkit.core.optional import import_optional

    return import_optional("bitsandbytes", "bitsandbytes", "qlora", needed_for=needed_for)


def bitsandbytes_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bitsandbytes")
    except PackageNotFoundError:
        return ""


def quantization_config(bit: int, quant_type: str = "nf4", double: bool = True, compute_dtype=None, skip=None):
    """transformers' BitsAndBytesConfig for `bit` 4 or 8 (LLaMA-Factory's settings); `skip`: module names left
    unquantised (replaces transformers' default skips, so give those too)."""
    from transformers import BitsAndBytesConfig

    if bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    if bit != 4:
        raise ExpertkitError(f"quantization_bit {bit}: bitsandbytes quantises to 4 or 8 bits", hint="use 4 or 8")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype,  # LLaMA-Factory: what lets FSDP / ZeRO-3 shard the 4-bit weights
        llm_int8_skip_modules=skip,
    )


def layers_left_unquantized(model) -> list[str]:
    """Linear layers of `model` (a skeleton is enough) bitsandbytes' CPU 4-bit kernel cannot take: input width not a
    multiple of 64 or output width not a multiple of 32."""
    import torch

    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and (m.in_features % BLOCK_SIZE or m.out_features % CPU_PACK_ROWS or m.in_features % 2)
    ]


def name_layers(names: list[str]) -> str:
    """`model.layers.*.mlp.down_proj (28 layers), lm_head`: module names with their layer numbers folded."""
    import re

    folded: dict[str, int] = {}
    for name in names:
        key = re.sub(r"\.\d+\.", ".*.", name)
        folded[key] = folded.get(key, 0) + 1
    return ", ".join(k + (f" ({n} layers)" if "*" in k else "") for k, n in folded.items())


def _default_skips(path: str, trust_remote_code: bool, head: bool) -> tuple[list[str], list[str]]:
    """(transformers' default skips: the output head and tied weights, the CPU kernel's misfits) from a skeleton of
    the model built on the meta device (no weights are read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.quantizers.base import get_keys_to_not_convert

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    auto, extra = (AutoModelForSequenceClassification, {"num_labels": 1}) if head else (AutoModelForCausalLM, {})
    if extra:
        config.num_labels = 1
    with torch.device("meta"):
        skeleton = auto.from_config(config, trust_remote_code=trust_remote_code)
    return list(get_keys_to_not_convert(skeleton)), layers_left_unquantized(skeleton)


def quantized_load_kwargs(keys: QuantizationKeys, path: str, compute_dtype, trust_remote_code: bool = False,
                          head: bool = False, sharded: bool = False) -> dict:  # fmt: skip
    """`from_pretrained` keyword arguments loading `path` quantised as `keys` say ({} when they say not to).

    `compute_dtype`: the dtype the 4-bit layers compute in (the run's bf16 / fp16 / fp32); `head`: a reward model's
    score head; `sharded`: ZeRO-3 / FSDP place the weights themselves (no device_map).
    """
    if not keys.quantization_bit:
        return {}
    require_bitsandbytes()
    import torch

    skip = None
    on_cpu = not torch.cuda.is_available()
    if keys.quantization_bit == 4 and on_cpu:
        defaults, misfits = _default_skips(path, trust_remote_code, head)
        misfits = [m for m in misfits if m not in defaults]
        if misfits:
            logger.warning(
                "left unquantised on this CPU (bitsandbytes' CPU 4-bit kernel needs input widths in multiples of %d "
                "and output widths in multiples of %d): %s",
                BLOCK_SIZE,
                CPU_PACK_ROWS,
                name_layers(misfits),
            )
            skip = defaults + misfits
    config = quantization_config(
        keys.quantization_bit, keys.quantization_type, keys.double_quantization, compute_dtype, skip
    )
    out: dict = {"quantization_config": config}
    if not sharded:  # this process's own device (LOCAL_RANK under torchrun), as LLaMA-Factory places it
        out["device_map"] = {"": "cpu" if on_cpu else f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"}
    logger.info(
        "loading %s quantised: %s (bitsandbytes %s)", path, keys.describe_quantization(), bitsandbytes_version()
    )
    return out


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def inference_dtype(dtype=None):
    """The dtype a quantised base computes in for generation: `dtype` when given, else bf16 on a GPU that has it,
    fp16 on other GPUs, float32 on a CPU."""
    import torch

    if dtype is not None:
        return dtype
    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def apply_adapter(base, adapter: str):
    """`adapter` over a quantised `base`, unmerged (LLaMA-Factory's rule: never merge into 4/8-bit weights; the LoRA
    layers run beside them in full precision)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, adapter).eval()


def release_checkpoint_map(model) -> int:
    """Copy the weights a quantised CPU model keeps in full precision (embeddings, norms, layers left unquantised)
    out of the checkpoint's memory map; the number copied.

    transformers maps the safetensors file and its unquantised tensors stay views into that map, so every page of the
    file that quantisation read stays resident and counted in the process's memory: on CPU a 4-bit base then held the
    whole bf16 checkpoint besides its 4-bit copy (bench/qlora_memory.py). Once nothing points into the map it is
    released. A base loaded without quantisation keeps its zero-copy map: that is its weights.
    """
    import bitsandbytes as bnb

    seen: set[int] = set()  # tied weights (embeddings = output head) are one tensor: copy it once
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in seen or isinstance(tensor, (bnb.nn.Params4bit, bnb.nn.Int8Params)):
            continue
        seen.add(id(tensor))
        if tensor.device.type == "cpu":
            tensor.data = tensor.data.clone()
    return len(seen)
