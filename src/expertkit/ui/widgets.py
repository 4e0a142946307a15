"""Gradio pieces shared by the train, eval and export tabs: a config form and the buttons around a job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from expertkit.core.config import StageConfig
from expertkit.core.errors import ExpertkitError
from expertkit.ui.forms import (
    UNSET,
    FieldSpec,
    check_values,
    form_to_values,
    masked,
    values_to_args,
    values_to_yaml,
)
from expertkit.ui.jobs import Job, shown_command


def build_component(spec: FieldSpec, value: Any, elem_id: str) -> gr.components.Component:
    """One input for one config key: its name as the label, its docstring as the help under it."""
    common = {"label": spec.name, "info": spec.doc, "elem_id": elem_id}
    shown = spec.form_value(value)
    if spec.kind == "choice":
        return gr.Dropdown(choices=list(spec.choices), value=shown, **common)
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(shown), **common)
    if spec.kind == "tristate":
        return gr.Dropdown(choices=[UNSET, "true", "false"], value=shown, **common)
    if spec.kind == "secret":  # never echoed back to the page: a password box
        return gr.Textbox(value=shown, type="password", placeholder="unset", **common)
    if spec.kind == "yaml":
        return gr.Textbox(value=shown, lines=4, max_lines=20, placeholder="unset (a YAML or JSON list)", **common)
    if spec.kind in ("int", "float") and not spec.optional:  # gr.Number shows "unset" as 0: optional ones are text
        return gr.Number(value=shown, precision=0 if spec.kind == "int" else None, **common)
    return gr.Textbox(value=shown, placeholder="unset" if spec.optional else None, **common)


def build_form(
    specs: list[FieldSpec],
    common: list[str],
    initial: dict[str, Any],
    advanced_label: str,
    prefix: str,
    custom: dict[str, Callable[[FieldSpec, Any], gr.components.Component]] | None = None,
) -> dict[str, gr.components.Component]:
    """The common keys first, two per row, then every other key in an "advanced" accordion, in the class order."""
    custom = custom or {}
    by_name = {s.name: s for s in specs}
    fields: dict[str, gr.components.Component] = {}

    def make(spec: FieldSpec) -> None:
        value = initial.get(spec.name)
        maker = custom.get(spec.name)
        fields[spec.name] = maker(spec, value) if maker else build_component(spec, value, f"{prefix}-{spec.name}")

    names = [n for n in common if n in by_name]
    for i in range(0, len(names), 2):
        with gr.Row():
            for name in names[i : i + 2]:
                make(by_name[name])
    rest = [s for s in specs if s.name not in names]
    if rest:
        with gr.Accordion(advanced_label, open=False, elem_id=f"{prefix}-advanced"):
            for i in range(0, len(rest), 3):
                with gr.Row():
                    for spec in rest[i : i + 3]:
                        make(spec)
    return fields


class FormValues:
    """Turns the positional values of a form's components back into the config's keys."""

    def __init__(self, cls: type[StageConfig], specs: list[FieldSpec], fields: dict[str, gr.components.Component]):
        self.cls = cls
        self.specs = specs
        self.names = list(fields)
        self.components = list(fields.values())

    def values(self, *form: Any) -> dict[str, Any]:
        """The keys a user would write (required ones and those changed from the defaults)."""
        return form_to_values(self.specs, dict(zip(self.names, form)))

    def checked(self, *form: Any, **extra: Any) -> tuple[StageConfig, dict[str, Any]]:
        """(config, values): validated by the config class; an ExpertkitError lists every problem."""
        values = {**self.values(*form), **extra}
        return check_values(self.cls, values), values


def yaml_text(command: str, job: Job, values: dict[str, Any], reveal: bool = False) -> str:
    """The job's YAML; API keys masked as *** unless reveal (the file the job itself reads)."""
    again = shown_command([*command.split(), str(job.config_path)])  # command: "eval", or "data clean"
    header = f"# written by expertkit webui; run it again with: {again}"
    return values_to_yaml(values if reveal else masked(values), header)


def command_text(command: str, job: Job, values: dict[str, Any]) -> str:
    """Both ways to repeat the job from a terminal: the YAML the UI writes, or everything on the command line
    (API keys masked as ***)."""
    words = command.split()
    return f"{shown_command([*words, str(job.config_path)])}\n\n# or, without the file:\n" + shown_command(
        [*words, *values_to_args(masked(values))]
    )


def error_text(e: Exception) -> str:
    """An ExpertkitError as the page shows it (a code block keeps the problem list's lines)."""
    return f"```\nerror: {e}\n```" if isinstance(e, ExpertkitError) else f"```\nerror: {e!r}\n```"
