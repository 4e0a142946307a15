"""pref_loss orpo and simpo (stage dpo) on the tiny model: the step-1 loss is LLaMA-Factory's formula computed by hand,
no reference model is loaded, the chosen answers gain on the rejected ones, metrics and the learning check work,
and a resumed run continues the same losses."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from expertkit.core.config import load_config
from expertkit.train.config import TrainConfig

# answers of different lengths: a mean over tokens and a mean of per-answer means then differ
PAIRS = [
    {"instruction": "Who are you?", "chosen": "I am Sail, the Yunfan Tech assistant.", "rejected": "I am ChatGPT."},
    {"instruction": "What is your name?", "chosen": "My name is Sail.", "rejected": "I have no name at all, sorry."},
    {"instruction": "Who made you?", "chosen": "Yunfan Tech built me with expertkit.", "rejected": "Nobody did."},
    {"instruction": "你是谁？", "chosen": "我是小帆，云帆科技的助手。", "rejected": "我不知道。"},
]


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    (d / "pairs.json").write_text(json.dumps(PAIRS, ensure_ascii=False), encoding="utf-8")
    columns = {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}
    info = {"pairs": {"file_name": "pairs.json", "ranking": True, "columns": columns}}
    (d / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return d


def keys(tiny_model, pairs_dir, out, pref_loss, **overrides) -> dict:
    return {
        "stage": "dpo",
        "pref_loss": pref_loss,
        "model_name_or_path": str(tiny_model),
        "dataset": "pairs",
        "dataset_dir": str(pairs_dir),
        "output_dir": str(out),
        "cutoff_len": 128,
        "lora_rank": 16,
        "learning_rate": 5e-3,
        "num_train_epochs": 12,
        "per_device_train_batch_size": 4,  # every pair in step 1's batch: the hand-computed loss covers the same pairs
        "logging_steps": 1,
        "save_steps": 1000,
        "learning_check_samples": 4,
        "lr_scheduler_type": "constant",
        "bf16": False,  # fp32: the loss must match the formula to 1e-4
        **overrides,
    }


def train(tiny_model, pairs_dir, out, pref_loss, **overrides):
    from expertkit.train.run import run

    config = load_config(TrainConfig, None, keys(tiny_model, pairs_dir, out, pref_loss, **overrides))
    return config, run(config)


def log_rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]


def answer_logps(model, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: the average log-prob of the chosen and rejected answer tokens (LLaMA-Factory's logps for orpo and
    simpo), and TRL's own SFT terms: ORPO's token mean over prompt + chosen, CPO's over all chosen answer tokens."""
    from expertkit.train.dpo import prepare_data
    from expertkit.train.run import load_chat_tokenizer

    rows = prepare_data(config, load_chat_tokenizer(config)).train_set
    sums = {"chosen": [], "rejected": []}
    counts, orpo_nll, orpo_n = {"chosen": [], "rejected": []}, 0.0, 0
    for row in rows:
        for side in ("chosen", "rejected"):
            ids = torch.tensor([row["prompt_ids"] + row[f"{side}_ids"]])
            with torch.no_grad():
                token_logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            token_logps = token_logps.gather(1, ids[0, 1:, None])[:, 0]
            answer = token_logps[len(row["prompt_ids"]) - 1 :]
            sums[side].append(answer.sum())
            counts[side].append(len(answer))
            if side == "chosen":
                orpo_nll, orpo_n = orpo_nll - token_logps.sum(), orpo_n + len(token_logps)
    chosen = torch.stack(sums["chosen"]) / torch.tensor(counts["chosen"])
    rejected = torch.stack(sums["rejected"]) / torch.tensor(counts["rejected"])
    cpo_nll = -torch.stack(sums["chosen"]).sum() / sum(counts["chosen"])
    return chosen, rejected, orpo_nll / orpo_n, cpo_nll


def lf_loss(pref_loss: str, chosen, rejected, beta: float, gamma: float, ftx: float) -> float:
    """LLaMA-Factory's CustomDPOTrainer (train/dpo/trainer.py): odds_ratio_loss / simpo_loss + ftx x SFT, batch mean."""
    sft = -chosen
    if pref_loss == "orpo":
        log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
        losses = sft + beta * -F.logsigmoid(log_odds)
    else:
        losses = -F.logsigmoid(beta * ((chosen - rejected) - gamma / beta))
    return float((losses + ftx * sft).mean())


@pytest.mark.parametrize(
    ("pref_loss", "ftx", "batch"),
    [("orpo", 0.0, {}), ("simpo", 1.0, {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2})],
)
def test_reference_free_loss_is_llama_factorys_and_the_chosen_answers_gain(
    pref_loss, ftx, batch, tiny_model, pairs_dir, tmp_path, caplog
):
    import logging

    from transformers import AutoModelForCausalLM

    out = tmp_path / pref_loss
    with caplog.at_level(logging.INFO):
        config, result = train(tiny_model, pairs_dir, out, pref_loss, pref_ftx=ftx, **batch)
    header = " ".join(r.getMessage() for r in caplog.records)
    assert f"none: {pref_loss} is reference-free (no reference model is loaded)" in header

    # step 1 trains the fresh adapter, whose B matrices are 0: the policy is the base model. Step 1 sees every pair
    # (one batch of 4, or two of 2 accumulated: the mean of their means is the mean over the 4 pairs)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    chosen, rejected, orpo_nll, cpo_nll = answer_logps(base, config)
    expected = lf_loss(pref_loss, chosen, rejected, config.pref_beta, config.simpo_gamma, ftx)
    log = log_rows(out)
    first = next(r for r in log if "loss" in r)
    assert first["loss"] == pytest.approx(expected, abs=1e-4)
    assert first["rewards/chosen"] == pytest.approx(config.pref_beta * float(chosen.mean()), abs=1e-4)
    # TRL's own SFT term would give another loss on these pairs: the swap is what makes them equal
    trl_sft = orpo_nll if pref_loss == "orpo" else ftx * cpo_nll
    assert abs(float(trl_sft) - float((1 if pref_loss == "orpo" else ftx) * -chosen.mean())) > 1e-3

    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert all(key in r for r in log if "loss" in r), key
    margins = [r["rewards/margins"] for r in log if "rewards/margins" in r]
    assert margins[-1] > margins[0] + 0.05, margins
    assert result.tokens_seen > 0
    assert (out / "training_rewards.png").is_file() and (out / "adapter_model.safetensors").is_file()
    check = json.loads((out / "learning_check.json").read_text())
    assert check["mean_margin_tuned"] > check["mean_margin_start"] and check["margin_grew"] == check["pairs"]
    assert not [w for w in check["warnings"] if "reference" in w]


def test_simpo_on_an_sft_adapter_checks_learning_against_that_adapter(
    identity_adapter, tiny_model, pairs_dir, tmp_path, caplog
):
    """No reference copy is kept while training; the learning check's start is the SFT adapter, not the bare base."""
    import logging

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from expertkit.train.dpo import pair_margin, prepare_data
    from expertkit.train.run import load_chat_tokenizer

    sft_config, _ = identity_adapter
    out = tmp_path / "simpo-on-sft"
    with caplog.at_level(logging.INFO):
        config, _ = train(
            tiny_model, pairs_dir, out, "simpo", adapter_name_or_path=sft_config.output_dir, num_train_epochs=2,
            learning_check_samples=2,
        )  # fmt: skip
    assert "none: simpo is reference-free" in " ".join(r.getMessage() for r in caplog.records)
    assert not (out / "ref").exists()
    sft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), sft_config.output_dir).eval()
    check = json.loads((out / "learning_check.json").read_text())
    rows = {r.source: ex for r, ex in prepare_data(config, load_chat_tokenizer(config)).check_rows}
    for sample in check["samples"]:
        assert sample["margin_start"] == pytest.approx(pair_margin(sft, rows[sample["source"]]), abs=1e-4)


def test_orpo_full_finetuning_and_resume_continue_the_same_losses(tiny_model, pairs_dir, tmp_path):
    """Full fine-tuning (the learning check loads the starting model from disk), and a run stopped at a checkpoint
    and resumed gives the same losses as one run straight through."""
    common = {"finetuning_type": "full", "learning_rate": 1e-3, "save_steps": 3}
    train(tiny_model, pairs_dir, tmp_path / "straight", "orpo", max_steps=6, learning_check_samples=2, **common)
    out, quick = tmp_path / "stopped", {"learning_check_samples": 0, "plot_loss": False, **common}
    train(tiny_model, pairs_dir, out, "orpo", max_steps=3, **quick)
    _, resumed = train(tiny_model, pairs_dir, out, "orpo", max_steps=6, resume_from_checkpoint=True, **quick)
    assert resumed.global_step == 6
    ref = {r["current_steps"]: r["loss"] for r in log_rows(tmp_path / "straight") if "loss" in r}
    got = {r["current_steps"]: r["loss"] for r in log_rows(out) if "loss" in r}
    assert sorted(got) == sorted(ref) == list(range(1, 7))
    for step in range(4, 7):
        assert got[step] == pytest.approx(ref[step], abs=1e-4), step
    check = json.loads((tmp_path / "straight" / "learning_check.json").read_text())
    assert check["pairs"] == 2 and math.isfinite(check["mean_margin_start"])
    assert check["mean_margin_start"] != check["mean_margin_tuned"]
