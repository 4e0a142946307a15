"""The CLI as a user meets it: fast --help, errors without tracebacks, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from expertkit.cli.main import main


def test_help_does_not_import_torch():
    code = (
        "import sys; from expertkit.cli.main import main; rc = main(['--help']); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'; print(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout and "demo" in r.stdout and "data" in r.stdout


def test_unknown_key_is_a_clean_error(capsys):
    assert main(["train", "model_name_or_path=x", "dataset=d", "lora_rnak=4"]) == 1
    err = capsys.readouterr().err
    assert "did you mean 'lora_rank'" in err and "Traceback" not in err


def test_missing_model_folder_names_what_exists(tmp_path, identity_dir, capsys):
    (tmp_path / "qwen-0.5b").mkdir()
    (tmp_path / "qwen-0.5b" / "config.json").write_text("{}")
    code = main(
        [
            "train",
            f"model_name_or_path={tmp_path / 'qwen'}",
            "dataset=identity",
            f"dataset_dir={identity_dir}",
            f"output_dir={tmp_path / 'out'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "is not a model folder (no config.json)" in err and "qwen-0.5b" in err


def test_data_check_reports_and_fails_on_broken_data(tmp_path, tiny_model, capsys):
    bad = tmp_path / "chat.jsonl"
    rows = [
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"conversations": [{"from": "gpt", "value": "hello"}, {"from": "human", "value": "q"}]},
    ]
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    code = main(["data", "check", f"model_name_or_path={tiny_model}", f"dataset={bad}"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"{bad}:2 conversations[0]: the conversation starts with an assistant turn" in out
    assert f"{bad}:3: not valid JSON" in out
    assert "training would refuse this data" in out


def test_data_check_on_good_data(identity_dir, tiny_model, capsys):
    code = main(
        [
            "data",
            "check",
            f"model_name_or_path={tiny_model}",
            "dataset=identity",
            f"dataset_dir={identity_dir}",
            "cutoff_len=30",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "4 rows, 4 valid, 0 invalid" in out and "cutoff_len 30" in out and "ready to train" in out
    assert "cut by cutoff_len: 4 example(s); left with no answer token (skipped): 0" in out


def test_data_check_refuses_when_cutoff_leaves_no_answer(identity_dir, tiny_model, capsys):
    code = main(
        [
            "data",
            "check",
            f"model_name_or_path={tiny_model}",
            "dataset=identity",
            f"dataset_dir={identity_dir}",
            "cutoff_len=20",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1 and "no example keeps an answer token within cutoff_len=20" in out


def test_training_refuses_mostly_broken_data(tmp_path, tiny_model, capsys):
    bad = tmp_path / "a.json"
    bad.write_text(json.dumps([{"instruction": "q1", "output": "a"}, {"instruction": "q2"}, {"instruction": 3}]))
    code = main(["train", f"model_name_or_path={tiny_model}", f"dataset={bad}", f"output_dir={tmp_path / 'o'}"])
    err = capsys.readouterr().err
    assert code == 1 and "are invalid" in err and "(row 2) output: missing 'output'" in err


def test_config_keys_lists_documented_fields(capsys):
    assert main(["config", "keys"]) == 0
    out = capsys.readouterr().out
    assert "lora_rank = 8" in out and "LoRA rank r" in out


@pytest.mark.parametrize(
    "stage", ["train", "export", "chat", "serve", "kb", "ask", "eval", "webui", "promote", "improve", "synth"]
)
def test_reference_docs_are_up_to_date(capsys, stage):
    from pathlib import Path

    assert main(["config", "keys", stage, "--markdown"]) == 0
    page = Path(__file__).resolve().parents[1] / "docs" / "reference" / f"{stage}.md"
    assert capsys.readouterr().out == page.read_text(encoding="utf-8"), (
        f"docs/reference/{stage}.md is stale: expertkit config keys {stage} --markdown > docs/reference/{stage}.md"
    )


def test_debug_is_accepted_after_the_command(capsys):
    import pytest

    from expertkit.core.errors import ConfigError

    with pytest.raises(ConfigError):  # --debug shows the traceback instead of a one-line error
        main(["train", "model_name_or_path=x", "dataset=d", "lora_rnak=4", "--debug"])
