"""Padding-free batches give the same loss as padded ones: each example attends only to itself."""

from __future__ import annotations

import torch

from expertkit.train.collate import PaddedCollator, PaddingFreeCollator, pack_examples


def features():
    g = torch.Generator().manual_seed(0)
    out = []
    for n in (30, 17, 25):
        ids = torch.randint(5, 300, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * 5 + ids[5:]})
    return out


def test_padding_free_equals_padded(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.config.use_cache = False  # as in training; with a cache transformers ignores packed position ids
    with torch.no_grad():
        free = model(**PaddingFreeCollator()(features()))
        padded = model(**PaddedCollator(0)(features()))
    assert abs(free.loss.item() - padded.loss.item()) < 1e-5
    start = 0
    for i, f in enumerate(features()):
        n = len(f["input_ids"])
        assert torch.allclose(free.logits[0, start : start + n], padded.logits[i, :n], atol=1e-4)
        start += n


def test_packing_keeps_every_token_and_respects_cutoff():
    packed = pack_examples(features(), cutoff_len=50)
    assert all(len(p["input_ids"]) <= 50 for p in packed)
    assert sorted(n for p in packed for n in p["segments"]) == [17, 25, 30]
    batch = PaddingFreeCollator()(packed)
    assert batch["input_ids"].shape[1] == 72
    assert (batch["position_ids"][0] == 0).sum() == 3  # three examples, each starting at position 0
