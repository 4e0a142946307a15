"""The Data tab: clean a dataset file as a background job, see what was removed and the first kept rows, and accept
the cleaned file as a dataset in dataset_dir/dataset_info.json, which the Train tab's picker lists.

A job kind is an entry of DATA_JOBS: its job folder (saves_dir/webui_jobs/<name>/), the command it runs
(`expertkit data clean JOB.yaml`), the config class its form is built from, and the key naming the file it writes.
`data synth` is to be one more entry: a form, a log, its rows previewed, and the same accept step.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from expertkit.core.config import StageConfig
from expertkit.core.errors import ExpertkitError
from expertkit.core.runs import write_json_atomic
from expertkit.data.config import CleanConfig
from expertkit.ui.datasets import DATASET_INFO, dataset_names, preview_rows, rows_table
from expertkit.ui.forms import FieldSpec, field_specs
from expertkit.ui.jobs import Job
from expertkit.ui.stage_tabs import build_job_tab, job_values
from expertkit.ui.widgets import error_text

EXAMPLES_SHOWN = 3
COPIED_KEYS = ("formatting", "ranking", "columns", "tags")  # what a cleaned file keeps of its source's entry


@dataclass(frozen=True)
class DataJobKind:
    name: str  # job folder and element ids
    command: str  # `expertkit COMMAND JOB.yaml`
    cls: type[StageConfig]
    common: tuple[str, ...]  # the keys shown outside "advanced"
    output_key: str  # the key naming the file the job writes
    input_key: str  # the key naming the file it reads ("" for none)


DATA_JOBS = [
    DataJobKind(
        "data_clean", "data clean", CleanConfig,
        ("input", "output", "near_dup_threshold", "languages", "min_chars", "pii"), "output", "input",
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


def register_dataset(dataset_dir: str | os.PathLike, name: str, path: str, source: str = "") -> str:
    """Add `name` -> `path` to dataset_dir/dataset_info.json (keeping the source file's formatting and columns when
    the source is registered); returns what was done, in words. Refuses a name that names another file."""
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
    entry = {"file_name": file_name}
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
    initial = {kind.output_key: str(Path(config.dataset_dir) / f"{kind.name}-{stamp}.jsonl")}
    parts: dict[str, Any] = {}

    def input_picker(spec: FieldSpec, value: Any) -> gr.components.Component:
        return gr.Dropdown(
            choices=dataset_files(config.dataset_dir), value=None, allow_custom_value=True, label=spec.name,
            info=spec.doc, elem_id=f"{kind.name}-{spec.name}",
        )  # fmt: skip

    def draw() -> list:
        parts["summary"] = gr.Markdown(elem_id=f"{kind.name}-summary")
        parts["preview"] = gr.Dataframe(interactive=False, wrap=True, elem_id=f"{kind.name}-preview")
        gr.Markdown(f"### {L['accept_title']}")
        with gr.Row():
            parts["name"] = gr.Textbox(label=L["accept_name"], elem_id=f"{kind.name}-accept-name", scale=2)
            parts["dir"] = gr.Textbox(label="dataset_dir", value=config.dataset_dir, scale=2)
            parts["accept"] = gr.Button(L["accept"], variant="primary", elem_id=f"{kind.name}-accept", scale=1)
        parts["message"] = gr.Markdown(elem_id=f"{kind.name}-accept-message")
        return [parts["summary"], parts["preview"]]

    def show(job: Job) -> tuple:
        if job.state() != "finished":
            return "", None
        output = str(job_values(job).get(kind.output_key) or "")
        rows, note = preview_rows(".", output)
        headers, cells = rows_table(rows)
        preview = pd.DataFrame(cells, columns=headers) if rows else None
        return f"{clean_summary(output, L)}\n\n{note}", preview

    custom = {kind.input_key: input_picker} if kind.input_key else {}
    tab = build_job_tab(kind.name, kind.cls, specs, list(kind.common), initial, config, L, draw, show, custom,
                        command=kind.command)  # fmt: skip

    def on_accept(name: str, dataset_dir: str) -> str:
        job: Job = tab["job"]
        if job.state() != "finished":
            return L["accept_not_finished"]
        values = job_values(job)
        try:
            done = register_dataset(dataset_dir or ".", name, str(values.get(kind.output_key) or ""),
                                    str(values.get(kind.input_key) or ""))  # fmt: skip
        except ExpertkitError as e:
            return error_text(e)
        return L["accepted"].format(what=done)

    return parts["accept"].click(on_accept, [parts["name"], parts["dir"]], [parts["message"]])
