"""`expertkit feedback ...`: the conversations and feedback that the web UI and `expertkit serve
store_conversations=true` keep, turned into the next training round's data, and the A/B statistics of what is served.

    expertkit feedback export                                  # liked + edited answers -> feedback.jsonl
    expertkit feedback export output=data/round2.jsonl only=edited feedback_db=/srv/expertkit/feedback.sqlite
    expertkit feedback export format=dpo output=data/round2_dpo.json since=last alias=expert
    expertkit feedback stats alias=expert --json
"""

from __future__ import annotations

from pathlib import Path

import typer

from expertkit.core.errors import ExpertkitError

EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": ["-h", "--help"]}
ARGS_HELP = (
    "A YAML config file and/or key=value overrides: feedback_db, format (sft, dpo, kto), output, only, since, alias, "
    "arm, model, rater, dedup, with_context, with_reasoning, cutoff_len, model_name_or_path, template."
)

WHICH = {
    "good": "liked or edited answers",
    "edited": "edited answers",
    "all": "every answer",
}
ROWS = {"dpo": "preference pairs", "kto": "rated answers (kto rows)"}

feedback_app = typer.Typer(
    no_args_is_help=True,
    help="The chats and feedback the web UI and the server keep: export them for training, compare A/B arms.",
)


def store_path(feedback_db: str | None) -> Path:
    from expertkit.core.feedback import default_feedback_db

    db = Path(feedback_db).expanduser() if feedback_db else default_feedback_db()
    if not db.is_file():
        raise ExpertkitError(
            f"no feedback store at {db}",
            hint="chat and rate answers in `expertkit webui`, or serve with store_conversations=true; "
            "or point feedback_db=FILE at the store",
        )
    return db


@feedback_app.command("export", context_settings=EXTRA_ARGS)
def export(args: list[str] = typer.Argument(None, help=ARGS_HELP, show_default=False)) -> None:
    """Write the rated answers as training data for the next round: sft (the default), dpo pairs or kto rows,
    with their dataset_info.json entry beside the file.

    sft: an edited answer replaces the original; a thumbs down without an edit is left out (only=good, the default).
    dpo: chosen / rejected from edits, arena votes, and a liked vs a disliked answer to the same prompt.
    kto: every rated answer with kto_tag true (liked, or an edit) or false (disliked, or the original of an edit).

    Example: expertkit feedback export format=dpo output=data/round2_dpo.json since=last
    """
    import shlex

    from expertkit.core.config import load_config, split_cli_args
    from expertkit.core.feedback import FeedbackExportConfig, FeedbackStore
    from expertkit.improve.feedback_data import collect, narrowed, write_export

    path, overrides = split_cli_args(args or [])
    config = load_config(FeedbackExportConfig, path, overrides)
    db = store_path(config.feedback_db)
    rows, result = collect(config, db)
    store = FeedbackStore(db)
    try:
        counts = store.counts()
    finally:
        store.close()
    summary = (
        f"{counts['conversations']} conversation(s), {counts['up']} liked, {counts['down']} disliked, "
        f"{counts['edited']} edited answer(s)"
    )
    if config.format == "sft" and not rows and not narrowed(config):
        raise ExpertkitError(
            f"no {WHICH[config.only]} to export from {db} ({summary})",
            hint="rate or edit answers first (thumbs up / down, the pencil; POST /v1/feedback), or use only=all",
        )
    write_export(rows, config, db, result)
    what = WHICH[config.only] if config.format == "sft" else ROWS[config.format]
    left = sum(result.left_out.values())
    left_out = f"; {left} left out" if left else ""
    since = f" since {result.since}" if result.since else (" (no earlier export: everything)" if config.since else "")
    typer.echo(f"{len(rows)} {what}{since} from {db} -> {result.path}{left_out}")
    for reason, n in sorted(result.left_out.items(), key=lambda kv: -kv[1]):
        typer.echo(f"  left out: {n} {reason}")
    for note, n in sorted(result.notes.items()):
        typer.echo(f"  no pair: {n} {note}")
    typer.echo(f"the store holds {summary}")
    typer.echo(f"registered as dataset '{result.dataset_name}' in {result.path.parent / 'dataset_info.json'}")
    stage = "" if config.format == "sft" else f" stage={config.format}"
    dataset = f"dataset={shlex.quote(result.dataset_name)} dataset_dir={shlex.quote(str(result.path.parent))}"
    typer.echo(f"check it:    expertkit data check model_name_or_path=MODEL {dataset}{stage}")
    typer.echo(f"train on it: expertkit train model_name_or_path=MODEL {dataset}{stage} output_dir=saves/round2")


@feedback_app.command("stats", context_settings=EXTRA_ARGS)
def stats(
    args: list[str] = typer.Argument(None, help="key=value overrides: alias, feedback_db.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (for scripts and the web UI)."),
) -> None:
    """Per alias and A/B arm: requests, rated answers, thumbs-up and edit rates with Wilson 95% intervals, turns per
    conversation, and a two-proportion z-test between the two busiest arms.

    Example: expertkit feedback stats alias=expert
    """
    import json

    from expertkit.core.config import load_config, split_cli_args
    from expertkit.core.feedback_config import FeedbackStatsConfig
    from expertkit.improve.stats import collect_stats, format_stats

    path, overrides = split_cli_args(args or [])
    config = load_config(FeedbackStatsConfig, path, overrides)
    report = collect_stats(store_path(config.feedback_db), config.alias)
    typer.echo(json.dumps(report, ensure_ascii=False) if as_json else format_stats(report))
