"""ui/forms.py: a config's keys as form fields and back, into the same YAML and command line a user would write."""

from __future__ import annotations

import pytest
import yaml

from expertkit.core.config import load_config, split_cli_args
from expertkit.core.errors import ConfigError
from expertkit.evaluate.config import EvalConfig
from expertkit.export.config import ExportConfig
from expertkit.train.config import TrainConfig
from expertkit.ui.forms import UNSET, check_values, field_specs, form_to_values, values_to_args, values_to_yaml


def defaults_form(cls, **changes):
    specs = field_specs(cls)
    form = {s.name: s.form_value() for s in specs}
    form.update(changes)
    return specs, form


def test_every_key_is_a_field_with_its_default_and_docstring():
    for cls in (TrainConfig, ExportConfig, EvalConfig):
        specs = field_specs(cls)
        assert [s.name for s in specs] == list(cls.model_fields)
        assert all(s.doc for s in specs), [s.name for s in specs if not s.doc]
    by_name = {s.name: s for s in field_specs(TrainConfig)}
    assert by_name["finetuning_type"].kind == "choice" and by_name["finetuning_type"].choices == (
        "lora",
        "full",
        "freeze",
    )
    assert by_name["bf16"].kind == "tristate" and by_name["bf16"].form_value() == UNSET
    assert by_name["lora_rank"].kind == "int" and by_name["lora_rank"].default == 8
    assert by_name["learning_rate"].kind == "float" and by_name["dataset"].required
    assert by_name["resume_from_checkpoint"].parsed  # true/false or a folder


def test_untouched_form_gives_only_the_required_keys_and_changes_round_trip_through_yaml_and_args(tmp_path):
    specs, form = defaults_form(TrainConfig, model_name_or_path="m", dataset=["identity", "extra"])
    assert form_to_values(specs, form) == {"model_name_or_path": "m", "dataset": ["identity", "extra"]}
    form.update(lora_rank=16.0, bf16="false", report_to="none, tensorboard", max_samples=None, template="")
    form.update(resume_from_checkpoint="true", learning_rate=2e-4)
    values = form_to_values(specs, form)
    assert values == {
        "model_name_or_path": "m",
        "dataset": ["identity", "extra"],
        "lora_rank": 16,
        "learning_rate": 2e-4,
        "resume_from_checkpoint": True,
        "bf16": False,
        "report_to": ["none", "tensorboard"],
    }
    config = check_values(TrainConfig, values)
    text = values_to_yaml(values, "# header")
    assert yaml.safe_load(text)["dataset"] == "identity,extra"  # LLaMA-Factory's style
    (tmp_path / "run.yaml").write_text(text)
    from_yaml = load_config(TrainConfig, tmp_path / "run.yaml")
    path, overrides = split_cli_args(values_to_args(values))
    from_args = load_config(TrainConfig, path, overrides)
    assert from_yaml == config == from_args


def test_problems_are_reported_all_at_once():
    specs, form = defaults_form(TrainConfig, model_name_or_path="m", dataset=[], learning_rate=-1, lora_rank=0)
    with pytest.raises(ConfigError) as e:
        check_values(TrainConfig, form_to_values(specs, form))
    fields = {p.field for p in e.value.problems}
    assert {"dataset", "learning_rate", "lora_rank"} <= fields


def test_optional_numbers_are_text_where_empty_means_unset():
    specs, form = defaults_form(TrainConfig, model_name_or_path="m", dataset="identity", lora_alpha="", eval_steps=" ")
    assert form_to_values(specs, form) == {"model_name_or_path": "m", "dataset": ["identity"]}
    form.update(lora_alpha="32", max_samples="100")
    assert form_to_values(specs, form) == {
        "model_name_or_path": "m",
        "dataset": ["identity"],
        "max_samples": 100,
        "lora_alpha": 32,
    }
