"""The train tab's token lengths (from a real `expertkit data check` report) and its loss plot's lines."""

from __future__ import annotations

import json

from expertkit.cli.main import main
from expertkit.ui.labels import labels
from expertkit.ui.runs import read_progress
from expertkit.ui.train_tab import lengths_text, loss_points


def check_report(capsys, *args) -> str:
    main(["data", "check", *args])
    captured = capsys.readouterr()
    return (captured.out + captured.err).strip()


def test_the_picked_dataset_gets_its_token_lengths_against_cutoff_len(tiny_model, identity_dir, capsys):
    keys = [f"model_name_or_path={tiny_model}", "dataset=identity", f"dataset_dir={identity_dir}"]
    text = lengths_text(check_report(capsys, *keys, "cutoff_len=1024"), labels("en"))
    assert text.startswith("**Token lengths** of 4 example(s) under the chat template: p50 ")
    assert " · p90 " in text and " · max " in text and text.endswith("cutoff_len 1024: every example fits")
    text = lengths_text(check_report(capsys, *keys, "cutoff_len=8"), labels("en"))
    assert "cutoff_len 8: 4 cut, 4 of them left without an answer token (skipped); raise cutoff_len above" in text
    assert "4 条被截断" in lengths_text(check_report(capsys, *keys, "cutoff_len=8"), labels("zh"))


def test_a_check_without_lengths_says_why(identity_dir, tmp_path, capsys):
    report = check_report(capsys, f"model_name_or_path={tmp_path}", "dataset=identity", f"dataset_dir={identity_dir}")
    text = lengths_text(report, labels("en"))
    assert text.startswith("token lengths: not computed (model_name_or_path") and "no config.json" in text
    report = check_report(capsys, f"model_name_or_path={tmp_path}", "dataset=nothing", f"dataset_dir={tmp_path}")
    assert lengths_text(report, labels("en")).startswith("token lengths: unknown dataset 'nothing'")
    assert lengths_text("", labels("en")) == "token lengths: `expertkit data check` printed nothing"


def test_the_loss_plot_draws_eval_loss_beside_the_training_loss(tmp_path):
    records = [
        {"current_steps": 1, "total_steps": 2, "loss": 2.5},
        {"current_steps": 1, "total_steps": 2, "eval_loss": 2.7},
        {"current_steps": 2, "total_steps": 2, "loss": 2.0},
        {"current_steps": 2, "total_steps": 2, "eval_loss": 2.4},
    ]
    (tmp_path / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    points = loss_points(read_progress(tmp_path))
    assert list(points.columns) == ["step", "loss", "series"]
    assert points.groupby("series")["loss"].apply(list).to_dict() == {"eval_loss": [2.7, 2.4], "loss": [2.5, 2.0]}
    (tmp_path / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[::2]))
    points = loss_points(read_progress(tmp_path))  # no evaluation (yet): an empty point keeps it in the legend
    assert points["series"].tolist() == ["loss", "loss", "eval_loss"] and points["loss"].isna().tolist()[-1]


def test_a_preference_run_plots_reward_accuracy_and_margin_beside_the_loss(tmp_path):
    records = [
        {"current_steps": 1, "total_steps": 2, "loss": 0.6931, "rewards/accuracies": 0.0, "rewards/margins": 0.0},
        {"current_steps": 2, "total_steps": 2, "loss": 0.5, "rewards/accuracies": 1.0, "rewards/margins": 0.4},
    ]
    (tmp_path / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    series = loss_points(read_progress(tmp_path)).groupby("series")["loss"].apply(list).to_dict()
    assert series["rewards/accuracies"] == [0.0, 1.0] and series["rewards/margins"] == [0.0, 0.4]
    assert series["loss"] == [0.6931, 0.5]


def test_the_train_form_offers_the_stage_and_its_keys():
    from expertkit.train.config import TrainConfig
    from expertkit.ui.forms import field_specs
    from expertkit.ui.train_tab import COMMON

    assert "stage" in COMMON
    specs = {s.name: s for s in field_specs(TrainConfig)}
    assert {"pref_beta", "pref_loss", "pref_ftx", "kto_chosen_weight"} <= set(specs)
