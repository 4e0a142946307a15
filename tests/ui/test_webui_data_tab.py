"""The Data tab: `expertkit data clean` run as a real background job from the tab's form, its report and first rows
shown, and the cleaned file accepted into dataset_info.json where the Train tab's picker (and training) find it."""

from __future__ import annotations

import json
import time

import gradio as gr
import pytest

from expertkit.core.errors import ExpertkitError
from expertkit.data.registry import resolve_dataset
from expertkit.ui.config import WebUIConfig
from expertkit.ui.data_tab import DATA_JOBS, clean_summary, dataset_files, register_dataset
from expertkit.ui.datasets import dataset_names
from expertkit.ui.forms import field_specs
from expertkit.ui.labels import labels
from expertkit.ui.stage_tabs import job_values, stage_job, start_stage_job
from expertkit.ui.widgets import FormValues

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
                    "data_clean-log", "data_clean-preview", "data_clean-accept"):  # fmt: skip
        assert elem_id in by_id, elem_id
    assert by_id["data_clean-input"].choices == [(f"chats ({dataset_dir / 'chats.jsonl'})",
                                                  str(dataset_dir / "chats.jsonl"))]  # fmt: skip
