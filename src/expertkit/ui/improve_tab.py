"""The Promote tab (trainer role): the A/B statistics of the served aliases, and promote / roll back buttons.

The table is `expertkit feedback stats --json` run as a process (the same figures as in a terminal); the buttons run
`expertkit promote ...` and `expertkit promote --rollback ...` as background jobs in saves_dir/webui_jobs/promote/,
whose log the tab shows. The gate refusing a candidate (exit code 3) is shown as refused, not as a failure.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import yaml

from expertkit.core.errors import ExpertkitError
from expertkit.ui.jobs import Job, expertkit_command, shown_command, start_job
from expertkit.ui.runs import list_runs
from expertkit.ui.widgets import error_text

STATS_TIMEOUT_S = 120
REFRESH_S = 2.0
LOG_BYTES = 12_000
REFUSED = 3  # `expertkit promote`'s exit code when the gate refuses the candidate


def stats_args(feedback_db: str | None, alias: str | None = None) -> list[str]:
    args = ["feedback", "stats", "--json"]
    if feedback_db:
        args.append(f"feedback_db={feedback_db}")
    if alias:
        args.append(f"alias={alias}")
    return args


def load_stats(feedback_db: str | None, alias: str | None = None) -> dict[str, Any]:
    """The JSON of `expertkit feedback stats --json`; an ExpertkitError with the command's own message if it fails."""
    args = stats_args(feedback_db, alias)
    try:
        r = subprocess.run(expertkit_command(args), capture_output=True, text=True, timeout=STATS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ExpertkitError(f"`{shown_command(args)}` did not answer in {STATS_TIMEOUT_S} s") from None
    if r.returncode != 0:
        message = (r.stderr or r.stdout).strip().removeprefix("error: ")
        raise ExpertkitError(f"`{shown_command(args)}` failed: {message or f'exit code {r.returncode}'}")
    try:
        data = json.loads(r.stdout)
    except ValueError:
        raise ExpertkitError(f"`{shown_command(args)}` printed no JSON: {r.stdout[:300]}") from None
    if not isinstance(data, dict):
        raise ExpertkitError(f"`{shown_command(args)}` printed {type(data).__name__}, not a JSON object")
    return data


def _rate(value: Any, ci: Any) -> str:
    if not isinstance(value, (int, float)):
        return ""
    text = f"{value:.0%}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
        text += f" [{ci[0]:.0%}, {ci[1]:.0%}]"
    return text


STATS_COLUMNS = ["alias", "arm", "requests", "rated", "thumbs up (95% CI)", "edited (95% CI)", "turns"]


def stats_table(data: dict[str, Any]) -> pd.DataFrame:
    """One row per alias and arm: requests, rated answers, thumbs-up and edit rates with their Wilson intervals."""
    rows = []
    for entry in data.get("aliases") or []:
        for arm in entry.get("arms") or []:
            turns = arm.get("turns")
            rows.append([
                entry.get("alias") or "", arm.get("arm") or "", arm.get("requests"), arm.get("rated"),
                _rate(arm.get("thumbs_up_rate"), arm.get("thumbs_up_ci")),
                _rate(arm.get("edit_rate"), arm.get("edit_rate_ci")),
                f"{turns:.2f}" if isinstance(turns, (int, float)) else "",
            ])  # fmt: skip
    return pd.DataFrame(rows, columns=STATS_COLUMNS)


def stats_verdicts(data: dict[str, Any], L: dict[str, str]) -> str:
    """A line per alias: the two-proportion test between its two busiest arms, in words."""
    lines = []
    for entry in data.get("aliases") or []:
        alias, test = entry.get("alias") or "", entry.get("test")
        if not test:
            lines.append(L["ab_no_test"].format(alias=alias))
            continue
        arms = test.get("arms") or ["?", "?"]
        diff, p = test.get("difference"), test.get("p_value")
        common = {
            "alias": alias, "a": arms[0], "b": arms[-1], "metric": test.get("metric", ""),
            "diff": f"{diff:+.1%}" if isinstance(diff, (int, float)) else "?",
            "p": f"{p:.3g}" if isinstance(p, (int, float)) else "?",
        }  # fmt: skip
        if test.get("significant"):
            lines.append(L["ab_significant"].format(**common))
        else:
            lines.append(L["ab_not_yet"].format(n=test.get("ratings_needed", "?"), **common))
    if not lines:
        lines.append(L["ab_empty"])
    return "\n".join(f"- {line}" for line in lines) + f"\n\n`{data.get('feedback_db', '')}`"


def promote_job(saves_dir: str) -> Job:
    return Job(Path(saves_dir) / "webui_jobs" / "promote", "promote")


def promote_args(candidate: str, alias: str, models: str, eval_file: str, canary: str) -> list[str]:
    missing = [k for k, v in (("candidate", candidate), ("alias", alias), ("models", models), ("eval", eval_file))
               if not (v or "").strip()]  # fmt: skip
    if missing:
        raise ExpertkitError(f"fill in {', '.join(missing)} first")
    args = ["promote", f"candidate={candidate}", f"alias={alias}", f"models={models}", f"eval={eval_file}"]
    return [*args, f"canary={canary}"] if (canary or "").strip() else args


def rollback_args(alias: str, models: str) -> list[str]:
    if not (alias or "").strip() or not (models or "").strip():
        raise ExpertkitError("fill in alias and models first")
    return ["promote", "--rollback", f"alias={alias}", f"models={models}"]


def start_promote(job: Job, args: list[str]) -> None:
    """Start `expertkit promote ...` as a job; its YAML file records the keys it was started with."""
    keys = dict(a.split("=", 1) for a in args if "=" in a)
    header = f"# written by expertkit webui; the job ran: {shown_command(args)}\n"
    start_job(job, args, header + yaml.safe_dump({**keys, "rollback": "--rollback" in args}, sort_keys=False))


def job_status(job: Job, L: dict[str, str]) -> str:
    """The job's state in words; exit code 3 is the gate saying no."""
    record = job.record()
    state = job.state()
    word = L["refused"] if state == "failed" and record.get("returncode") == REFUSED else L[state]
    line = f"**{L['status']}:** {word}"
    return line + (f" — `{record['command']}`" if record.get("command") else "")


def build_promote_tab(config, L: dict[str, str]) -> dict[str, Any]:
    """Draw the tab inside the current Blocks; returns the loaders the page runs when it opens."""
    job = promote_job(config.saves_dir)
    gr.Markdown(f"### {L['ab_stats']}")
    with gr.Row():
        stats_alias = gr.Textbox(label="alias", placeholder=L["ab_all_aliases"], scale=3, elem_id="ab-alias")
        refresh = gr.Button(L["refresh"], scale=1, elem_id="ab-refresh")
    table = gr.Dataframe(headers=STATS_COLUMNS, interactive=False, elem_id="ab-table")
    verdicts = gr.Markdown(elem_id="ab-verdicts")

    gr.Markdown(f"### {L['promote_title']}\n{L['promote_hint']}")
    with gr.Row():
        candidate = gr.Dropdown(label="candidate", choices=[], allow_custom_value=True, elem_id="promote-candidate")
        alias = gr.Textbox(label="alias", elem_id="promote-alias")
        models = gr.Textbox(label="models", value=config.models or "", elem_id="promote-models")
    with gr.Row():
        eval_file = gr.Textbox(label="eval", placeholder="eval.yaml", elem_id="promote-eval")
        canary = gr.Textbox(label="canary", placeholder=L["promote_canary"], elem_id="promote-canary")
    with gr.Row():
        promote = gr.Button(L["promote"], variant="primary", elem_id="promote-start")
        rollback = gr.Button(L["rollback"], variant="stop", elem_id="promote-rollback")
    message = gr.Markdown(elem_id="promote-message")
    status = gr.Markdown(elem_id="promote-status")
    log = gr.Code(label=L["log"], interactive=False, lines=12, max_lines=12, elem_id="promote-log")

    def on_refresh(alias_name):
        try:
            data = load_stats(config.feedback_db, (alias_name or "").strip() or None)
        except ExpertkitError as e:
            return pd.DataFrame(columns=STATS_COLUMNS), error_text(e)
        return stats_table(data), stats_verdicts(data, L)

    def run(args_of, *values):
        try:
            args = args_of(*values)
            start_promote(job, args)
        except ExpertkitError as e:
            return error_text(e)
        return L["started"].format(command=shown_command(args))

    def runs():
        return gr.update(choices=[str(r.path) for r in list_runs(config.saves_dir) if r.status == "finished"])

    refresh.click(on_refresh, [stats_alias], [table, verdicts])
    promote.click(lambda *v: run(promote_args, *v), [candidate, alias, models, eval_file, canary], [message])
    rollback.click(lambda *v: run(rollback_args, *v), [alias, models], [message])
    gr.Timer(REFRESH_S).tick(lambda: (job_status(job, L), job.tail(LOG_BYTES)), None, [status, log])
    return {"load": [(lambda: on_refresh(""), [table, verdicts]), (runs, [candidate])]}
