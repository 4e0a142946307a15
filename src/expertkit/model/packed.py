"""Linear layers whose weights are packed once for oneDNN, for generating text on a CPU.

Decoding a few tokens at a time, a CPU spends its time reading weights: every step multiplies one to a few rows of
activations by every weight matrix of the model. ATen's fp32 `linear` (MKL sgemm on the [out, in] weight as stored)
streams those matrices at a fraction of the memory bandwidth; oneDNN, given the weight reordered once into its own
blocked layout (packed for any number of rows), reads it 1.6x as fast for one row and 2.5x for four. This is what
`torch.compile` does on CPU with freezing on (inductor replaces each linear by oneDNN's packed one), without compiling
anything: `pack_linears` swaps every `nn.Linear` of a model for a `PackedLinear` over the packed weight.

Measured on bench/serve_throughput.py's 27M-parameter fp32 Qwen2 (2 cores, in-process, `model.generate`): 15.6 ->
10.9 ms per token alone, 23.3 -> 15.8 ms per step for 4 sequences; the same greedy tokens. Each output is the same
sum of products in another order (differences ~1e-5 in fp32).

For inference only (the packed weight has no gradient). The plain weight is not kept: `unpack_linears` rebuilds it
exactly (oneDNN's reorder is a permutation) when an adapter is to be merged into a packed model. Packed: float32, and
bfloat16 where the CPU has bf16 instructions; not on a GPU, not for quantised layers (they are not `nn.Linear`).
An LM head tied to the input embeddings is packed too, so that matrix is held twice (the embedding keeps its own).
`EXPERTKIT_SPEED_OFF=packed` leaves the layers as they are.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from expertkit.core.switches import switched

logger = logging.getLogger(__name__)


class PackedLinear(nn.Module):
    """`nn.Linear`'s forward over a weight packed for oneDNN (`packed`, a non-persistent buffer: state dicts and
    `save_pretrained` never see it)."""

    def __init__(self, packed, bias, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("packed", packed, persistent=False)
        self.bias = bias

    def forward(self, x):
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def unpacked(self) -> nn.Linear:
        """The `nn.Linear` it was made from: the same weight values, in a tensor of their own."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = nn.Parameter(self.packed.to_dense(), requires_grad=False)
        linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def packable(model) -> bool:
    """Whether `pack_linears` applies: a CPU model in float32 (or bfloat16 on a CPU with bf16 instructions), with
    oneDNN in this torch build, not quantised, and `packed` not in EXPERTKIT_SPEED_OFF."""
    if "packed" in switched("OFF") or getattr(model, "is_quantized", False):
        return False
    weight = next((m.weight for m in model.modules() if type(m) is nn.Linear), None)
    if weight is None or weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if weight.dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return weight.dtype == torch.float32


Packs = dict[int, tuple[torch.Tensor, torch.Tensor]]  # id(weight) -> (that weight, its packed tensor)


def pack_linears(model, reuse: Packs | None = None) -> int:
    """Swap every `nn.Linear` of `model` (in place) for a `PackedLinear`; returns how many. `reuse` holds weights
    already packed (`unpack_linears`): layers with one of those weights share its packed tensor instead of packing
    again. A layer oneDNN refuses stays as it is."""
    made: Packs = dict(reuse or {})  # layers that share one weight (tied) share one packed tensor
    count = 0
    with torch.no_grad():
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is not nn.Linear:
                    continue
                weight, packed = made.get(id(child.weight), (None, None))
                if weight is not child.weight:  # (an id outlives its tensor: check it is the same one)
                    try:
                        packed = torch.ops.mkldnn._reorder_linear_weight(child.weight.detach(), None)
                    except RuntimeError as e:
                        logger.warning("left %s unpacked: oneDNN refused it (%s)", name, e)
                        continue
                    made[id(child.weight)] = (child.weight, packed)
                bias = None if child.bias is None else nn.Parameter(child.bias.detach(), requires_grad=False)
                setattr(parent, name, PackedLinear(packed, bias, child.in_features, child.out_features))
                count += 1
    return count


def unpack_linears(model) -> Packs:
    """Swap every `PackedLinear` of `model` (in place) back for an `nn.Linear` with the same weight values; returns
    the new weights with their packed tensors, for `pack_linears(model, reuse=...)` to share what a merge left
    unchanged."""
    back: Packs = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PackedLinear):
                linear = child.unpacked()
                back[id(linear.weight)] = (linear.weight, child.packed)
                setattr(parent, name, linear)
    return back


def has_packed(model) -> bool:
    return any(isinstance(m, PackedLinear) for m in model.modules())
