"""The Data tab: clean a dataset file, or make one from documents through a teacher model (`data synth`), as a
background job; see what was removed / the rows written (synth's rows can be edited or deleted); and accept the
file as a dataset in dataset_dir/dataset_info.json, which the Train tab's picker lists.

A job kind is an entry of DATA_JOBS: its job folder (saves_dir/webui_jobs/<name>/), the command it runs
(`expertkit data clean JOB.yaml`), the config class its form is built from, and the key naming what it writes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from expertkit.core.config import StageConfig
from expertkit.core.errors import ExpertkitError
from expertkit.core.runs import write_json_atomic
from expertkit.data.config import CleanConfig
from expertkit.synth.config import SynthConfig
from expertkit.ui.datasets import DATASET_INFO, dataset_names, preview_rows, rows_table
from expertkit.ui.forms import FieldSpec, field_specs
from expertkit.ui.jobs import Job
from expertkit.ui.stage_tabs import build_job_tab, job_values
from expertkit.ui.synth_rows import (
    COLUMNS,
    rows_frame,
    save_edits,
    store_uploads,
    synth_entry,
    synth_progress,
    synth_summary,
)
from expertkit.ui.widgets import error_text

EXAMPLES_SHOWN = 3
COPIED_KEYS = ("formatting", "ranking", "columns", "tags")  # what a cleaned file keeps of its source's entry


@dataclass(frozen=True)
class DataJobKind:
    name: str  # job folder and element ids
    command: str  # `expertkit COMMAND JOB.yaml`
    cls: type[StageConfig]
    common: tuple[str, ...]  # the keys shown outside "advanced"
    output_key: str  # the key naming the file the job writes (or, with output_file, its folder)
    input_key: str  # the key naming the file it reads ("" for none)
    output_file: str = ""  # the file accepted, inside the folder output_key names ("": output_key names the file)
    env_keys: dict[str, str] = field(default_factory=dict)  # keys passed as environment variables, never written

    def output_path(self, values: dict[str, Any]) -> str:
        out = str(values.get(self.output_key) or "")
        return str(Path(out) / self.output_file) if out and self.output_file else out


SYNTH_COMMON = ("inputs", "output_dir", "teacher_base_url", "teacher_model", "teacher_api_key", "format",
                "questions_per_chunk", "min_score")  # fmt: skip
DATA_JOBS = [
    DataJobKind(
        "data_clean", "data clean", CleanConfig,
        ("input", "output", "near_dup_threshold", "languages", "min_chars", "pii"), "output", "input",
    ),
    DataJobKind(
        "data_synth", "data synth", SynthConfig, SYNTH_COMMON, "output_dir", "", output_file="train.json",
        env_keys={"teacher_api_key": "OPENAI_API_KEY"},  # synth's engine reads it there; the job folder never has it
    ),
]  # fmt: skip


def dataset_files(dataset_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """(label, path) of each registered dataset that is one local JSON / JSON Lines file."""
    folder = Path(dataset_dir)
    choices = []
    for name in dataset_names(folder):
        entry = _info(folder).get(name) or {}
        path = folder / str(entry.get("file_name") or "")
        if entry.get("file_name") and path.is_file() and path.suffix in (".json", ".jsonl"):
            choices.append((f"{name} ({path})", str(path)))
    return choices


def _info(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / DATASET_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def register_dataset(
    dataset_dir: str | os.PathLike, name: str, path: str, source: str = "", like: dict[str, Any] | None = None
) -> str:
    """Add `name` -> `path` to dataset_dir/dataset_info.json (keeping the source file's formatting and columns when
    the source is registered, else those of `like`); returns what was done, in words. Refuses a name that names
    another file."""
    folder, name = Path(dataset_dir), (name or "").strip()
    if not name:
        raise ExpertkitError("give the new dataset a name", hint="e.g. claims_clean")
    if not Path(path).is_file():
        raise ExpertkitError(f"'{path}' does not exist yet", hint="run the job to the end first")
    info = _info(folder)
    file_name = os.path.relpath(Path(path).resolve(), folder.resolve())
    if file_name.startswith(".."):
        file_name = str(Path(path).resolve())
    if name in info and (info[name] or {}).get("file_name") != file_name:
        raise ExpertkitError(
            f"'{name}' is already a dataset in {folder / DATASET_INFO} ({(info[name] or {}).get('file_name')})",
            hint="choose another name",
        )
    entry = {"file_name": file_name, **{k: v for k, v in (like or {}).items() if k in COPIED_KEYS}}
    for other in info.values():
        if isinstance(other, dict) and source and _same_file(folder / str(other.get("file_name", "")), source):
            entry.update({k: other[k] for k in COPIED_KEYS if k in other})
            break
    write_json_atomic(folder / DATASET_INFO, {**info, name: entry})
    return f"`{name}` -> `{file_name}` in `{folder / DATASET_INFO}`: pick it in the Train tab (dataset={name})"


def _same_file(a: Path, b: str) -> bool:
    try:
        return a.is_file() and a.resolve() == Path(b).resolve()
    except OSError:
        return False


def clean_summary(output: str, L: dict[str, str]) -> str:
    """The report of `data clean` (`<output>.report.json`) as Markdown: counts, and a few examples per reason."""
    try:
        report = json.loads(Path(f"{output}.report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return L["clean_no_report"].format(path=f"{output}.report.json")
    lines = [L["clean_counts"].format(read=report.get("read", 0), kept=report.get("kept", 0))]
    for reason, n in (report.get("removed") or {}).items():
        lines.append(f"- **{reason}**: {n}")
        lines += [f"  - `{x[:160]}`" for x in (report.get("examples") or {}).get(reason, [])[:EXAMPLES_SHOWN]]
    lines += [f"- {L['clean_masked']} {kind}: {n}" for kind, n in (report.get("pii_masked") or {}).items()]
    return "\n".join(lines)


def build_data_tab(config, L: dict[str, str]) -> dict[str, Any]:
    """Draw the tab; returns each kind's accept event (the Train tab refreshes its picker after it)."""
    accepted = []
    with gr.Tabs():
        for kind in DATA_JOBS:
            with gr.Tab(L[kind.name], elem_id=f"tab-{kind.name}"):
                accepted.append(build_kind(kind, config, L))
    return {"accepted": accepted}


def build_kind(kind: DataJobKind, config, L: dict[str, str]):
    specs = field_specs(kind.cls)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    suffix = "" if kind.output_file else ".jsonl"  # synth writes a folder
    initial = {kind.output_key: str(Path(config.dataset_dir) / f"{kind.name}-{stamp}{suffix}")}
    parts: dict[str, Any] = {}
    upload = None
    if "inputs" in kind.cls.model_fields:  # documents: uploaded here, or paths on the server typed into inputs
        upload = gr.File(label=L["synth_upload"], file_count="multiple", type="filepath", elem_id=f"{kind.name}-upload")

    def input_picker(spec: FieldSpec, value: Any) -> gr.components.Component:
        return gr.Dropdown(
            choices=dataset_files(config.dataset_dir), value=None, allow_custom_value=True, label=spec.name,
            info=spec.doc, elem_id=f"{kind.name}-{spec.name}",
        )  # fmt: skip

    def draw() -> list:
        parts["summary"] = gr.Markdown(elem_id=f"{kind.name}-summary")
        if kind.output_file:
            draw_row_editor(kind, L, parts)
        else:
            parts["preview"] = gr.Dataframe(interactive=False, wrap=True, elem_id=f"{kind.name}-preview")
        gr.Markdown(f"### {L.get(f'{kind.name}_accept_title', L['accept_title'])}")
        with gr.Row():
            parts["name"] = gr.Textbox(label=L["accept_name"], elem_id=f"{kind.name}-accept-name", scale=2)
            parts["dir"] = gr.Textbox(label="dataset_dir", value=config.dataset_dir, scale=2)
            parts["accept"] = gr.Button(L["accept"], variant="primary", elem_id=f"{kind.name}-accept", scale=1)
        parts["message"] = gr.Markdown(elem_id=f"{kind.name}-accept-message")
        # the edit table is not refreshed by the timer (it would undo the edits): Load rows fills it
        return [parts["summary"]] if kind.output_file else [parts["summary"], parts["preview"]]

    custom = {kind.input_key: input_picker} if kind.input_key else {}
    tab = build_job_tab(kind.name, kind.cls, specs, list(kind.common), initial, config, L, draw,
                        lambda job: show_result(kind, job, L), custom, command=kind.command,
                        env_keys=kind.env_keys)  # fmt: skip
    job: Job = tab["job"]
    if upload is not None:
        upload.upload(lambda files, inputs: store_uploads(files, job.folder / "documents", inputs),
                      [upload, tab["fields"]["inputs"]], [tab["fields"]["inputs"]])  # fmt: skip
    if kind.output_file:
        parts["load"].click(lambda: load_rows_table(kind, job, L), None, [parts["rows"], parts["edit_message"]])
        parts["save"].click(lambda table: save_rows_table(kind, job, table, L), [parts["rows"]],
                            [parts["rows"], parts["edit_message"]])  # fmt: skip
    accept = lambda name, dataset_dir: accept_output(kind, job, name, dataset_dir, L)  # noqa: E731
    return parts["accept"].click(accept, [parts["name"], parts["dir"]], [parts["message"]])


def draw_row_editor(kind: DataJobKind, L: dict[str, str], parts: dict[str, Any]) -> None:
    """The rows of the file the job wrote, as an editable table (row, question, answer, delete), with load / save."""
    gr.Markdown(L["synth_rows_help"])
    with gr.Row():
        parts["load"] = gr.Button(L["synth_load"], elem_id=f"{kind.name}-load-rows")
        parts["save"] = gr.Button(L["synth_save"], elem_id=f"{kind.name}-save-rows")
    parts["edit_message"] = gr.Markdown(elem_id=f"{kind.name}-edit-message")
    parts["rows"] = gr.Dataframe(
        headers=COLUMNS, datatype=["number", "str", "str", "bool"], interactive=True, wrap=True,
        column_count=len(COLUMNS), elem_id=f"{kind.name}-rows",
    )  # fmt: skip


def show_result(kind: DataJobKind, job: Job, L: dict[str, str]) -> tuple:
    """What the timer shows under Result: clean's report and first rows; synth's progress and counts."""
    state = job.state()
    if kind.output_file:  # synth: its progress while it runs, then what it wrote (its rows: Load rows)
        if state == "none":
            return ("",)
        folder = Path(kind.output_path(job_values(job))).parent
        done = f"\n\n{synth_summary(folder)}" if state == "finished" else ""
        return (synth_progress(folder) + done,)
    if state != "finished":
        return "", None
    output = kind.output_path(job_values(job))
    rows, note = preview_rows(".", output)
    headers, cells = rows_table(rows)
    preview = pd.DataFrame(cells, columns=headers) if rows else None
    return f"{clean_summary(output, L)}\n\n{note}", preview


def load_rows_table(kind: DataJobKind, job: Job, L: dict[str, str]) -> tuple:
    """(the edit table, a message) for the finished job's file."""
    if job.state() != "finished":
        return None, L["accept_not_finished"]
    try:
        return rows_frame(kind.output_path(job_values(job))), ""
    except ExpertkitError as e:
        return None, error_text(e)


def save_rows_table(kind: DataJobKind, job: Job, table: pd.DataFrame | None, L: dict[str, str]) -> tuple:
    """Write the edits to the job's file (atomically), then show the file as it now is."""
    if job.state() != "finished" or table is None:
        return gr.update(), L["accept_not_finished"]
    path = kind.output_path(job_values(job))
    try:
        done = save_edits(path, table)
        return rows_frame(path), done
    except ExpertkitError as e:
        return gr.update(), error_text(e)


def accept_output(kind: DataJobKind, job: Job, name: str, dataset_dir: str, L: dict[str, str]) -> str:
    """Register the finished job's file (as edited) as dataset `name` in dataset_dir/dataset_info.json."""
    if job.state() != "finished":
        return L["accept_not_finished"]
    values = job_values(job)
    like = synth_entry(values.get(kind.output_key) or "") if kind.output_file else None
    try:
        done = register_dataset(dataset_dir or ".", name, kind.output_path(values),
                                str(values.get(kind.input_key) or ""), like)  # fmt: skip
    except ExpertkitError as e:
        return error_text(e)
    return L["accepted"].format(what=done)
