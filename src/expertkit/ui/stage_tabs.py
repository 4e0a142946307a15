"""The evaluate and export tabs: a config form, start / stop, the job's log, then its result.

Each tab runs one job at a time, in saves_dir/webui_jobs/<eval|export>/, so a reopened page finds it there.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import yaml

from expertkit.core.config import StageConfig, load_config
from expertkit.core.errors import ExpertkitError
from expertkit.evaluate.config import EvalConfig
from expertkit.export.config import ExportConfig
from expertkit.ui.forms import FieldSpec, field_specs, has_secrets
from expertkit.ui.jobs import STOP_GRACE_S, Job, shown_command, start_job, stop_job
from expertkit.ui.runs import list_runs
from expertkit.ui.widgets import FormValues, build_form, command_text, error_text, yaml_text

REFRESH_S = 2.0
LOG_BYTES = 12_000
EVAL_COMMON = [
    "model_name_or_path",
    "adapter_name_or_path",
    "eval_file",
    "eval_dataset",
    "dataset_dir",
    "metrics",
    "max_samples",
    "probe",
    "output_dir",
    "template",
    "candidates",
]
CANDIDATES_EXAMPLE = """\
# unset: model_name_or_path (+ adapter) make base and tuned; or a YAML/JSON list (then clear those two):
- {name: base, model_name_or_path: saves/demo/model}
- {name: tuned, model_name_or_path: saves/demo/model, adapter_name_or_path: saves/demo/lora}
- {name: tuned+rag, model_name_or_path: saves/demo/model, adapter_name_or_path: saves/demo/lora, kb_dir: kb}"""
EXPORT_COMMON = [
    "model_name_or_path",
    "adapter_name_or_path",
    "finetuning_type",
    "export_dir",
    "export_format",  # safetensors, or gguf files + an Ollama Modelfile
    "export_quantization",  # gguf: f16, q8_0, q4_k_m, ... (comma list)
    "export_size",
    "template",
]


def stage_job(saves_dir: str, name: str) -> Job:
    return Job(Path(saves_dir) / "webui_jobs" / name, name)


def job_values(job: Job) -> dict[str, Any]:
    """The keys of the job's YAML (what it was started with)."""
    try:
        data = yaml.safe_load(job.config_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def start_stage_job(command: str, job: Job, values: dict[str, Any], env_keys: dict[str, str] | None = None) -> None:
    """Write the job's YAML (API keys in clear: the job reads them; the file is then 0600) and start
    `expertkit COMMAND YAML` (a command of one or more words: "eval", "data clean").

    env_keys: keys passed to the job as environment variables instead ({"teacher_api_key": "OPENAI_API_KEY"}), so the
    job folder never holds them; an empty one is left out (the job then inherits the UI's own variable, if set)."""
    env_keys = env_keys or {}
    env = {var: str(values[key]) for key, var in env_keys.items() if values.get(key)}
    values = {k: v for k, v in values.items() if k not in env_keys}
    args = [*command.split(), str(job.config_path)]
    start_job(job, args, yaml_text(command, job, values, reveal=True), private=has_secrets(values), env=env)


def candidates_box(spec: FieldSpec, value: Any) -> gr.components.Component:
    return gr.Textbox(
        value=spec.form_value(value),
        lines=4,
        max_lines=20,
        placeholder=CANDIDATES_EXAMPLE,
        label=spec.name,
        info=spec.doc,
        elem_id="eval-candidates",
    )


def adapter_picker(config, elem_id: str) -> Callable[[FieldSpec, Any], gr.components.Component]:
    """adapter_name_or_path as a list of the finished runs under saves_dir (any other path may be typed)."""

    def make(spec: FieldSpec, value: Any) -> gr.components.Component:
        finished = [str(r.path) for r in list_runs(config.saves_dir) if r.status == "finished"]
        return gr.Dropdown(
            choices=finished,
            value=value or None,
            allow_custom_value=True,
            label=spec.name,
            info=spec.doc,
            elem_id=elem_id,
        )

    return make


def build_job_tab(
    name: str,
    cls: type[StageConfig],
    specs: list[FieldSpec],
    common: list[str],
    initial: dict[str, Any],
    config,
    L: dict[str, str],
    draw_result: Callable[[], list[gr.components.Component]],
    show_result: Callable[[Job], tuple],
    custom: dict[str, Callable[[FieldSpec, Any], gr.components.Component]] | None = None,
    command: str | None = None,
    env_keys: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The tab of job `name` (its folder, element ids), running `expertkit COMMAND YAML` (COMMAND: name if unset);
    env_keys: keys given to the job through its environment (start_stage_job)."""
    command = command or name
    job = stage_job(config.saves_dir, name)
    custom = {"adapter_name_or_path": adapter_picker(config, f"{name}-adapter_name_or_path"), **(custom or {})}
    with gr.Row():
        with gr.Column(scale=3):
            fields = build_form(specs, common, initial, L["advanced"], name, custom=custom)
            with gr.Row():
                show_yaml = gr.Button(L["show_yaml"], elem_id=f"{name}-show-yaml")
                show_cmd = gr.Button(L["show_command"], elem_id=f"{name}-show-command")
                start = gr.Button(L["start"], variant="primary", elem_id=f"{name}-start")
                stop = gr.Button(L["stop"], variant="stop", elem_id=f"{name}-stop")
            message = gr.Markdown(elem_id=f"{name}-message")
            code = gr.Code(language="yaml", interactive=False, label=L["yaml"], elem_id=f"{name}-code")
        with gr.Column(scale=2):
            status = gr.Markdown(elem_id=f"{name}-status")
            log = gr.Code(label=L["log"], interactive=False, lines=12, max_lines=12, elem_id=f"{name}-log")
    gr.Markdown(f"### {L['result']}")
    results = draw_result()
    form = FormValues(cls, specs, fields)
    timer = gr.Timer(REFRESH_S)

    def checked(values, extra_outputs: int):
        try:
            return form.checked(*values), None
        except ExpertkitError as e:
            return None, (error_text(e), *([gr.update()] * extra_outputs))

    def on_show_yaml(*values):
        ok, failed = checked(values, 1)
        return failed or ("", gr.update(value=yaml_text(command, job, ok[1]), language="yaml"))

    def on_show_command(*values):
        ok, failed = checked(values, 1)
        return failed or ("", gr.update(value=command_text(command, job, ok[1]), language="shell"))

    def on_start(*values):
        ok, failed = checked(values, 1)
        if failed:
            return failed
        try:
            start_stage_job(command, job, ok[1], env_keys)
        except ExpertkitError as e:
            return error_text(e), gr.update()
        started = L["started"].format(command=shown_command([*command.split(), str(job.config_path)]))
        return started, gr.update(value=yaml_text(command, job, ok[1]), language="yaml")

    def on_stop():
        return L["stopping"].format(grace=STOP_GRACE_S) if stop_job(job) else L["not_running"]

    def tick():
        state = job.state()
        record = job.record()
        line = f"**{L['status']}:** {L[state]}"
        if record.get("command"):
            line += f" — `{record['command']}`"
        return (line, job.tail(LOG_BYTES), *show_result(job))

    values = form.components
    show_yaml.click(on_show_yaml, values, [message, code])
    show_cmd.click(on_show_command, values, [message, code])
    start.click(on_start, values, [message, code])
    stop.click(on_stop, None, [message])
    timer.tick(tick, None, [status, log, *results])
    return {"tick": (tick, [status, log, *results]), "fields": fields, "job": job}


def build_eval_tab(config, L: dict[str, str]) -> dict[str, Any]:
    # candidates: a YAML text box; judge_api_key: a password box, shown as ***; infer_backend is LLaMA-Factory's
    # spelling of engine, for its files: the form has engine
    specs = field_specs(EvalConfig, exclude=("infer_backend",))
    initial = {
        "model_name_or_path": config.model_name_or_path,
        "template": config.template,
        "dataset_dir": config.dataset_dir,
        "output_dir": str(Path(config.saves_dir) / "eval" / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"),
    }

    def draw():
        with gr.Row():
            metrics = gr.Dataframe(label=L["metrics"], interactive=False, elem_id="eval-metrics-table")
        report = gr.HTML(elem_id="eval-report")
        return [metrics, report]

    def show(job: Job) -> tuple:
        if job.state() != "finished":
            return gr.update(), ""
        try:  # where this eval wrote: its output_dir, or (unset) the one the eval picks itself
            out = load_config(EvalConfig, job.config_path).resolved_output_dir()
        except ExpertkitError:
            return None, ""
        return metrics_table(out), report_frame(out, L)

    custom = {"candidates": candidates_box}
    return build_job_tab("eval", EvalConfig, specs, EVAL_COMMON, initial, config, L, draw, show, custom)


def metrics_table(output_dir: Path) -> pd.DataFrame | None:
    """metric x candidate, from output_dir/metrics.json (the forgetting probe's score as a last row)."""
    try:
        summary = json.loads((output_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    candidates = summary.get("candidates") or {}
    names = list(candidates)
    keys: list[str] = []
    for entry in candidates.values():
        keys += [k for k in (entry.get("metrics") or {}) if k not in keys]
    rows = [[k, *(_fmt((candidates[n].get("metrics") or {}).get(k)) for n in names)] for k in keys]
    if any("probe" in candidates[n] for n in names):
        rows.append(["probe (general)", *(_fmt((candidates[n].get("probe") or {}).get("overall")) for n in names)])
    return pd.DataFrame(rows, columns=["metric", *names])


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else ("" if value is None else str(value))


def report_frame(output_dir: Path, L: dict[str, str]) -> str:
    """report.html (self-contained: charts are data URIs) shown in a sandboxed frame, with its path."""
    report = output_dir / "report.html"
    if not report.is_file():
        return f"<p>{html.escape(str(output_dir / 'metrics.json'))}</p>"
    doc = html.escape(report.read_text(encoding="utf-8"), quote=True)
    return (
        f"<p>{L['report']}: <code>{html.escape(str(report.resolve()))}</code></p>"
        f'<iframe sandbox srcdoc="{doc}" style="width:100%;height:640px;border:1px solid #ddd" '
        'title="report.html"></iframe>'
    )


def build_export_tab(config, L: dict[str, str]) -> dict[str, Any]:
    specs = field_specs(ExportConfig)
    model = Path((config.model_name_or_path or "model").rstrip("/")).name
    initial = {
        "model_name_or_path": config.model_name_or_path,
        "template": config.template,
        "export_dir": str(Path(config.saves_dir) / model / "merged"),
    }

    def draw():
        return [gr.Markdown(elem_id="export-result")]

    def show(job: Job) -> tuple:
        if job.state() != "finished":
            return ("",)
        out = Path(str(job_values(job).get("export_dir") or ""))
        files = sorted(p for p in out.iterdir() if p.is_file()) if out.is_dir() else []
        listing = "\n".join(f"- `{p.name}` ({p.stat().st_size / 1e6:.1f} MB)" for p in files)
        return (f"{L['exported_to'].format(path=f'`{out.resolve()}`')}\n\n{listing}",)

    return build_job_tab("export", ExportConfig, specs, EXPORT_COMMON, initial, config, L, draw, show)
