"""Load a tokenizer and a causal LM the way users point at them: a local folder (or a hub id when online)."""

from __future__ import annotations

import logging
from pathlib import Path

from expertkit.core.errors import ExpertkitError

logger = logging.getLogger(__name__)


def check_model_path(path: str, what: str = "model_name_or_path") -> None:
    """A local path must be a model folder; anything else is tried as a hub id by transformers."""
    p = Path(path).expanduser()
    looks_local = p.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1
    if not looks_local:
        return
    if not p.is_dir() or not (p / "config.json").is_file():
        parent = p.parent if p.parent.is_dir() else Path(".")
        found = sorted(d.name for d in parent.iterdir() if (d / "config.json").is_file())[:10]
        hint = (
            f"model folders under {parent}: {', '.join(found)}"
            if found
            else "download the model first, or use `expertkit demo` to build a tiny offline one"
        )
        raise ExpertkitError(f"{what} '{path}' is not a model folder (no config.json)", hint=hint)


def _hub_error(path: str, error: Exception) -> ExpertkitError:
    return ExpertkitError(
        f"could not load '{path}': {type(error).__name__}: {str(error).splitlines()[0][:300]}",
        hint="if this is a hub id, check the name and your network (HF_ENDPOINT for a mirror); "
        "if it is a folder, check the path",
    )


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """From a model folder, or from a run/adapter folder that saved its tokenizer (and chat template)."""
    from transformers import AutoTokenizer

    if not (Path(path).expanduser() / "tokenizer_config.json").is_file():
        check_model_path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise _hub_error(path, e) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: str,
    dtype=None,
    trust_remote_code: bool = False,
    device: str | None = None,
    head: str | None = None,
    quantization: dict | None = None,
):
    """A causal LM in the given torch dtype (None: float32 on CPU, the checkpoint's own on GPU); head="score": the
    same model with a one-output score head instead of the LM head (a reward model, new head weights).
    `quantization`: model/quant.py's `quantized_load_kwargs` (bitsandbytes places the weights itself)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    check_model_path(path)
    if dtype is None:
        dtype = "auto" if torch.cuda.is_available() else torch.float32
    auto, extra = (AutoModelForSequenceClassification, {"num_labels": 1}) if head else (AutoModelForCausalLM, {})
    try:
        model = auto.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code, **extra, **(quantization or {})
        )
    except OSError as e:
        raise _hub_error(path, e) from None
    if device and not quantization:
        model.to(device)
    if quantization:
        from expertkit.model.quant import release_checkpoint_map

        release_checkpoint_map(model)  # else the whole checkpoint stays mapped beside its quantised copy
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
