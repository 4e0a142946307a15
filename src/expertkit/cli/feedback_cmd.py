"""`expertkit feedback ...`: the conversations and feedback that the web UI and `expertkit serve
store_conversations=true` keep, turned into the next training round's data.

    expertkit feedback export                                  # liked + edited answers -> feedback.jsonl
    expertkit feedback export output=data/round2.jsonl only=edited feedback_db=/srv/expertkit/feedback.sqlite
"""

from __future__ import annotations

import typer

from expertkit.core.errors import ExpertkitError

EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": ["-h", "--help"]}
ARGS_HELP = "A YAML config file and/or key=value overrides: feedback_db, output, only (good, edited, all)."

WHICH = {
    "good": "liked or edited answers",
    "edited": "edited answers",
    "all": "every answer",
}

feedback_app = typer.Typer(
    no_args_is_help=True, help="The chats and feedback the web UI and the server keep: export them for training."
)


@feedback_app.command("export", context_settings=EXTRA_ARGS)
def export(args: list[str] = typer.Argument(None, help=ARGS_HELP, show_default=False)) -> None:
    """Write the rated answers as a training file (OpenAI `messages` JSONL) for the next round.

    An edited answer replaces the original; a thumbs down without an edit is left out (only=good, the default).

    Example: expertkit feedback export output=data/round2.jsonl only=edited
    """
    import shlex
    from pathlib import Path

    from expertkit.core.config import load_config, split_cli_args
    from expertkit.core.feedback import FeedbackExportConfig, FeedbackStore, default_feedback_db, write_jsonl

    path, overrides = split_cli_args(args or [])
    config = load_config(FeedbackExportConfig, path, overrides)
    db = Path(config.feedback_db).expanduser() if config.feedback_db else default_feedback_db()
    if not db.is_file():
        raise ExpertkitError(
            f"no feedback store at {db}",
            hint="chat and rate answers in `expertkit webui`, or serve with store_conversations=true; "
            "or point feedback_db=FILE at the store",
        )
    store = FeedbackStore(db)
    try:
        skipped: list[str] = []
        rows = list(store.training_rows(only=config.only, with_reasoning=config.with_reasoning, skipped=skipped))
        counts = store.counts()
    finally:
        store.close()
    summary = (
        f"{counts['conversations']} conversation(s), {counts['up']} liked, {counts['down']} disliked, "
        f"{counts['edited']} edited answer(s)"
    )
    if not rows:
        raise ExpertkitError(
            f"no {WHICH[config.only]} to export from {db} ({summary})",
            hint="rate or edit answers first (thumbs up / down, the pencil; POST /v1/feedback), or use only=all",
        )
    write_jsonl(config.output, rows)
    left_out = f"; {len(skipped)} left out: an empty answer, or turns that do not alternate" if skipped else ""
    dataset = shlex.quote(config.output)
    typer.echo(f"{len(rows)} {WHICH[config.only]} from {db} -> {config.output}{left_out}")
    typer.echo(f"the store holds {summary}")
    typer.echo(f"check it:    expertkit data check model_name_or_path=MODEL dataset={dataset}")
    typer.echo(f"train on it: expertkit train model_name_or_path=MODEL dataset={dataset} output_dir=saves/round2")
