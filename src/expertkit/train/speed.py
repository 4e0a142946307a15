"""The speed-ups a run turns on by itself where they give the same loss, and the header line that names them.

Measured on the anchor work (bench/train_throughput.py, bench/README.md "where the time goes"):
- padding-free batches (`padding_free`, the default; train/collate.py): no compute on padding;
- LM head and loss only where a label is (`loss_logits_only`): in SFT the prompt tokens carry no loss, yet a model
  computes their logits (hidden x vocab each, and the same again backwards) and the loss upcasts them to fp32.
  Skipping them changes no loss value (the same logits at the positions that count).
- rows of a few lengths (`row_multiple`, the default on CPU): each padding-free row is padded to a multiple of 64
  tokens with a segment of its own, so oneDNN meets a few matmul shapes again and again instead of a new one per
  batch (each new shape builds kernels and grows its primitive cache). Same loss, 0-63 more tokens per row; on a
  quiet machine (bf16, 15 steps) 1.15x the speed of unpadded rows at 0.48x their peak RSS (1,382 vs 2,883 MiB).
- attention one example at a time (`segment_attention`, the default on CPU; train/attention.py): with a padding-free
  row transformers' sdpa builds a block-diagonal mask over the whole row, and PyTorch's CPU kernel then computes
  every block of it; causal attention on each example's slice does ~1/4 of that work for two examples per row.
  The same attention (in-process: fp32 loss identical, bf16 within 2e-5 relative); on while training only. bf16,
  3 bench steps (loaded machine): 1.24x tok/s, +163 MiB peak RSS (the fp32 scores its backward keeps).
- one example per micro-batch (`split_micro_batches`, OFF unless `EXPERTKIT_SPEED_ON=split`): batch 2 x
  accumulation 8 runs as 1 x 16, the same 16 examples per optimiser step in the same order; the loss is normalised
  by the step's label count (`num_items_in_batch`), so it is the same sum. In-process with 1 thread -8..10% CPU per
  token (smaller rows stay in the caches), but twice the forward passes double the per-op overhead, and in one
  2-step bench run (loaded machine, 1 thread) it was slower by wall clock: not the default until a quiet run shows
  it (bench variant `bf16-split`).

`EXPERTKIT_SPEED_OFF=logits,rows,attention` switches them off and `EXPERTKIT_SPEED_ON=split` on, to measure what
each buys (bench/train_throughput.py --variants bf16,bf16-plain,bf16-norows,bf16-noattn,bf16-split);
`EXPERTKIT_SPEED_ON=rows`, which turned rows on before they were the default, is still accepted and changes nothing.
"""

from __future__ import annotations

import inspect

from expertkit.core.switches import switched
from expertkit.train.config import TrainConfig

ROW_MULTIPLE = 64
# model types whose attention is plain causal softmax(QK^T * scale) V (no soft-capping, bias or sinks), the only
# arithmetic train/attention.py reproduces
PLAIN_CAUSAL_ATTENTION = {"llama", "mistral", "qwen2", "qwen3"}


def loss_logits_only(config: TrainConfig, model) -> bool:
    """On for padding-free batches when the model can slice its logits by positions and uses the standard
    causal-LM loss (which takes `shift_labels`); a model with its own loss keeps computing every logit."""
    if not config.padding_free or "logits" in switched_off():
        return False
    from transformers.loss.loss_utils import ForCausalLMLoss

    base = unwrapped(model)
    try:
        takes_positions = "logits_to_keep" in inspect.signature(base.forward).parameters
        standard_loss = base.loss_function is ForCausalLMLoss
    except (AttributeError, TypeError, ValueError):
        return False
    return takes_positions and standard_loss


def row_multiple(config: TrainConfig) -> int:
    """Pad padding-free rows to a multiple of this many tokens: 64 on CPU unless switched off, else 0 (off).
    On a GPU the kernels take any length (and flash-attention's varlen path wants no padding), so rows stay exact."""
    import torch

    if not config.padding_free or "rows" in switched_off() or torch.cuda.is_available():
        return 0
    return ROW_MULTIPLE


def split_micro_batches(config: TrainConfig, args) -> bool:
    """One example (or packed row) per forward pass on CPU when switched on: the accumulation takes over the batch."""
    import torch

    per = args.per_device_train_batch_size
    if per <= 1 or not config.padding_free or "split" not in switched("ON") or torch.cuda.is_available():
        return False
    if getattr(args, "deepspeed", None):  # its config holds the micro-batch size too
        return False
    args.gradient_accumulation_steps *= per
    args.per_device_train_batch_size = 1
    return True


def segment_attention(config: TrainConfig, model) -> bool:
    """On CPU for padding-free rows when the model runs transformers' sdpa (not eager, not flash-attention)."""
    import torch

    if not config.padding_free or "attention" in switched_off() or torch.cuda.is_available():
        return False
    base = unwrapped(model)
    c = base.config
    if getattr(c, "_attn_implementation", None) != "sdpa" or c.model_type not in PLAIN_CAUSAL_ATTENTION:
        return False
    # a sliding window would need a mask per example: only models whose every layer attends to all earlier tokens
    layer_types = getattr(c, "layer_types", None)
    if layer_types:
        return all(t == "full_attention" for t in layer_types)
    return getattr(c, "sliding_window", None) is None or getattr(c, "use_sliding_window", True) is False


def unwrapped(model):
    """The transformers model under a peft wrapper (or the model itself when it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def switched_off() -> set[str]:
    return switched("OFF")


def speed_line(config: TrainConfig, trainer) -> dict[str, str]:
    """The header's 'speed' row: what is on, so that a run's figures can be read."""
    on = []
    if config.padding_free:
        on.append("padding-free batches")
    collator = getattr(trainer, "data_collator", None)
    if getattr(collator, "loss_logits_only", False):
        on.append("LM head + loss on labelled positions only")
    callbacks = getattr(getattr(trainer, "callback_handler", None), "callbacks", [])
    if any(type(c).__name__ == "SegmentAttentionCallback" for c in callbacks):
        on.append("attention per example (no block-diagonal mask)")
    args = getattr(trainer, "args", None)
    if args is not None and args.per_device_train_batch_size != config.per_device_train_batch_size:
        on.append(f"one row per forward pass ({args.gradient_accumulation_steps} per optimiser step)")
    if getattr(collator, "multiple", 0):
        on.append(f"rows padded to a multiple of {collator.multiple} tokens (oneDNN reuses its kernels)")
    if config.packing:
        on.append("packing")
    if config.gradient_checkpointing:
        on.append("gradient checkpointing (slower, less memory)")
    return {"speed": ", ".join(on) or "plain padded batches"}
