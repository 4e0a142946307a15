"""Attention over a padding-free row one example at a time, for CPUs (train/speed.py turns it on).

A padding-free row holds several examples (position ids restart at 0 for each). transformers' `sdpa` path then
builds a block-diagonal causal mask over the whole row, and with a mask PyTorch's CPU kernel computes every
(query, key) block of the row: for two ~260-token examples that is ~4x the work of each example's own causal
attention, and it was a third of a bf16 training step's time on the bench work (bench/README.md, issue 17).
`segment_sdpa` instead calls `scaled_dot_product_attention(is_causal=True)` on each example's slice: the same
attention (each token still sees only the earlier tokens of its own example), no mask to build, less arithmetic.

Registered with transformers' AttentionInterface as `SEGMENT_SDPA`; a name the mask interface does not know, so
transformers builds no mask for it. That is why it is on only while the trainer trains (`SegmentAttentionCallback`):
generation after training (the learning check) pads batches and needs sdpa's masks again. Anything but one
padding-free row (a batch of several rows, a mask, a cache) goes to transformers' own sdpa function unchanged.
"""

from __future__ import annotations

from transformers import TrainerCallback

from expertkit.train.speed import ROW_MULTIPLE, unwrapped

SEGMENT_SDPA = "expertkit_segment_sdpa"
MATMUL_MAX = 768  # tokens: longer examples take the flash kernel (a length x length fp32 matrix per head otherwise)
SHAPE_MULTIPLE = ROW_MULTIPLE  # tokens: the matmul path's lengths, as train/speed.py's for whole rows


def segment_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention-function signature: (batch, heads, length, dim) in, (batch, length, heads, dim) out."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    length = query.shape[2]
    one_row = position_ids is not None and query.shape[0] == 1 and key.shape[2] == length
    if not one_row or attention_mask is not None or not getattr(module, "is_causal", True):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    starts = (position_ids.reshape(-1)[:length] == 0).nonzero().flatten().tolist()
    bounds = [0] + [s for s in starts if s > 0] + [length]
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    parts = [example_attention(query, key, value, a, b, dropout, scaling) for a, b in zip(bounds, bounds[1:])]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out.transpose(1, 2).contiguous(), None


def example_attention(query, key, value, a: int, b: int, dropout: float, scaling):
    """Tokens a..b of the row. The matmul path takes a slice rounded up to a multiple of SHAPE_MULTIPLE tokens (the
    row's next tokens, or zeros past its end) and keeps the first b - a outputs: causal, so no kept token sees the
    extra ones, and oneDNN meets a few matmul shapes instead of one per example length, whose cached kernels grew
    peak RSS by ~200 MiB in 3 bench steps."""
    import torch

    n, length = b - a, query.shape[2]
    if query.dtype == torch.float32 or n > MATMUL_MAX or dropout:
        return causal_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout, scaling)
    rounded = -(-n // SHAPE_MULTIPLE) * SHAPE_MULTIPLE
    end = min(a + rounded, length)
    short = rounded - (end - a)
    q, k, v = (t[:, :, a:end] for t in (query, key, value))
    if short:
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, short)) for t in (q, k, v))
    return causal_attention(q, k, v, dropout, scaling)[:, :, :n]


def causal_attention(query, key, value, dropout: float, scaling):
    """One example's causal attention. In bf16 / fp16 up to MATMUL_MAX tokens: two half-precision matmuls and an
    fp32 softmax (transformers' eager arithmetic), which on CPU ran forward + backward in ~0.55x the time of PyTorch's
    flash kernel at 150-300 tokens (bench/README.md); longer, or in fp32, that kernel (no length x length matrix)."""
    import torch

    length = query.shape[2]
    if query.dtype == torch.float32 or length > MATMUL_MAX or dropout:
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, dropout_p=dropout, scale=scaling, is_causal=True
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)).float() * scale
    future = torch.ones(length, length, dtype=torch.bool, device=query.device).triu(1)
    weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1).to(value.dtype)
    return torch.matmul(weights, value)


def set_segment_attention(model, on: bool) -> None:
    """`segment_sdpa` (registered once) on a loaded sdpa model, or sdpa back."""
    from transformers import AttentionInterface

    base = unwrapped(model)
    AttentionInterface.register(SEGMENT_SDPA, segment_sdpa)
    base.set_attn_implementation(SEGMENT_SDPA if on else "sdpa")


class SegmentAttentionCallback(TrainerCallback):
    """Attention one example at a time while training; transformers' sdpa again once training ends."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            set_segment_attention(model, True)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            set_segment_attention(model, False)
