"""train/speed.py: one example per forward pass when switched on (the same optimiser step); attention per example."""

from __future__ import annotations

from types import SimpleNamespace

from expertkit.train.speed import split_micro_batches


def args(per=2, accumulation=8, deepspeed=None):
    return SimpleNamespace(
        per_device_train_batch_size=per, gradient_accumulation_steps=accumulation, deepspeed=deepspeed
    )


def test_split_keeps_the_examples_per_step(monkeypatch):
    config = SimpleNamespace(padding_free=True)
    monkeypatch.delenv("EXPERTKIT_SPEED_ON", raising=False)
    assert not split_micro_batches(config, args())  # off by default
    monkeypatch.setenv("EXPERTKIT_SPEED_ON", "split")
    a = args()
    assert split_micro_batches(config, a)
    assert (a.per_device_train_batch_size, a.gradient_accumulation_steps) == (1, 16)
    for skipped in (args(per=1), args(deepspeed="ds.json")):
        assert not split_micro_batches(config, skipped)
    assert not split_micro_batches(SimpleNamespace(padding_free=False), args())
    monkeypatch.setenv("EXPERTKIT_SPEED_ON", "rows")
    a = args()
    assert not split_micro_batches(config, a)
    assert (a.per_device_train_batch_size, a.gradient_accumulation_steps) == (2, 8)


def test_segment_attention_only_for_plain_causal_models(tiny_model, monkeypatch):
    from transformers import AutoModelForCausalLM

    from expertkit.train.speed import segment_attention

    monkeypatch.delenv("EXPERTKIT_SPEED_OFF", raising=False)
    config = SimpleNamespace(padding_free=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa")
    assert segment_attention(config, model)
    model.config.layer_types = ["sliding_attention"] + model.config.layer_types[1:]
    assert not segment_attention(config, model)
    eager = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="eager")
    assert not segment_attention(config, eager)
    monkeypatch.setenv("EXPERTKIT_SPEED_OFF", "attention")
    assert not segment_attention(config, AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa"))
