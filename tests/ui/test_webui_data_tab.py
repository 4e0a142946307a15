"""The Data tab: `expertkit data clean` and `expertkit data synth` run as real background jobs from the tab's form
(synth against the scripted teacher on 127.0.0.1), clean's report and first rows shown, synth's rows edited and
deleted, and the file accepted into dataset_info.json where the Train tab's picker (and training) find it."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import gradio as gr
import pytest

from expertkit.core.errors import ExpertkitError
from expertkit.data.registry import resolve_dataset
from expertkit.ui.config import WebUIConfig
from expertkit.ui.data_tab import (
    DATA_JOBS,
    accept_output,
    clean_summary,
    dataset_files,
    load_rows_table,
    register_dataset,
    save_rows_table,
    show_result,
)
from expertkit.ui.datasets import dataset_names
from expertkit.ui.forms import field_specs
from expertkit.ui.labels import labels
from expertkit.ui.stage_tabs import job_values, stage_job, start_stage_job
from expertkit.ui.synth_rows import rows_frame, save_edits, store_uploads
from expertkit.ui.widgets import FormValues

sys.path.insert(0, str(Path(__file__).parents[1] / "synth"))
from teacher_server import teacher_server  # noqa: E402  (tests/synth's scripted teacher)

L = labels("en")
ROWS = [
    {"conversations": [{"from": "human", "value": "How do I file a claim?"},
                       {"from": "gpt", "value": "Send the police report within 30 days to claims@example.com."}]},
    {"conversations": [{"from": "human", "value": "How do I file a claim?"},
                       {"from": "gpt", "value": "Send the police report within thirty days to claims@example.com."}]},
    {"conversations": [{"from": "human", "value": "如何申请理赔？"},
                       {"from": "gpt", "value": "请在三十天内提交警方报告和维修估价单。"}]},
]  # fmt: skip


@pytest.fixture
def dataset_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "chats.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), "utf-8")
    info = {"chats": {"file_name": "chats.jsonl", "formatting": "sharegpt"}, "hub": {"hf_hub_url": "org/x"}}
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def wait_finished(job, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while job.state() == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job.state() == "finished", job.tail()


def test_clean_job_then_accept_registers_a_dataset_training_can_read(tmp_path, dataset_dir):
    kind = DATA_JOBS[0]
    assert dataset_files(dataset_dir) == [(f"chats ({dataset_dir / 'chats.jsonl'})", str(dataset_dir / "chats.jsonl"))]
    specs = field_specs(kind.cls)
    form = {s.name: s.form_value() for s in specs}
    output = dataset_dir / "chats_clean.jsonl"
    form.update(input=str(dataset_dir / "chats.jsonl"), output=str(output), languages="en")
    _, values = FormValues(kind.cls, specs, dict.fromkeys(form)).checked(*form.values())
    job = stage_job(str(tmp_path / "saves"), kind.name)
    start_stage_job(kind.command, job, values)  # the real `expertkit data clean JOB.yaml`, as the tab starts it
    wait_finished(job)
    assert "$ expertkit data clean " in job.tail() and "read 3 rows, kept 1" in job.tail()
    assert job_values(job)["output"] == str(output)
    summary = clean_summary(str(output), L)
    assert "**3** rows read, **1** kept" in summary and "**near duplicate**: 1" in summary
    assert "**language zh (not in languages=en)**: 1" in summary and "masked EMAIL: 1" in summary

    with pytest.raises(ExpertkitError, match="already a dataset"):
        register_dataset(dataset_dir, "chats", str(output), str(dataset_dir / "chats.jsonl"))
    done = register_dataset(dataset_dir, "chats_clean", str(output), str(dataset_dir / "chats.jsonl"))
    assert "`chats_clean` -> `chats_clean.jsonl`" in done
    assert "chats_clean" in dataset_names(dataset_dir)
    info = json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["chats_clean"] == {"file_name": "chats_clean.jsonl", "formatting": "sharegpt"}  # kept its format
    assert info["hub"] == {"hf_hub_url": "org/x"}  # the other entries untouched
    entry = resolve_dataset("chats_clean", dataset_dir)
    assert entry.formatting == "sharegpt" and entry.path.endswith("chats_clean.jsonl")


def test_accept_refuses_a_missing_file_and_an_empty_name(dataset_dir):
    with pytest.raises(ExpertkitError, match="give the new dataset a name"):
        register_dataset(dataset_dir, " ", str(dataset_dir / "chats.jsonl"))
    with pytest.raises(ExpertkitError, match="does not exist yet"):
        register_dataset(dataset_dir, "x", str(dataset_dir / "nothing.jsonl"))


def test_the_data_tab_is_a_trainer_tab_with_its_clean_form(tmp_path, dataset_dir):
    from expertkit.ui.app import build_app

    demo = build_app(WebUIConfig(saves_dir=str(tmp_path / "saves"), dataset_dir=str(dataset_dir)))
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    assert isinstance(by_id["tab-data"], gr.Tab) and isinstance(by_id["tab-data_clean"], gr.Tab)
    for elem_id in ("data_clean-input", "data_clean-output", "data_clean-languages", "data_clean-start",
                    "data_clean-log", "data_clean-preview", "data_clean-accept", "tab-data_synth", "data_synth-upload",
                    "data_synth-inputs", "data_synth-teacher_api_key", "data_synth-rows", "data_synth-save-rows",
                    "data_synth-accept"):  # fmt: skip
        assert elem_id in by_id, elem_id
    assert by_id["data_clean-input"].choices == [(f"chats ({dataset_dir / 'chats.jsonl'})",
                                                  str(dataset_dir / "chats.jsonl"))]  # fmt: skip


PUMP = "The impeller of the P-300 pump is cleaned every three months. Its shaft is aligned after every repair.\n"
VALVE = "The suction valve is opened before the pump starts. The pressure valve opens at six bar.\n"


def test_synth_job_rows_edited_deleted_then_accepted_for_the_train_tab(tmp_path, dataset_dir):
    kind = next(k for k in DATA_JOBS if k.name == "data_synth")
    uploaded = tmp_path / "gradio-tmp" / "pump.md"  # as gr.File hands an upload over: a temporary path
    uploaded.parent.mkdir()
    uploaded.write_text(PUMP, encoding="utf-8")
    (tmp_path / "server_docs").mkdir()
    (tmp_path / "server_docs" / "valve.txt").write_text(VALVE, encoding="utf-8")
    job = stage_job(str(tmp_path / "saves"), kind.name)
    inputs = store_uploads([str(uploaded)], job.folder / "documents", str(tmp_path / "server_docs"))
    assert inputs == f"{tmp_path / 'server_docs'}, {job.folder / 'documents' / 'pump.md'}"
    specs = field_specs(kind.cls)
    form = {s.name: s.form_value() for s in specs}
    output_dir = dataset_dir / "pump_qa"
    with teacher_server(api_key="sk-webui-secret") as (teacher, url):  # 401 without the key
        form.update(inputs=inputs, output_dir=str(output_dir), teacher_base_url=url, teacher_api_key="sk-webui-secret",
                    eval_size=0.0, concurrency=2)  # fmt: skip
        _, values = FormValues(kind.cls, specs, dict.fromkeys(form)).checked(*form.values())
        start_stage_job(kind.command, job, values, kind.env_keys)  # the real `expertkit data synth JOB.yaml`
        wait_finished(job)
    assert "$ expertkit data synth " in job.tail() and len(teacher.tasks("questions")) == 2
    for path in [*job.folder.rglob("*"), *output_dir.rglob("*")]:  # the key went through the environment only
        if path.is_file() and path.suffix != ".sqlite":
            assert "sk-webui-secret" not in path.read_text(encoding="utf-8", errors="replace"), path
    summary = show_result(kind, job, L)[0]
    assert "**2** of **2** chunks done, 0 failed" in summary and "**4** rows in" in summary

    table, message = load_rows_table(kind, job, L)
    assert message == "" and list(table.columns) == ["row", "question", "answer", "delete"] and len(table) == 4
    pump = table.index[table["question"].str.contains("impeller")][0]
    table.loc[pump, "answer"] = "Every three months (edited)."
    table.loc[(pump + 1) % 4, "delete"] = True
    deleted_question = table.loc[(pump + 1) % 4, "question"]
    shown, message = save_rows_table(kind, job, table, L)
    assert "3 rows (1 edited, 1 deleted)" in message and len(shown) == 3
    rows = json.loads((output_dir / "train.json").read_text(encoding="utf-8"))
    assert [r["instruction"] for r in rows if r["output"] == "Every three months (edited)."] == [
        table.loc[pump, "question"]
    ]
    assert deleted_question not in [r["instruction"] for r in rows] and all("quote" in r["source"] for r in rows)
    shown.loc[0, "answer"] = " "
    _, message = save_rows_table(kind, job, shown, L)
    assert "must not be empty" in message and len(json.loads((output_dir / "train.json").read_text("utf-8"))) == 3

    assert "registered `pump_qa` -> `pump_qa/train.json`" in accept_output(kind, job, "pump_qa", str(dataset_dir), L)
    assert "pump_qa" in dataset_names(dataset_dir)  # what the Train tab's picker lists
    entry = resolve_dataset("pump_qa", dataset_dir)
    assert entry.formatting == "alpaca" and entry.path.endswith("pump_qa/train.json")
    info = json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["pump_qa"]["columns"] == {"prompt": "instruction", "query": "input", "response": "output"}


def test_sharegpt_rows_edit_their_turns_and_a_row_not_in_the_file_is_refused(tmp_path):
    path = tmp_path / "train.json"
    rows = [{"conversations": [{"from": "human", "value": f"q{n}?"}, {"from": "gpt", "value": f"a{n}."}],
             "source": {"quote": f"a{n}."}} for n in range(3)]  # fmt: skip
    path.write_text(json.dumps(rows), encoding="utf-8")
    table = rows_frame(path)
    assert table.values.tolist() == [[n, f"q{n}?", f"a{n}.", False] for n in range(3)]
    table.loc[2, "question"] = "q2, asked better?"
    assert "3 rows (1 edited, 0 deleted)" in save_edits(path, table.iloc[1:])  # row 0 not in the table: kept
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved[:2] == rows[:2] and saved[2]["conversations"][0] == {"from": "human", "value": "q2, asked better?"}
    assert saved[2]["conversations"][1] == rows[2]["conversations"][1] and saved[2]["source"] == rows[2]["source"]
    table.loc[2, "row"] = 7
    with pytest.raises(ExpertkitError, match="row number 7 is not a row of .* \\(it has 3\\)"):
        save_edits(path, table)
    with pytest.raises(ExpertkitError, match="is not valid JSON"):
        (tmp_path / "bad.json").write_text("[{", encoding="utf-8")
        rows_frame(tmp_path / "bad.json")
