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


def test_transformers_tokenizers_skip_decodes_input_conversion_and_others_keep_their_own(tiny_model):
    """IncrementalDecoder calls `_decode` where `decode` is transformers' own (which only converts the ids and calls
    it); a tokenizer with its own `decode` is decoded by it."""
    from transformers import AutoTokenizer

    from expertkit.engine.answer import plain_decode

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert plain_decode(tokenizer) == tokenizer._decode

    class OwnDecode:
        def decode(self, ids, skip_special_tokens=False):
            return "".join(chr(ord("a") + i) for i in ids)

        def _decode(self, ids, skip_special_tokens=False):
            raise AssertionError("not this one")

    decoder = IncrementalDecoder(OwnDecode())
    assert [decoder.step([0, 1, 2][: i + 1], finished=i == 2) for i in range(3)] == ["a", "b", "c"]
