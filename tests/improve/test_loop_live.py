"""The whole loop against a live server, as issue #13 checks it: a models file served on 127.0.0.1 with the
conversation store on; clients ask the alias, then correct its answers through `POST /v1/feedback`; the feedback is
exported as dpo pairs, a DPO round is trained on top of the served adapter, and `expertkit promote` gates it and
rewrites the models file while clients stream: no request fails, new requests are answered by the new round (the
store records its arm), and a rollback puts the old one back, again without a restart."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import yaml
from gate_setup import QA, read_log, write_models
from openai import OpenAI

from expertkit.cli.main import main
from expertkit.core.feedback import FeedbackStore

KEY = "sk-loop-test"
# what users say the served round (the identity adapter) should have answered: its answers, plus a line about claims
FIXED = [(question, f"{answer} I handle insurance claims.") for question, answer in QA]


def write_eval(folder):
    """The gate's eval set: the questions with the answers users asked for."""
    eval_file = folder / "held_out.jsonl"
    eval_file.write_text("".join(json.dumps({"question": q, "reference": r}) + "\n" for q, r in FIXED))
    path = folder / "eval.yaml"
    path.write_text(yaml.safe_dump({"eval_file": str(eval_file), "max_new_tokens": 24, "concurrency": 4}))
    return path


@pytest.fixture
def live(tiny_model, identity_adapter, tmp_path):
    from live_server import free_port, serve_app

    from expertkit.serve.app import build_app
    from expertkit.serve.config import ServeConfig

    models = write_models(tmp_path / "models.yaml", tiny_model, identity_adapter[1].output_dir)  # served as round0
    db = tmp_path / "feedback.sqlite"
    config = ServeConfig(models=str(models), store_conversations=True, feedback_db=str(db), api_key=KEY,
                         port=free_port(), max_new_tokens=24)  # fmt: skip
    app = build_app(None, config)
    with serve_app(app, config.port) as url:
        yield url, models, db, identity_adapter[1].output_dir


def health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=5).json()["models_file"]


def wait_reload(url: str, before: dict, seconds: float = 90) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = health(url)
        if now["loaded_at"] != before["loaded_at"] or now["error"] != before["error"]:
            return now
        time.sleep(0.1)
    pytest.fail("the server did not reload the models file")


def last_arm(db) -> str:
    store = FeedbackStore(db)
    try:
        return store._read("SELECT arm FROM conversations ORDER BY rowid DESC LIMIT 1")[0][0]
    finally:
        store.close()


def test_feedback_to_dpo_to_a_gated_promotion_swapped_live_and_rolled_back(live, tiny_model, tmp_path):
    url, models, db, served = live
    client = OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    for question, right in FIXED:  # users ask the alias, then say what it should have answered
        answer = client.chat.completions.create(
            model="expert", messages=[{"role": "user", "content": question}], temperature=0, max_tokens=16
        )
        assert answer.model == "expert"  # blind: the alias, never the arm
        r = httpx.post(url + "/v1/feedback", headers={"Authorization": f"Bearer {KEY}"},
                       json={"completion_id": answer.id, "rating": -1, "edited_answer": right}, timeout=10)  # fmt: skip
        assert r.status_code == 200, r.text

    data = tmp_path / "data"
    assert main(["feedback", "export", "format=dpo", f"output={data / 'round1_dpo.json'}", f"feedback_db={db}"]) == 0
    pairs = json.loads((data / "round1_dpo.json").read_text())
    assert sorted(p["chosen"]["content"] for p in pairs) == sorted(right for _, right in FIXED)
    assert json.loads((data / "dataset_info.json").read_text())["round1_dpo"]["ranking"] is True

    candidate = tmp_path / "round1"
    assert main(["train", "stage=dpo", f"model_name_or_path={tiny_model}", f"adapter_name_or_path={served}",
                 "dataset=round1_dpo", f"dataset_dir={data}", f"output_dir={candidate}", "cutoff_len=128",
                 "learning_rate=5e-3", "num_train_epochs=30", "per_device_train_batch_size=3", "pref_ftx=1.0",
                 "lr_scheduler_type=constant", "bf16=false", "save_steps=1000", "logging_steps=10",
                 "learning_check_samples=3"]) == 0  # fmt: skip

    failures, answered, stop = [], [], threading.Event()

    def stream_while_promoting():
        while not stop.is_set():
            try:
                chunks = list(client.chat.completions.create(
                    model="expert", messages=[{"role": "user", "content": QA[0][0]}], temperature=0, max_tokens=8,
                    stream=True,
                ))  # fmt: skip
                answered.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
            except Exception as e:  # noqa: BLE001 - any failed request fails the test below
                failures.append(repr(e))

    clients = [threading.Thread(target=stream_while_promoting) for _ in range(2)]
    for t in clients:
        t.start()
    try:
        before = health(url)
        gate = ["eval=" + str(write_eval(tmp_path)), f"output_dir={tmp_path / 'gate'}", "metrics=rouge-l,contains"]
        code = main(["promote", f"candidate={candidate}", "alias=expert", f"models={models}", *gate])
        assert code == 0
        assert yaml.safe_load(models.read_text())["aliases"] == {"expert": "round1"}
        assert wait_reload(url, before)["error"] is None
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=120)
    assert not failures, failures
    assert answered

    served = client.chat.completions.create(
        model="expert", messages=[{"role": "user", "content": QA[0][0]}], temperature=0, max_tokens=16
    )
    assert served.model == "expert" and last_arm(db) == "round1"  # a new request is the new round's
    entry = read_log(models)[-1]
    assert entry["decision"] == "promoted" and entry["scores"]["rouge-l"]["ok"]

    before = health(url)
    assert main(["promote", "--rollback", "alias=expert", f"models={models}"]) == 0
    wait_reload(url, before)
    client.chat.completions.create(
        model="expert", messages=[{"role": "user", "content": QA[0][0]}], temperature=0, max_tokens=4
    )
    assert last_arm(db) == "round0"
