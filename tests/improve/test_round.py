"""`expertkit improve`: one round end to end on the tiny model and a real feedback store (export as sft -> train on
top of the served adapter with a replay share -> the gate -> promotion), continued after being killed between steps;
a round with too little feedback stops early and says how much it has."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml
from gate_setup import QA, read_log, untrained_adapter, write_eval, write_models

from expertkit.cli.main import main
from expertkit.core.feedback import FeedbackStore

FEEDBACK = QA + [("你是谁？", "我是小帆，云帆科技的助手。")]


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    return untrained_adapter(tiny_model, tmp_path_factory.mktemp("served") / "round0")


def rate(db, pairs, arm="round0") -> None:
    store = FeedbackStore(db)
    try:
        for question, answer in pairs:
            mid = store.record_conversation([{"role": "user", "content": question}], answer, model=arm,
                                            alias="expert", arm=arm)  # fmt: skip
            store.record_feedback(mid, 1, rater="alice")
    finally:
        store.close()


def setup_round(tmp_path, tiny_model, served, identity_dir, **keys):
    db = tmp_path / "feedback.sqlite"
    rate(db, FEEDBACK)
    models = write_models(tmp_path / "models.yaml", tiny_model, served)
    improve = {
        "rounds_dir": str(tmp_path / "rounds"),
        "models": str(models),
        "alias": "expert",
        "eval": str(write_eval(tmp_path)),
        "metrics": "rouge-l,contains",
        "feedback_db": str(db),
        "feedback_dir": str(tmp_path / "data"),
        "min_new_rows": 4,
        "max_forgetting_drop": None,  # the gate's probe is tested in test_promote.py
        "train": {"num_train_epochs": 2, "learning_rate": 5e-3, "per_device_train_batch_size": 2, "cutoff_len": 128,
                  "save_steps": 2, "logging_steps": 1, "learning_check_samples": 0, "bf16": False},
        "replay": {"sft": ["identity"]},
        "dataset_dir": str(identity_dir),
        "replay_share": 0.25,
        **keys,
    }  # fmt: skip
    path = tmp_path / "improve.yaml"
    path.write_text(yaml.safe_dump(improve, allow_unicode=True))
    return path, models, db


def test_a_round_killed_after_training_continues_at_the_gate_and_promotes(tmp_path, tiny_model, served, identity_dir):
    path, models, db = setup_round(tmp_path, tiny_model, served, identity_dir)
    env = {**os.environ, "EXPERTKIT_IMPROVE_KILL_AFTER": "train_sft"}
    killed = subprocess.run([sys.executable, "-m", "expertkit", "improve", str(path)], env=env)
    assert killed.returncode == -signal.SIGKILL
    folder = tmp_path / "rounds" / "round-001"
    state = json.loads((folder / "round.json").read_text())
    assert list(state["steps"]) == ["export_sft", "train_sft"] and "decision" not in state
    assert state["steps"]["export_sft"]["rows"] == 4
    trained = tmp_path / "rounds" / "round-001" / "expert-round-001"
    train_yaml = yaml.safe_load((folder / "train_sft.yaml").read_text())
    assert train_yaml["adapter_name_or_path"] == str(served)  # on top of what the alias serves
    assert train_yaml["dataset"][1] == "identity" and train_yaml["interleave_probs"] == [0.75, 0.25]
    assert train_yaml["mix_strategy"] == "interleave_under"
    log_before = (trained / "trainer_log.jsonl").read_text()
    rate(db, [("Extra question?", "Extra answer.")])  # new feedback must not leak into the continued round

    assert main(["improve", str(path)]) == 0
    state = json.loads((folder / "round.json").read_text())
    assert state["decision"] == "promoted" and state["steps"]["export_sft"]["rows"] == 4
    assert (trained / "trainer_log.jsonl").read_text() == log_before  # training was not redone
    served_now = yaml.safe_load(models.read_text())
    assert served_now["aliases"] == {"expert": "expert-round-001"}
    # written relative to the models file's folder, as the server resolves it
    assert served_now["models"]["expert-round-001"] == {"adapter_name_or_path": "rounds/round-001/expert-round-001"}
    [entry] = read_log(models)
    assert entry["decision"] == "promoted" and entry["round"]["round_dir"] == str(folder.resolve())
    assert entry["scores"]["rouge-l"]["candidate"] >= entry["scores"]["rouge-l"]["served"]


def test_too_little_feedback_stops_early_and_says_how_much(tmp_path, tiny_model, served, identity_dir, capsys):
    path, models, _ = setup_round(tmp_path, tiny_model, served, identity_dir, min_new_rows=50)
    before = models.read_bytes()
    assert main(["improve", str(path)]) == 0
    assert "too little new feedback for a round (sft has 4, needs 50 rows)" in capsys.readouterr().err
    folder = tmp_path / "rounds" / "round-001"
    assert json.loads((folder / "round.json").read_text())["steps"] == {}  # exported again next time
    assert models.read_bytes() == before and not read_log(models)
    assert main(["improve", str(path)]) == 0
    assert sorted(p.name for p in (tmp_path / "rounds").iterdir()) == ["round-001"]  # the same round, again


def test_bad_improve_yaml_is_named(tmp_path, capsys):
    path = tmp_path / "improve.yaml"
    path.write_text(yaml.safe_dump({"rounds_dir": "r", "models": "m.yaml", "alias": "a", "stages": "sft,ppo"}))
    assert main(["improve", str(path)]) == 1
    assert "improve.yaml:4 stages[1]: Input should be 'sft', 'dpo' or 'kto'" in capsys.readouterr().err
    assert main(["improve", str(path), "stages=sft"]) == 1
    assert "eval=EVAL.yaml is required" in capsys.readouterr().err
