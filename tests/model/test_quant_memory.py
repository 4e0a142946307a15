"""A quantised base on a CPU lets go of its checkpoint: no weight it keeps (embeddings, norms, layers left
unquantised) is a view into the memory-mapped safetensors file, which would keep every page the quantiser read
resident beside the 4-bit copy (bench/qlora_memory.py measured the bf16 file held in full). An unquantised load
stays zero-copy: that is what the check below tells apart."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("bitsandbytes")


def mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of `path` (/proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path.resolve())):
            lo, hi = line.split()[0].split("-")
            ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


def tensors_in_file_map(model, path: Path) -> list[str]:
    ranges = mapped_ranges(path)
    named = [*model.named_parameters(), *model.named_buffers()]
    return [n for n, t in named if any(lo <= t.data_ptr() < hi for lo, hi in ranges)]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
def test_a_quantised_cpu_base_keeps_no_view_into_the_checkpoint(tiny_model):
    import gc

    import torch

    from expertkit.model.load import load_model
    from expertkit.model.quant import QuantizationKeys, quantized_load_kwargs

    checkpoint = Path(tiny_model) / "model.safetensors"
    plain = load_model(str(tiny_model), torch.float32)
    assert tensors_in_file_map(plain, checkpoint)  # zero-copy: the check sees views into the map
    del plain
    gc.collect()
    quantization = quantized_load_kwargs(QuantizationKeys(quantization_bit=4), str(tiny_model), torch.float32)
    model = load_model(str(tiny_model), torch.float32, quantization=quantization)
    assert {type(m).__name__ for m in model.modules()} >= {"Linear4bit", "Embedding"}
    assert tensors_in_file_map(model, checkpoint) == []
