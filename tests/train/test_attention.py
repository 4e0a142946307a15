"""Attention one example at a time (train/attention.py) gives sdpa's block-diagonal-mask result, and goes away."""

from __future__ import annotations

import torch

from expertkit.train.attention import SEGMENT_SDPA, SegmentAttentionCallback, set_segment_attention
from expertkit.train.collate import PaddingFreeCollator


def features():
    g = torch.Generator().manual_seed(1)
    out = []
    for n in (30, 17, 25):
        ids = torch.randint(5, 300, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * 5 + ids[5:]})
    return out


def test_segment_attention_gives_the_same_loss_and_gradients(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa")
    model.config.use_cache = False
    batch = PaddingFreeCollator(loss_logits_only=True, pad_to_multiple_of=64)(features())  # 3 examples + padding
    results = []
    for on in (False, True):
        set_segment_attention(model, on)
        model.zero_grad()
        loss = model(**batch, num_items_in_batch=57).loss
        loss.backward()
        results.append((loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    assert model.config._attn_implementation == SEGMENT_SDPA
    (plain, plain_grad), (seg, seg_grad) = results
    assert abs(plain - seg) < 1e-5
    assert torch.allclose(plain_grad, seg_grad, atol=1e-6)


def test_callback_switches_back_to_sdpa_for_generation(tiny_model):
    """After training the model generates with sdpa's padding masks again (a left-padded batch = one at a time)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa")
    tok = AutoTokenizer.from_pretrained(tiny_model, padding_side="left")
    callback = SegmentAttentionCallback()
    callback.on_train_begin(None, None, None, model=model)
    assert model.config._attn_implementation == SEGMENT_SDPA
    callback.on_train_end(None, None, None, model=model)
    assert model.config._attn_implementation == "sdpa"
    prompts = ["hello there", "a much longer prompt than the first one"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    together = model.generate(**batch, max_new_tokens=4, do_sample=False)[:, batch["input_ids"].shape[1] :]
    alone = model.generate(**tok(prompts[:1], return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert together[0].tolist() == alone[0, -4:].tolist()


def test_bf16_matmul_path_matches_masked_attention():
    """bf16 examples (lengths rounded up to 64 inside, past the row's end too) against fp32 block-diagonal sdpa."""
    from types import SimpleNamespace

    from expertkit.train.attention import segment_sdpa

    g = torch.Generator().manual_seed(0)
    lengths = (30, 70, 25)  # the last one ends the row: its 64-token slice is padded with zeros
    q, k, v = (torch.randn(1, 4, sum(lengths), 16, generator=g) for _ in range(3))
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    causal = torch.arange(sum(lengths))[:, None] >= torch.arange(sum(lengths))[None, :]
    mask = causal & (segment[:, None] == segment[None, :])
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    module = SimpleNamespace(num_key_value_groups=1, is_causal=True)
    got, _ = segment_sdpa(module, q.bfloat16(), k.bfloat16(), v.bfloat16(), None, position_ids=positions)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    assert (got.float() - want).abs().max() < 3e-2
