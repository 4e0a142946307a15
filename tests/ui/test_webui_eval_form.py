"""The evaluate tab's form: several candidates typed as YAML, and a judge key that is never shown."""

from __future__ import annotations

import shlex
import stat
import sys
import time

import pytest

from expertkit.core.config import load_config, split_cli_args
from expertkit.core.errors import ConfigError
from expertkit.evaluate.config import EvalConfig
from expertkit.ui import jobs
from expertkit.ui.forms import field_specs
from expertkit.ui.stage_tabs import stage_job, start_stage_job
from expertkit.ui.widgets import FormValues, command_text, yaml_text

CANDIDATES = """\
- {name: base, model_name_or_path: saves/demo/model}
- {name: tuned, model_name_or_path: saves/demo/model, adapter_name_or_path: saves/demo/lora}
- name: tuned+rag
  model_name_or_path: saves/demo/model
  adapter_name_or_path: saves/demo/lora
  kb_dir: kb
"""


def eval_form(**changes):
    specs = field_specs(EvalConfig)
    form = {s.name: s.form_value() for s in specs}
    form.update(eval_file="data/held_out.jsonl", **changes)
    return FormValues(EvalConfig, specs, dict.fromkeys(form)), list(form.values())


def test_candidates_text_becomes_the_jobs_candidates_and_the_judge_key_is_only_in_the_private_file(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(jobs, "expertkit_command", lambda args: [sys.executable, "-c", "pass"])
    specs = {s.name: s for s in field_specs(EvalConfig)}
    assert specs["candidates"].kind == "yaml" and specs["judge_api_key"].kind == "secret"
    form, values = eval_form(candidates=CANDIDATES, judge_api_key="sk-secret", judge_base_url="http://j/v1")
    config, keys = form.checked(*values)
    assert [c.name for c in config.candidates] == ["base", "tuned", "tuned+rag"]
    job = stage_job(str(tmp_path), "eval")
    shown = yaml_text("eval", job, keys) + command_text("eval", job, keys)
    assert "sk-secret" not in shown and "judge_api_key: '***'" in shown and "'judge_api_key=***'" in shown
    start_stage_job("eval", job, keys)
    loaded = load_config(EvalConfig, job.config_path)
    assert len(loaded.candidates) == 3 and loaded.candidates[2].kb_dir == "kb"
    assert loaded.judge_api_key == "sk-secret"
    assert stat.S_IMODE(job.config_path.stat().st_mode) == 0o600  # it holds a key
    assert "sk-secret" not in job.log_path.read_text() + str(job.record())
    deadline = time.monotonic() + 30
    while job.state() == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    # the command line without the file gives the same config (candidates as a JSON value)
    line = command_text("eval", job, {k: v for k, v in keys.items() if k != "judge_api_key"}).splitlines()[-1]
    path, overrides = split_cli_args(shlex.split(line)[2:])
    assert [c.name for c in load_config(EvalConfig, path, overrides).candidates] == ["base", "tuned", "tuned+rag"]


def test_empty_candidates_leave_base_and_tuned_and_bad_text_is_a_readable_config_error():
    form, values = eval_form(model_name_or_path="m", adapter_name_or_path="runs/lora", candidates="  ")
    config, keys = form.checked(*values)
    assert "candidates" not in keys and [c.name for c in config.resolved_candidates()] == ["base", "tuned"]
    form, values = eval_form(candidates="- {name: base\n- x: [")
    with pytest.raises(ConfigError, match=r"candidates: not a YAML or JSON list \(line \d+, column \d+\)") as e:
        form.checked(*values)
    assert "hint:" in str(e.value)
    form, values = eval_form(candidates="name: base")
    with pytest.raises(ConfigError, match="candidates: expected a list"):
        form.checked(*values)
    form, values = eval_form(candidates="- {name: base, model_name_or_path: m}", model_name_or_path="m")
    with pytest.raises(ConfigError) as e:  # the config's own checks, as for any other key
        form.checked(*values)
    assert any("not both" in p.message for p in e.value.problems)
