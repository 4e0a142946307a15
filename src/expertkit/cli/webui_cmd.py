"""`expertkit webui`: the browser UI (chat, compare, train, evaluate, export, promote) on 127.0.0.1:7860; and
`expertkit webui adduser USERS.yaml NAME --role rater|trainer`, which adds an account to a users file."""

from __future__ import annotations

import sys

import typer

from expertkit.core.errors import ConfigError

ADDUSER_USAGE = "expertkit webui adduser USERS.yaml NAME [--role rater|trainer] [--password-stdin]"


def webui(
    args: list[str] = typer.Argument(
        None, help="A YAML config file and/or key=value overrides (the keys: docs/webui.md).", show_default=False
    ),
) -> None:
    """Open the web UI: chat with a model, compare answers, train, evaluate, export and promote from the browser.

    Example: expertkit webui model_name_or_path=saves/demo/tiny-model adapter_name_or_path=saves/demo/lora lang=zh

    Accounts (required when host is not 127.0.0.1): expertkit webui adduser users.yaml alice --role trainer
    (asks for the password), then expertkit webui users=users.yaml host=0.0.0.0 ...
    """
    if args and args[0] == "adduser":
        adduser(args[1:])
        return
    from expertkit.core.config import load_config, split_cli_args
    from expertkit.ui.config import WebUIConfig

    path, overrides = split_cli_args(args or [])
    config = load_config(WebUIConfig, path, overrides)
    from expertkit.ui.app import run

    run(config)


def adduser(argv: list[str]) -> None:
    """Add (or replace) an account: the password is asked twice without echo, or read from stdin's first line with
    --password-stdin (for scripts); only its scrypt hash is written."""
    from expertkit.ui.accounts import ROLES, add_user

    role, from_stdin, positional = "rater", False, []
    items = iter(argv)
    for item in items:
        if item == "--role":
            role = next(items, "")
        elif item.startswith("--role="):
            role = item.split("=", 1)[1]
        elif item == "--password-stdin":
            from_stdin = True
        elif item.startswith("-"):
            raise ConfigError(f"unknown option {item}", hint=f"usage: {ADDUSER_USAGE}")
        else:
            positional.append(item)
    if len(positional) != 2:
        raise ConfigError("adduser needs a users file and a user name", hint=f"usage: {ADDUSER_USAGE}")
    if role not in ROLES:
        raise ConfigError(f"unknown role '{role}'", hint=f"roles: {', '.join(ROLES)}")
    path, name = positional
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt(f"password for {name}", hide_input=True, confirmation_prompt=True)
    existed = add_user(path, name, password, role)  # type: ignore[arg-type]
    typer.echo(f"{'updated' if existed else 'added'} {name} ({role}) in {path}")
