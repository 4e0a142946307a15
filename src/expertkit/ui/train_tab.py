"""The train tab: TrainConfig as a form, a dataset picker with a preview and token lengths, start / stop / resume,
runs and progress (the loss, and eval_loss when the run evaluates).

A run's state is read from its folder on every refresh (see `expertkit.ui.runs`), never kept in the page.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from expertkit.core.config import load_config
from expertkit.core.errors import ExpertkitError
from expertkit.core.runs import RESOLVED_CONFIG
from expertkit.train.config import TrainConfig
from expertkit.ui.datasets import check_failure, dataset_names, parse_lengths, preview_rows, rows_table
from expertkit.ui.forms import field_specs, form_to_values, values_to_args
from expertkit.ui.jobs import STOP_GRACE_S, expertkit_command, shown_command, start_job, stop_job
from expertkit.ui.runs import FINISHED_MARKER, list_runs, read_progress, run_status, train_job
from expertkit.ui.widgets import FormValues, build_form, command_text, error_text, yaml_text

COMMON = [
    "model_name_or_path",
    "template",
    "dataset",
    "dataset_dir",
    "stage",
    "finetuning_type",
    "output_dir",
    "lora_rank",
    "lora_alpha",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "cutoff_len",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
]
REFRESH_S = 2.0
LOG_BYTES = 12_000
LOSS_SERIES = ("loss", "eval_loss")
REWARD_SERIES = ("rewards/accuracies", "rewards/margins")  # stage dpo / kto: plotted beside the loss
CHECK_TIMEOUT_S = 900  # `Check data`
LENGTHS_TIMEOUT_S = 300  # the token lengths measured when a dataset is picked


def fresh_output_dir(saves_dir: str, model: str | None) -> str:
    """saves/<model>/lora/train-YYYYmmdd-HHMMSS: a new folder per page load, as LLaMA-Factory's UI does."""
    name = Path((model or "model").rstrip("/")).name or "model"
    return str(Path(saves_dir) / name / "lora" / f"train-{time.strftime('%Y%m%d-%H%M%S')}")


def build_train_tab(config, L: dict[str, str]) -> dict[str, Any]:
    specs = field_specs(TrainConfig)
    initial = {
        "model_name_or_path": config.model_name_or_path or "",
        "template": config.template,
        "dataset_dir": config.dataset_dir,
        "output_dir": fresh_output_dir(config.saves_dir, config.model_name_or_path),
    }

    def dataset_picker(spec, value):
        names = dataset_names(config.dataset_dir)
        return gr.Dropdown(
            choices=names,
            value=[],
            multiselect=True,
            allow_custom_value=True,
            label=spec.name,
            info=spec.doc,
            elem_id="train-dataset",
        )

    with gr.Row():
        with gr.Column(scale=3):
            fields = build_form(specs, COMMON, initial, L["advanced"], "train", custom={"dataset": dataset_picker})
            lengths = gr.Markdown(elem_id="train-lengths")
            with gr.Accordion(L["dataset_preview"], open=False, elem_id="train-preview-box"):
                preview_note = gr.Markdown()
                preview = gr.Dataframe(interactive=False, wrap=True, elem_id="train-preview")
                check = gr.Button(L["check_data"], size="sm")
            with gr.Row():
                show_yaml = gr.Button(L["show_yaml"], elem_id="train-show-yaml")
                show_cmd = gr.Button(L["show_command"], elem_id="train-show-command")
                start = gr.Button(L["start"], variant="primary", elem_id="train-start")
            message = gr.Markdown(elem_id="train-message")
            code = gr.Code(language="yaml", interactive=False, elem_id="train-code", label=L["yaml"])
        with gr.Column(scale=2):
            gr.Markdown(f"### {L['runs']}")
            runs_table = gr.Dataframe(
                headers=["run", "status", "step", "loss"], interactive=False, elem_id="train-runs", wrap=True
            )
            with gr.Row():
                run = gr.Dropdown(label=L["run"], choices=[], allow_custom_value=True, elem_id="train-run", scale=4)
                refresh = gr.Button(L["runs_refresh"], size="sm", scale=1)
            with gr.Row():
                stop = gr.Button(L["stop"], variant="stop", elem_id="train-stop")
                resume = gr.Button(L["resume"], elem_id="train-resume")
            progress = gr.Markdown(L["no_run"], elem_id="train-progress")
            plot = gr.LinePlot(
                None,  # not an empty frame: a plot first drawn without data draws no lines later (Gradio 6)
                x="step",
                y="loss",
                color="series",
                label=L["loss"],
                elem_id="train-loss-plot",
                # no fixed height: with one, Gradio 6 cuts the legend (loss, eval_loss) off below the plot
            )
            log = gr.Code(label=L["log"], interactive=False, elem_id="train-log", lines=12, max_lines=12)
    plotted = gr.State(-1)
    timer = gr.Timer(REFRESH_S)
    form = FormValues(TrainConfig, specs, fields)

    def preview_dataset(dataset_dir, names):
        if not names:
            return "", None
        rows, note = preview_rows(dataset_dir or ".", names[0])
        headers, cells = rows_table(rows)
        return note, pd.DataFrame(cells, columns=headers) if rows else None

    def run_data_check(values: dict[str, Any], timeout: float) -> str:
        args = ["data", "check", *values_to_args(values)]
        try:
            r = subprocess.run(expertkit_command(args), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"error: `expertkit data check` took more than {timeout / 60:.0f} minutes"
        return (r.stdout + r.stderr).strip()

    def check_data(*values):
        try:
            _, vals = form.checked(*values)
        except ExpertkitError as e:
            return error_text(e), gr.update()
        report = run_data_check(vals, CHECK_TIMEOUT_S)
        return f"`{shown_command(['data', 'check', *values_to_args(vals)])}`", gr.update(
            value=report, label="data check"
        )

    def token_lengths(*values) -> str:
        """p50 / p90 / p99 / max tokens of the picked data against cutoff_len, from `expertkit data check`."""
        if not dict(zip(form.names, values)).get("model_name_or_path"):
            return L["lengths_need_model"]
        try:
            _, vals = form.checked(*values)
        except ExpertkitError as e:
            return L["lengths_failed"].format(reason=str(e).replace("\n", " "))
        return lengths_text(run_data_check(vals, LENGTHS_TIMEOUT_S), L)

    def on_pick(*values):
        named = dict(zip(form.names, values))
        note, table = preview_dataset(named["dataset_dir"], named["dataset"])
        if not named["dataset"]:
            yield note, table, ""
            return
        yield note, table, L["lengths_measuring"]
        yield note, table, token_lengths(*values)

    def shown(render, language: str):
        """A handler showing the form as `render` (YAML or the command) writes it, or the form's errors."""

        def show(*values):
            try:
                cfg, vals = form.checked(*values)
            except ExpertkitError as e:
                return error_text(e), gr.update()
            return "", gr.update(value=render("train", train_job(cfg.output_dir), vals), language=language)

        return show

    on_show_yaml, on_show_command = shown(yaml_text, "yaml"), shown(command_text, "shell")

    def on_start(*values):
        try:
            cfg, vals = form.checked(*values)
            refuse_existing(cfg)
            job = train_job(cfg.output_dir)
            start_job(job, ["train", str(job.config_path)], yaml_text("train", job, vals, reveal=True))
        except ExpertkitError as e:
            return error_text(e), gr.update(), gr.update()
        text = L["started"].format(command=shown_command(["train", str(job.config_path)]))
        return text, gr.update(value=yaml_text("train", job, vals), language="yaml"), runs_choices(cfg.output_dir)

    def on_stop(selected):
        if not selected or not stop_job(train_job(selected)):
            return L["not_running"]
        return L["stopping"].format(grace=STOP_GRACE_S)

    def on_resume(selected):
        try:
            job = resume_run(selected)
        except ExpertkitError as e:
            return error_text(e)
        return L["started"].format(command=shown_command(["train", str(job.config_path)]))

    def runs_choices(selected=None):
        runs = list_runs(config.saves_dir)
        choices = [str(r.path) for r in runs]
        if selected is None:
            running = [str(r.path) for r in runs if r.status == "running"]
            selected = (running or choices or [None])[0]
        return gr.update(choices=choices, value=selected)

    def tick(selected, last_plotted):
        runs = list_runs(config.saves_dir)
        table = pd.DataFrame(
            [[str(r.path), L[r.status], f"{r.progress.step}/{r.progress.total}", _loss(r.progress.loss)] for r in runs],
            columns=["run", "status", "step", "loss"],
        )
        if not selected:
            return table, L["no_run"], gr.update(), "", last_plotted
        folder = Path(selected)
        p = read_progress(folder)
        status = L[run_status(folder)]
        line = L["progress_line"].format(
            status=status,
            step=p.step,
            total=p.total or "?",
            percent=p.percent,
            loss=_loss(p.loss),
            elapsed=p.elapsed or "-",
            remaining=p.remaining or "-",
        )
        signature = hash((selected, len(p.points)))
        plot_update = gr.update() if signature == last_plotted else loss_points(p)
        return table, line, plot_update, train_job(folder).tail(LOG_BYTES), signature

    values = form.components
    names = fields["dataset"]
    names.change(on_pick, values, [preview_note, preview, lengths])
    fields["dataset_dir"].change(lambda d: gr.update(choices=dataset_names(d or ".")), [fields["dataset_dir"]], [names])
    check.click(check_data, values, [preview_note, code])
    show_yaml.click(on_show_yaml, values, [message, code])
    show_cmd.click(on_show_command, values, [message, code])
    start.click(on_start, values, [message, code, run])
    stop.click(on_stop, [run], [message])
    resume.click(on_resume, [run], [message])
    refresh.click(runs_choices, None, [run])
    tick_io = ([run, plotted], [runs_table, progress, plot, log, plotted])
    timer.tick(tick, *tick_io)
    run.change(tick, *tick_io)
    return {
        "runs": (runs_choices, [run]),
        "output_dir": (lambda: fresh_output_dir(config.saves_dir, config.model_name_or_path), fields["output_dir"]),
        "dataset": (fields["dataset"], fields["dataset_dir"]),
    }


def lengths_text(report: str, L: dict[str, str]) -> str:
    """The token-length line under the dataset picker, from an `expertkit data check` report."""
    summary = parse_lengths(report)
    if summary is None:
        return L["lengths_failed"].format(reason=check_failure(report))
    stats = summary.percentiles
    verdict = (
        L["lengths_cut"].format(cut=summary.cut, lost=summary.no_answer_left, max=stats.get("max", "?"))
        if summary.cut
        else L["lengths_fit"]
    )
    return L["lengths"].format(
        n=summary.valid,
        stats=" · ".join(f"{k} {v}" for k, v in stats.items()),
        cutoff_len=summary.cutoff_len,
        verdict=verdict,
    )


def loss_points(progress) -> pd.DataFrame:
    """The plot's lines: the training loss and eval_loss (when the run evaluates: val_size, eval_strategy), and a
    preference run's reward accuracy and margin.

    A series without points yet gets one empty (NaN) point, which draws nothing: Gradio fixes a plot's series when it
    first draws it, so both must be there from the start for eval_loss to appear once the first evaluation ran."""
    first = min((pt["step"] for pt in progress.points), default=0)
    rows = []
    for series in LOSS_SERIES + REWARD_SERIES:
        points = [(pt["step"], pt["loss"], series) for pt in progress.points if pt["series"] == series]
        if series in LOSS_SERIES or points:  # a preference run logs its rewards from the first step on
            rows += points or [(first, float("nan"), series)]
    frame = pd.DataFrame(rows, columns=["step", "loss", "series"])
    return frame.astype({"step": "int64", "loss": "float64", "series": "str"})


def _loss(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


def refuse_existing(config: TrainConfig) -> None:
    """What `expertkit train` would refuse, said before a process starts: a finished run or checkpoints there."""
    out = Path(config.output_dir)
    if config.resume_from_checkpoint or config.overwrite_output_dir or not out.is_dir():
        return
    if (out / FINISHED_MARKER).is_file() or any(out.glob("checkpoint-*")):
        raise ExpertkitError(
            f"output_dir '{out}' already holds a run",
            hint="choose another output_dir, select the run on the right and press Resume, "
            "or set overwrite_output_dir (advanced)",
        )


def resume_run(folder: str | None):
    """Start the run in `folder` again from its newest complete checkpoint, with the config it was started with."""
    if not folder:
        raise ExpertkitError("no run selected", hint="pick one in the runs list")
    job = train_job(folder)
    resolved = Path(folder) / RESOLVED_CONFIG
    if not resolved.is_file():
        raise ExpertkitError(f"'{folder}' has no {RESOLVED_CONFIG}: it never started training", hint="start it anew")
    config = load_config(TrainConfig, resolved, {"resume_from_checkpoint": True})
    specs = field_specs(TrainConfig)
    values = form_to_values(specs, {s.name: s.form_value(getattr(config, s.name)) for s in specs})
    start_job(job, ["train", str(job.config_path)], yaml_text("train", job, values, reveal=True))
    return job
