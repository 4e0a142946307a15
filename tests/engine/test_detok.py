"""Incremental decoding gives exactly the full decode, token by token, multi-byte characters included."""

from __future__ import annotations

import pytest

from expertkit.engine.answer import IncrementalDecoder


@pytest.mark.parametrize(
    "text", ["I am Sail, the Yunfan Tech assistant.", "我是小帆，云帆科技的助手。🙂 ok", "a\n\n  b"]
)
def test_incremental_equals_full_decode(tiny_model, text):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.step(ids[: i + 1], finished=i == len(ids) - 1) for i in range(len(ids))]
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)
