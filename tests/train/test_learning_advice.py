"""The learning check says why a run learned too little: causes from the run's own figures, each with a key to change
and a value to try (issue 11). Unit tests on synthetic figures, then one real run that is too short to learn."""

from __future__ import annotations

import json
import logging

import pytest

from expertkit.train.advice import RunFigures, advise, falling_share, format_rate, learned_too_little


def figures(**overrides) -> RunFigures:
    """A run that went well: LoRA, 300 steps at 2e-4, loss flattened out, answers fit cutoff_len."""
    base = dict(
        finetuning_type="lora",
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        num_train_epochs=40,
        max_steps=-1,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        cutoff_len=1024,
        mask_history=False,
        train_on_prompt=False,
        rows=15,
        steps=320,
        losses=[3.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.2, 0.2, 0.2],
        loss_token_share=0.4,
        longest=300,
    )
    base.update(overrides)
    return RunFigures(**base)


def by_cause(items) -> dict:
    return {a.cause: a for a in items}


def test_a_run_that_went_well_gets_no_advice():
    assert advise(figures(), poor=False) == []
    assert advise(figures(), poor=True) == []  # learned little, but no figure of this run is off


def test_learned_too_little_is_few_matches_and_no_clear_gain_over_the_base():
    assert learned_too_little(0, 0, 5) and learned_too_little(1, 0, 5)
    assert not learned_too_little(2, 0, 5)  # clearly better than the base
    assert not learned_too_little(3, 3, 5)  # half or more answered as trained
    assert not learned_too_little(0, 0, 0)  # nothing was checked


def test_the_issue_case_few_steps_names_epochs_and_a_smaller_batch():
    # 15 rows, batch 8 x 1 (LLaMA-Factory's default), 40 epochs: 2 steps per epoch, 80 steps
    fig = figures(per_device_train_batch_size=8, steps=80, losses=[3.0, 2.9, 2.9, 2.8, 2.8, 2.8], learning_rate=2e-4)
    steps = by_cause(advise(fig, poor=True))["steps"]
    assert steps.figure == 80 and steps.key == "num_train_epochs" and steps.value == "150"  # 300 steps / 2 per epoch
    assert steps.also == {"per_device_train_batch_size": "2"}  # 8 steps per epoch x 40 = 320
    assert "only 80 optimiser steps" in steps.message and "effective batch 8" in steps.message
    assert "num_train_epochs=150" in steps.message and "per_device_train_batch_size=2: 320 steps" in steps.message


def test_accumulation_that_leaves_one_step_per_epoch_suggests_accumulation_1():
    fig = figures(per_device_train_batch_size=2, gradient_accumulation_steps=8, steps=40, losses=[3.0, 2.9, 2.9])
    steps = by_cause(advise(fig, poor=True))["steps"]
    assert steps.figure == 40 and "effective batch 16" in steps.message
    assert steps.value == "300" and steps.also == {"gradient_accumulation_steps": "1"}  # 8 per epoch x 40 = 320


def test_with_max_steps_the_advice_is_more_max_steps():
    steps = by_cause(advise(figures(max_steps=50, steps=50), poor=True))["steps"]
    assert (steps.key, steps.value) == ("max_steps", "300")


def test_a_learning_rate_below_the_method_range():
    lora = by_cause(advise(figures(learning_rate=5e-5), poor=True))["learning_rate"]
    assert (lora.key, lora.value, lora.figure) == ("learning_rate", "2e-4", 5e-5)
    assert "below the usual 1e-4..5e-4" in lora.message and "learning_rate=2e-4" in lora.message
    full = by_cause(advise(figures(finetuning_type="full", learning_rate=5e-6, steps=200), poor=True))
    assert full["learning_rate"].value == "2e-5"
    # when the run learned, only a rate far below the range is worth a word
    assert "learning_rate" not in by_cause(advise(figures(learning_rate=5e-5), poor=False))
    assert "learning_rate" in by_cause(advise(figures(learning_rate=1e-5), poor=False))


def test_a_loss_still_falling_at_the_end_asks_for_more_epochs():
    losses = [3.0 - 0.1 * i for i in range(20)]
    assert falling_share(losses) == pytest.approx(0.4 / 1.3)  # the last 5 values, 1.5 .. 1.1, fall 0.4
    assert falling_share([1.0, 1.0, 1.0, 1.0]) == 0 and falling_share([2.0, 1.0]) is None
    item = by_cause(advise(figures(losses=losses, steps=400), poor=True))["loss_still_falling"]
    assert item.key == "num_train_epochs" and item.value == "100"  # 2 x 400 steps / 8 per epoch (15 rows, batch 2)
    assert item.figure == pytest.approx(0.4 / 1.3, abs=1e-4) and "still falling" in item.message


def test_a_loss_that_did_not_fall():
    flat = [2.0, 2.1, 2.0, 2.05]
    low = by_cause(advise(figures(losses=flat, learning_rate=1e-6), poor=False))["loss_not_falling"]
    assert (low.key, low.value) == ("learning_rate", "2e-4")
    high = by_cause(advise(figures(losses=flat, learning_rate=1e-2), poor=False))["loss_not_falling"]
    assert (high.key, high.value) == ("learning_rate", "2e-4") and "above the usual range" in high.message
    ok = by_cause(advise(figures(losses=flat), poor=True))["loss_not_falling"]
    assert (ok.key, ok.value) == ("num_train_epochs", "80")  # 2 x 320 steps / 8 per epoch


def test_a_schedule_that_decays_to_zero_in_a_short_run():
    item = by_cause(advise(figures(lr_scheduler_type="linear", steps=40), poor=True))["schedule"]
    assert (item.key, item.value, item.figure) == ("lr_scheduler_type", "constant", 40)
    assert "schedule" not in by_cause(advise(figures(lr_scheduler_type="constant", steps=40), poor=True))


def test_few_loss_tokens_point_at_mask_history_or_train_on_prompt():
    item = by_cause(advise(figures(loss_token_share=0.03), poor=True))["loss_tokens"]
    assert (item.key, item.value, item.figure) == ("train_on_prompt", "true", 0.03) and "3.0%" in item.message
    masked = by_cause(advise(figures(loss_token_share=0.03, mask_history=True), poor=True))["loss_tokens"]
    assert (masked.key, masked.value) == ("mask_history", "false")


def test_examples_cut_by_cutoff_len():
    item = by_cause(advise(figures(cutoff_len=512, truncated=4, dropped=1, longest=700, rows=14), poor=True))
    cut = item["cutoff_len"]
    assert (cut.key, cut.value, cut.figure) == ("cutoff_len", "1024", 4)
    assert "4 of 15 examples were cut at cutoff_len=512" in cut.message and "1 of them" in cut.message


def test_the_old_checks_still_fire_on_a_run_that_learned():
    few = by_cause(advise(figures(steps=4, num_train_epochs=1, rows=8), poor=False))["steps"]
    assert few.key == "num_train_epochs" and int(few.value) >= 3
    assert "steps" not in by_cause(advise(figures(), poor=False))


def test_format_rate():
    assert [format_rate(x) for x in (2e-4, 5e-05, 1.5e-5, 0.001)] == ["2e-4", "5e-5", "1.5e-5", "1e-3"]


def test_a_run_too_short_to_learn_says_why(tiny_model, identity_dir, tmp_path, caplog):
    """LLaMA-Factory's defaults (batch 8 x 1, 5e-5, linear) on 4 rows for 2 epochs: 2 steps, nothing learned."""
    from expertkit.cli.main import main

    out = tmp_path / "short"
    keys = dict(
        model_name_or_path=tiny_model,
        dataset="identity",
        dataset_dir=identity_dir,
        output_dir=out,
        cutoff_len=128,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        learning_rate=5e-5,
        lr_scheduler_type="linear",
        num_train_epochs=2,
        logging_steps=1,
        save_steps=1000,
        learning_check_samples=2,
        plot_loss="false",
        bf16="false",
    )
    caplog.set_level(logging.INFO, logger="expertkit")
    assert main(["train", *(f"{k}={v}" for k, v in keys.items())]) == 0
    check = json.loads((out / "learning_check.json").read_text())
    assert check["tuned_matches"] == 0 and check["learned_too_little"] and check["global_step"] == 2
    advice = {a["cause"]: a for a in check["advice"]}
    assert advice["steps"]["figure"] == 2 and advice["steps"]["key"] == "num_train_epochs"
    assert int(advice["steps"]["try"]) == 300  # 300 steps at 1 step per epoch
    assert advice["learning_rate"]["try"] == "2e-4" and advice["schedule"]["try"] == "constant"
    assert set(advice["steps"]) == {"cause", "figure", "key", "try", "message", "also"}
    assert all(a["message"] in check["warnings"] for a in check["advice"])  # the old field carries them too
    printed = "\n".join(r.getMessage() for r in caplog.records)
    assert "learned too little; likely causes in this run:" in printed
    assert "only 2 optimiser steps" in printed and "num_train_epochs=300" in printed
    assert "learning_rate=2e-4" in printed and "optimiser steps: 2 (effective batch 8)" in printed
