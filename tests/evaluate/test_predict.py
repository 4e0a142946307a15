"""Batch prediction (`expertkit eval` with LLaMA-Factory's `do_predict: true`) on the tiny model + identity adapter:
generated_predictions.jsonl with LLaMA-Factory's keys, questions without references, the same predictions through
engine=openai against the live server, a resumed run that regenerates nothing, and train pointing to eval. The
stage's `run` routes do_predict here as the CLI does."""

from __future__ import annotations

import io
import json

import pytest
from test_eval_run import QA

from expertkit.cli.main import main
from expertkit.core.config import load_config
from expertkit.core.errors import ConfigError
from expertkit.evaluate.config import EvalConfig
from expertkit.evaluate.predict import GENERATED, PredictResult, run_predict
from expertkit.evaluate.run import run
from expertkit.train.config import TrainConfig

LIVE_KEY = "sk-test-local"  # the key of conftest.py's live server


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def questions(tmp_path):
    """Questions alone, as a user has them before any answer is written (one with a reference)."""
    path = tmp_path / "questions.jsonl"
    rows = [{"question": q} for q, _ in QA[:3]] + [{"question": QA[3][0], "reference": QA[3][1]}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def predict_keys(tiny_model, identity_adapter, eval_file, output_dir, **keys) -> dict:
    _, result = identity_adapter
    return {
        "do_predict": True,
        "eval_file": str(eval_file),
        "model_name_or_path": str(tiny_model),
        "adapter_name_or_path": str(result.output_dir),
        "output_dir": str(output_dir),
        "max_new_tokens": 24,
        **keys,
    }


def test_a_llamafactory_predict_yaml_writes_generated_predictions(tiny_model, identity_adapter, identity_dir, tmp_path):
    _, result = identity_adapter
    out = tmp_path / "predict"
    yaml = tmp_path / "llama3_lora_predict.yaml"  # LLaMA-Factory's examples/train_lora/*_predict.yaml, keys as there
    yaml.write_text(
        f"model_name_or_path: {tiny_model}\nadapter_name_or_path: {result.output_dir}\ntrust_remote_code: true\n"
        "stage: sft\ndo_predict: true\nfinetuning_type: lora\n"
        f"eval_dataset: identity\ndataset_dir: {identity_dir}\ncutoff_len: 2048\nmax_samples: 3\n"
        "overwrite_cache: true\npreprocessing_num_workers: 16\ndataloader_num_workers: 4\n"
        f"output_dir: {out}\noverwrite_output_dir: true\nreport_to: none\n"
        "per_device_eval_batch_size: 1\npredict_with_generate: true\nddp_timeout: 180000000\n"
        "max_new_tokens: 24\ntemperature: 0\ntop_p: 0.7\ninfer_backend: huggingface\n",
        encoding="utf-8",
    )
    assert main(["eval", str(yaml)]) == 0
    rows = read_lines(out / GENERATED)
    assert [r["prompt"] for r in rows] == [q for q, _ in QA[:3]]  # the first max_samples rows, in order
    assert all({"prompt", "predict", "label"} <= r.keys() for r in rows)
    assert [r["label"] for r in rows] == [a for _, a in QA[:3]]
    assert rows[0]["predict"] == QA[0][1]  # the adapter's (only the adapter's) trained answer
    assert not (out / "metrics.json").exists() and not (out / "report.html").exists()


def test_questions_without_references_are_predicted_and_resume(tiny_model, identity_adapter, questions, tmp_path):
    config = load_config(EvalConfig, None, predict_keys(tiny_model, identity_adapter, questions, tmp_path / "p"))
    first = run(config, out=io.StringIO())  # the stage's API routes do_predict, as `expertkit eval` does
    assert isinstance(first, PredictResult) and not (first.output_dir / "metrics.json").exists()
    rows = read_lines(first.paths["tuned"])
    assert [r["label"] for r in rows] == ["", "", "", QA[3][1]]  # '' without a reference, as LLaMA-Factory
    assert rows[0]["predict"] == QA[0][1] and first.errors == 0

    kept = first.output_dir / "predictions" / "tuned.jsonl"
    answers = read_lines(kept)
    answers[0]["answer"] = "kept from the first run"  # a resumed run must read this, not regenerate it
    kept.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in answers), encoding="utf-8")
    log = io.StringIO()
    again = run_predict(config, out=log)
    assert "4 answers already in" in log.getvalue()
    assert {r["predict"] for r in read_lines(again.paths["tuned"])} >= {"kept from the first run"}


def test_alpaca_and_sharegpt_rows_without_answers(tiny_model, identity_adapter, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ask.json").write_text(json.dumps([{"instruction": "Who are you?", "input": ""}]), encoding="utf-8")
    chat = [{"conversations": [{"from": "human", "value": "What is your name?"}]}]
    (data / "chat.json").write_text(json.dumps(chat), encoding="utf-8")
    info = {"ask": {"file_name": "ask.json"}, "chat": {"file_name": "chat.json", "formatting": "sharegpt"}}
    (data / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    keys = predict_keys(tiny_model, identity_adapter, "", tmp_path / "p", eval_dataset="ask,chat")
    keys.update(eval_file=None, dataset_dir=str(data))
    config = load_config(EvalConfig, None, keys)
    rows = read_lines(run_predict(config, out=io.StringIO()).paths["tuned"])
    assert [(r["prompt"], r["label"]) for r in rows] == [("Who are you?", ""), ("What is your name?", "")]
    assert rows[0]["predict"] == QA[0][1]


def test_engine_openai_gives_the_same_predictions(live_server, tiny_model, identity_adapter, questions, tmp_path):
    _, url = live_server
    local = run_predict(
        load_config(EvalConfig, None, predict_keys(tiny_model, identity_adapter, questions, tmp_path / "local")),
        out=io.StringIO(),
    )
    keys = {
        "do_predict": True,
        "eval_file": str(questions),
        "engine": "openai",
        "base_url": url + "/v1",
        "api_key": LIVE_KEY,
        "model": "sail",
        "output_dir": str(tmp_path / "remote"),
        "max_new_tokens": 24,
    }
    remote = run_predict(load_config(EvalConfig, None, keys), out=io.StringIO())
    assert read_lines(remote.paths["sail"]) == read_lines(local.paths["tuned"])
    assert remote.paths["sail"] == tmp_path / "remote" / GENERATED


def test_predict_with_generate_false_and_train_do_predict_say_what_to_run(tmp_path):
    with pytest.raises(ConfigError, match="predict_with_generate"):
        load_config(EvalConfig, None, {"do_predict": True, "predict_with_generate": False, "eval_file": "q.jsonl",
                                       "model_name_or_path": "m"})  # fmt: skip
    path = tmp_path / "predict.yaml"
    path.write_text("model_name_or_path: m\nstage: sft\ndo_predict: true\neval_dataset: identity\noutput_dir: o\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, path)
    assert "do_predict" in str(e.value) and "expertkit eval predict.yaml" in str(e.value)
