"""EngineConfig: the served adapters, parsed and named from one comma list."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from expertkit.engine.config import EngineConfig


def config(**keys) -> EngineConfig:
    return EngineConfig(model_name_or_path="models/qwen", **keys)


def test_adapters_are_named_by_name_items_or_their_folder():
    c = config(adapter_name_or_path="legal=saves/legal/lora, saves/sail/ ,")
    assert c.adapters() == {"legal": "saves/legal/lora", "sail": "saves/sail/"}
    assert c.base_name() == "qwen"


def test_served_model_name_names_the_default_model():
    assert config(adapter_name_or_path="saves/sail", served_model_name="expert").adapters() == {"expert": "saves/sail"}
    assert config(served_model_name="expert").base_name() == "expert"
    assert config().adapters() == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a=saves/x,a=saves/y", "two adapters are named 'a'"),
        ("saves/x/lora,other/lora", "two adapters are named 'lora'"),
        ("=saves/x", "'=saves/x' is not an adapter"),
        ("a=", "'a=' is not an adapter"),
        ("saves/qwen", "share a name"),  # the adapter would hide the base model
    ],
)
def test_ambiguous_adapter_lists_are_config_errors(value, message):
    with pytest.raises(ValidationError, match=message):
        config(adapter_name_or_path=value)
