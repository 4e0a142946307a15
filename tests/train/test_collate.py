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


def test_logits_only_where_labels_are_gives_the_same_loss_and_gradients(tiny_model):
    """loss_logits_only: the LM head runs on the labelled positions alone; loss and LoRA-free gradients agree."""
    from transformers import AutoModelForCausalLM

    from expertkit.train.speed import loss_logits_only

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.config.use_cache = False
    full, only = PaddingFreeCollator()(features()), PaddingFreeCollator(loss_logits_only=True)(features())
    assert only["shift_labels"].shape[1] == (only["labels"] != -100).sum() == 57  # 30 + 17 + 25 tokens, 5 prompt each
    assert only["logits_to_keep"].numel() == only["shift_labels"].shape[1]
    losses, grads = [], []
    for batch in (full, only):
        model.zero_grad()
        out = model(**batch, num_items_in_batch=int((batch["labels"][0, 1:] != -100).sum()))
        out.loss.backward()
        losses.append(out.loss.item())
        grads.append(model.model.layers[0].mlp.down_proj.weight.grad.clone())
    assert abs(losses[0] - losses[1]) < 1e-5
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert only["logits_to_keep"].numel() < full["input_ids"].shape[1]  # fewer logits computed
    assert out.logits.shape[1] == only["logits_to_keep"].numel()

    class Config:
        padding_free = True

    assert loss_logits_only(Config(), model)
    Config.padding_free = False
    assert not loss_logits_only(Config(), model)


def test_rows_padded_to_a_multiple_give_the_same_loss(tiny_model):
    """row_multiple: a padding segment of its own (positions restart) rounds the row up; the loss does not move."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.config.use_cache = False
    plain = PaddingFreeCollator(loss_logits_only=True)(features())
    rounded = PaddingFreeCollator(loss_logits_only=True, pad_to_multiple_of=64, pad_token_id=0)(features())
    assert rounded["input_ids"].shape[1] == 128 and rounded["logits_to_keep"].numel() == 64
    assert (rounded["shift_labels"] != -100).sum() == (plain["shift_labels"] != -100).sum() == 57
    with torch.no_grad():
        a, b = (model(**batch, num_items_in_batch=57).loss.item() for batch in (plain, rounded))
    assert abs(a - b) < 1e-5


def test_rows_padded_by_default_on_cpu(monkeypatch):
    """row_multiple: 64 on CPU by default; EXPERTKIT_SPEED_OFF=rows turns it off; ..._ON=rows changes nothing."""
    from expertkit.train.speed import ROW_MULTIPLE, row_multiple

    class Config:
        padding_free = True

    monkeypatch.delenv("EXPERTKIT_SPEED_OFF", raising=False)
    monkeypatch.delenv("EXPERTKIT_SPEED_ON", raising=False)
    assert row_multiple(Config()) == ROW_MULTIPLE == 64
    monkeypatch.setenv("EXPERTKIT_SPEED_ON", "rows")
    assert row_multiple(Config()) == 64
    monkeypatch.setenv("EXPERTKIT_SPEED_OFF", "logits, rows")
    assert row_multiple(Config()) == 0
    monkeypatch.delenv("EXPERTKIT_SPEED_OFF")
    Config.padding_free = False
    assert row_multiple(Config()) == 0
