"""`expertkit promote` (the gate, canary, rollback) and `expertkit improve` (one round of the loop as one command).

    expertkit promote candidate=saves/round2 alias=expert models=models.yaml eval=eval.yaml [canary=0.1]
    expertkit promote --rollback alias=expert models=models.yaml
    expertkit improve improve.yaml

Exit codes: 0 promoted (or rolled back, or a round that stopped early), 3 refused by the gate, 1 an error.
"""

from __future__ import annotations

import typer

from expertkit.core.config import StageConfig
from expertkit.improve.config import ImproveConfig, PromoteConfig

EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": ["-h", "--help"]}


def keys_help(cls: type[StageConfig], skip: tuple[str, ...] = ()) -> str:
    """The keys of a config, one line each (name, default, first sentence), for --help."""
    lines = ["\b", "Keys (key=value, or in the YAML):"]
    for name, f in cls.model_fields.items():
        if name in skip:
            continue
        default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
        first = " ".join((f.description or "").split()).split(". ")[0].rstrip(".")
        lines.append(f"  {name} ({default}): {first}")
    return "\n".join(lines)


PROMOTE_ARGS = "key=value keys (listed below); --rollback"


def promote(args: list[str] = typer.Argument(None, help=PROMOTE_ARGS, show_default=False)) -> None:
    from expertkit.core.config import load_config, split_cli_args
    from expertkit.improve.promote import run

    # a bare --rollback is a flag (split_cli_args would read the next key=value as its value)
    args = ["rollback=true" if a == "--rollback" else a for a in args or []]
    path, overrides = split_cli_args(args)
    config = load_config(PromoteConfig, path, overrides)
    result = run(config)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


promote.__doc__ = (
    "The gate: promote a training run into an alias only when `expertkit eval` finds it not worse.\n\n"
    "Evaluates the candidate against what the alias serves and, when it passes, points the alias at it in the models "
    "file (canary=0.1: an A/B arm instead); --rollback undoes the alias's last promotion. Exit 0 promoted, 3 "
    "refused, 1 error.\n\n"
    "Example: expertkit promote candidate=saves/round2 alias=expert models=models.yaml eval=eval.yaml\n\n"
    + keys_help(PromoteConfig)
)


def improve(args: list[str] = typer.Argument(None, help="improve.yaml and/or key=value keys", show_default=False)):
    from expertkit.core.config import load_config, split_cli_args
    from expertkit.improve.round import run

    path, overrides = split_cli_args(list(args or []))
    config = load_config(ImproveConfig, path, overrides)
    result = run(config)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


improve.__doc__ = (
    "One round of the loop as one command: feedback -> training -> the gate -> promote (resumable).\n\n"
    "Exports the feedback since the last round, trains on top of the served adapter (with replay of earlier data), "
    "and promotes through the gate (or as a canary). Run it again to continue a stopped round. Exit 0 promoted (or "
    "too little feedback), 3 refused, 1 error.\n\n"
    "Example: expertkit improve examples/improve/improve.yaml\n\n" + keys_help(ImproveConfig)
)
