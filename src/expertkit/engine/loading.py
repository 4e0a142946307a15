"""What the local engines load the same way, whichever runs the model (transformers here, vLLM in its own engine).

    tokenizer = load_chat_tokenizer(config, adapter="saves/legal/lora/sft")
    ids = prompt_ids(tokenizer, [{"role": "user", "content": "hi"}])
    stop = eos_ids(generation_eos_ids(config), tokenizer)

The chat tokenizer (an adapter's own when it saved one: it carries the training chat template), the prompt rendered
as token ids by that template (or a `RawPrompt` as it is), the end-of-answer tokens, the check that an adapter path
is an adapter folder, and the base model for the transformers engine. engine/local.py and engine/vllm_engine.py both
import these, so the two engines render, stop and refuse the same way.
"""

from __future__ import annotations

from pathlib import Path

from expertkit.core.errors import ExpertkitError
from expertkit.engine.config import EngineConfig


class RawPrompt(str):
    """A prompt an engine's `stream` uses as it is, without the chat template (what `stream_text` hands it)."""


def load_chat_tokenizer(config: EngineConfig, adapter: str | None = None, model: str | None = None):
    """The adapter's tokenizer when it saved one (it carries the training chat template), else the model's (`model`,
    default: the config's model_name_or_path)."""
    from expertkit.model.load import load_tokenizer
    from expertkit.model.templates import apply_template

    source = model or config.model_name_or_path
    if adapter and (Path(adapter) / "tokenizer_config.json").is_file():
        source = adapter
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    apply_template(tokenizer, config.template)
    return tokenizer


def prompt_ids(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """The conversation rendered by the tokenizer's chat template, ready for the answer (a RawPrompt: its ids)."""
    if isinstance(messages, RawPrompt):
        return text_ids(tokenizer, messages)
    out = tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def text_ids(tokenizer, prompt: str) -> list[int]:
    """A raw prompt's ids (with BOS where the tokenizer adds one)."""
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def check_adapter_path(name: str, path: str) -> None:
    """A local adapter must be a folder with adapter_config.json (else it is tried as a hub id)."""
    p = Path(path).expanduser()
    if (p / "adapter_config.json").is_file() or not (p.exists() or path.startswith((".", "/", "~"))):
        return
    found = sorted(str(c.parent) for c in p.glob("*/adapter_config.json"))[-3:] if p.is_dir() else []
    hint = f"adapter folders inside it: {', '.join(found)}" if found else "give the output_dir of a LoRA training run"
    raise ExpertkitError(f"adapter '{name}': '{path}' is not a LoRA adapter folder (no adapter_config.json)", hint=hint)


def eos_ids(found: int | list[int] | None, tokenizer) -> list[int]:
    """Every token that ends an answer: the generation config's (`found`: one id, a list for chat models, or None)
    and the tokenizer's."""
    ids = list(found) if isinstance(found, list | tuple) else ([found] if found is not None else [])
    return sorted({*ids, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])})


def generation_eos_ids(config: EngineConfig) -> list[int]:
    """The model's end-of-answer ids from its generation config (else its config), as transformers loads them,
    without loading the weights (vLLM loads them in its own engine)."""
    from transformers import AutoConfig, GenerationConfig

    try:
        ids = GenerationConfig.from_pretrained(config.model_name_or_path).eos_token_id
    except (OSError, ValueError):
        try:
            model = AutoConfig.from_pretrained(config.model_name_or_path, trust_remote_code=config.trust_remote_code)
            ids = getattr(model.get_text_config(), "eos_token_id", None)
        except (OSError, ValueError):
            ids = None
    return list(ids) if isinstance(ids, list | tuple) else ([ids] if ids is not None else [])


def load_base_model(config: EngineConfig, model: str | None = None):
    """The model (`model`, default: the config's) in the config's dtype, on the GPU when there is one, in eval mode;
    on CPU its linear layers packed for oneDNN (model/packed.py)."""
    import torch

    from expertkit.model.load import load_model
    from expertkit.model.packed import pack_linears, packable
    from expertkit.model.quant import inference_dtype, quantized_load_kwargs

    path = model or config.model_name_or_path
    dtype = None if config.dtype == "auto" else getattr(torch, config.dtype)
    if config.quantization_bit:  # bitsandbytes places the weights itself, computing in the dtype asked for
        dtype = inference_dtype(dtype)
    quant = quantized_load_kwargs(config, path, dtype, config.trust_remote_code)
    device = "cuda" if torch.cuda.is_available() else None
    model = load_model(path, dtype, config.trust_remote_code, device=device, quantization=quant).eval()
    if packable(model):  # on CPU: oneDNN-packed linear weights, ~1.4x faster decoding (model/packed.py)
        pack_linears(model)
    return model
