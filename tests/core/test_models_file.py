"""The models file (core/models_file.py): the format serve watches and promote writes."""

from __future__ import annotations

import json

import pytest

from expertkit.core.errors import ConfigError
from expertkit.core.models_file import ModelsFile, load_models_file, write_models_file


def adapter(folder):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    return folder


def test_a_valid_file_resolves_paths_from_its_own_folder(tmp_path):
    adapter(tmp_path / "saves" / "r1")
    adapter(tmp_path / "saves" / "r2")
    path = tmp_path / "models.yaml"
    path.write_text(
        "base: Qwen/Qwen2.5-0.5B-Instruct\n"
        "models:\n  r1: {adapter_name_or_path: saves/r1}\n  r2: {adapter_name_or_path: saves/r2}\n"
        "aliases:\n  expert: {r1: 0.9, r2: 0.1}\n  stable: r1\n"
    )
    models = load_models_file(path)
    assert models.models["r1"].adapter_name_or_path == str(tmp_path / "saves" / "r1")
    assert models.base == "Qwen/Qwen2.5-0.5B-Instruct"  # a hub id stays as it is
    assert models.arms("expert") == {"r1": 0.9, "r2": 0.1}
    assert models.arms("stable") == {"r1": 1.0}
    assert models.base_of("r2") == "Qwen/Qwen2.5-0.5B-Instruct"


def test_every_problem_is_reported_at_once(tmp_path):
    adapter(tmp_path / "r1")
    path = tmp_path / "models.yaml"
    path.write_text(
        "base: Qwen/Qwen2.5-0.5B-Instruct\n"
        "models:\n  r1: {adapter_name_or_path: r1}\n  gone: {adapter_name_or_path: ./missing}\n"
        "aliases:\n  expert: {r1: 0.5, gone: 0.4}\n  nested: {expert: 1.0}\n  r1: gone\n"
    )
    with pytest.raises(ConfigError) as e:
        load_models_file(path)
    text = str(e.value)
    assert "models.gone.adapter_name_or_path" in text and "does not exist" in text
    assert "aliases.expert" in text and "sum to 0.9" in text
    assert "arm 'expert' is another alias" in text
    assert "aliases.r1" in text and "also a model name" in text


def test_unknown_keys_and_bad_yaml_are_clear_errors(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  r1: {adapter: x}\n")
    with pytest.raises(ConfigError, match="models.r1.adapter"):
        load_models_file(path)
    path.write_text("models: [\n")
    with pytest.raises(ConfigError, match=r"models.yaml:\d+ is not valid YAML"):
        load_models_file(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_models_file(tmp_path / "nope.yaml")


def test_write_is_checked_and_round_trips(tmp_path):
    adapter(tmp_path / "r1")
    models = ModelsFile(base="/m", models={"r1": {"adapter_name_or_path": str(tmp_path / "r1")}}, aliases={"e": "r1"})
    path = tmp_path / "models.yaml"
    write_models_file(path, models)
    assert load_models_file(path, check_paths=False) == models
    models.aliases["e"] = {"r1": 0.5}
    with pytest.raises(ConfigError, match="sum to 0.5"):
        write_models_file(path, models)
    assert load_models_file(path, check_paths=False).aliases == {"e": "r1"}  # the old file is untouched
