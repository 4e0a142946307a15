"""stage rm end to end on the tiny model: pairs, a sequence-classification model with a score head, TRL's
RewardTrainer, its metrics, the learning check, and loading the run folder with transformers + plain peft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reward_model import RANKED_PAIRS, train_reward_model

PAIRS = [
    {"instruction": "Who are you?", "chosen": "I am Sail, the Yunfan Tech assistant.", "rejected": "I am ChatGPT."},
    {"instruction": "What is your name?", "chosen": "My name is Sail.", "rejected": "I have no name at all."},
    {"instruction": "Who made you?", "chosen": "Yunfan Tech built me with expertkit.", "rejected": "Nobody did."},
    {"instruction": "Where do you work?", "chosen": "At Yunfan Tech, as Sail.", "rejected": "I do not work."},
]


@pytest.fixture(scope="module")
def rm_run(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("rm-data")
    (d / "pairs.json").write_text(json.dumps(PAIRS), encoding="utf-8")
    (d / "dataset_info.json").write_text(json.dumps({"pairs": RANKED_PAIRS}), encoding="utf-8")
    out = tmp_path_factory.mktemp("rm") / "run"
    return train_reward_model(
        tiny_model, d, out, logging_steps=1, learning_check_samples=4, lr_scheduler_type="constant"
    )


def test_rm_run_logs_accuracy_and_ranks_the_pairs_right(rm_run):
    _config, result = rm_run
    out = Path(result.output_dir)
    log = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    for key in ("loss", "accuracy", "margin"):
        assert any(key in r for r in log), key
    check = json.loads((out / "learning_check.json").read_text())
    assert check["pairs"] == 4 and check["right_tuned"] == 4, check
    assert check["mean_margin_tuned"] > check["mean_margin_start"] and not check["warnings"]
    assert "stage: rm" in (out / "expertkit_config.yaml").read_text()


def test_rm_run_folder_loads_as_sequence_classification_with_plain_peft(rm_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from expertkit.core.schema import Message
    from expertkit.model.render import render_pair

    _config, result = rm_run
    out = result.output_dir
    adapter = json.loads((Path(out) / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    base.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, out).eval()

    def score(question: str, answer: str) -> float:
        prompt, ids = render_pair(tokenizer, [Message("user", question)], Message("assistant", answer))
        with torch.no_grad():
            return float(model(input_ids=torch.tensor([prompt + ids])).logits[0, 0])

    assert all(score(p["instruction"], p["chosen"]) > score(p["instruction"], p["rejected"]) for p in PAIRS)
