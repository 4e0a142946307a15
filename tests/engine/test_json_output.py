"""JSON mode's checker: every prefix of real JSON passes, nothing it calls whole fails json.loads, and a budgeted
constraint closes the value in time even when the "model" is noise."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expertkit.engine.json_output import (
    JsonConstraint,
    Vocabulary,
    close_len,
    complete,
    feed,
    root_of,
    start,
    token_bytes,
)

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@given(JSON_VALUES, st.booleans(), st.booleans())
@settings(max_examples=200, deadline=None)
def test_every_prefix_of_real_json_is_accepted_and_the_whole_is_complete(value, ascii_only, indent):
    text = json.dumps({"v": value}, ensure_ascii=ascii_only, indent=2 if indent else None).encode()
    state = start("object")
    for i, c in enumerate(text):
        state = feed(state, bytes([c]))
        assert state is not None, text[: i + 1]
        assert close_len(state) >= 0
    assert complete(state) and close_len(state) == 0


@given(st.binary(max_size=24) | st.text(alphabet='{}[]",:0123456789-.eE tfruealsn\\u', max_size=24).map(str.encode))
@settings(max_examples=400, deadline=None)
def test_whatever_the_checker_calls_complete_is_valid_json(data):
    for root in ("object", "array", "any"):
        state = feed(start(root), data)
        if state is not None and complete(state):
            value = json.loads(data.decode("utf-8", errors="replace"))
            assert root == "any" or isinstance(value, dict if root == "object" else list)


@pytest.mark.parametrize(
    "text", ["{,", '{"a" 1}', "[1,]", '{"a":1,}', "01", " {}", "{}x", "{} ", '["\x01"]', '["\\x"]', "[tru1", "[-]"]
)
def test_invalid_json_is_refused(text):
    state = feed(start("object" if text.lstrip().startswith("{") else "any"), text.encode())
    assert state is None or not complete(state)


def test_close_len_counts_the_shortest_way_out():
    assert close_len(start("object")) == 2  # {}
    assert close_len(feed(start("object"), b'{"ke')) == len('":0}')
    assert close_len(feed(start("object"), b'{"a": [1, "x\\u00')) == len('00"]}')
    assert close_len(feed(start("object"), b'{"a": -')) == len("0}")
    assert close_len(feed(start("object"), b'{"a": tr')) == len("ue}")


def test_root_of_response_formats():
    assert root_of(None) is None and root_of({"type": "text"}) is None
    assert root_of({"type": "json_object"}) == "object"
    assert root_of({"type": "json_schema", "json_schema": {"schema": {"type": "array"}}}) == "array"
    assert root_of({"type": "json_schema", "json_schema": {"schema": {"properties": {}}}}) == "object"
    assert root_of({"type": "json_schema", "json_schema": {"schema": {"type": "string"}}}) == "any"


def tokenizer_of(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_token_bytes_rebuild_the_text_byte_for_byte(tiny_model):
    tokenizer = tokenizer_of(tiny_model)
    pieces = token_bytes(tokenizer, len(tokenizer) + 3)
    assert len(pieces) == len(tokenizer) + 3 and pieces[-1] is None  # logit rows past the tokenizer
    assert all(pieces[i] is None for i in tokenizer.all_special_ids)
    text = 'héllo 你好 {"a": [1, 2.5e-3]}\n🙂'
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert b"".join(pieces[i] for i in ids) == text.encode("utf-8")


@pytest.mark.parametrize("max_tokens", [2, 3, 8, 40])
def test_noise_under_the_constraint_still_closes_within_max_tokens(tiny_model, max_tokens):
    """Random logits stand in for a model: whatever they prefer, the answer is whole JSON in max_tokens tokens."""
    import torch

    from expertkit.engine.base import SamplingParams
    from expertkit.engine.decode import Sampler

    tokenizer = tokenizer_of(tiny_model)
    vocab = Vocabulary.of(tokenizer, len(tokenizer))
    eos = [tokenizer.eos_token_id]
    for seed in range(6):
        noise = torch.Generator().manual_seed(seed)
        constraint = JsonConstraint(vocab, "object", eos, max_tokens)
        params = SamplingParams(temperature=[0.0, 1.0, 2.0][seed % 3], seed=seed, max_tokens=max_tokens)
        sampler = Sampler(params, constraint)
        tokens: list[int] = []
        while not constraint.done and len(tokens) < max_tokens:
            token = sampler.choose(torch.randn(len(tokenizer), generator=noise) * 5, torch.tensor([[0] + tokens]))
            assert token is not None
            tokens.append(token)
            constraint.advance(token)
        text = tokenizer.decode(tokens)
        assert isinstance(json.loads(text), dict), text
        assert len(tokens) <= max_tokens
