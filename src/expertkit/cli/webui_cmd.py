"""`expertkit webui`: the browser UI (chat, train, evaluate, export) on 127.0.0.1:7860."""

from __future__ import annotations

import typer


def webui(
    args: list[str] = typer.Argument(
        None, help="A YAML config file and/or key=value overrides (the keys: docs/webui.md).", show_default=False
    ),
) -> None:
    """Open the web UI: chat with a model, train, evaluate and export from the browser (Gradio, port 7860).

    Example: expertkit webui model_name_or_path=saves/demo/tiny-model adapter_name_or_path=saves/demo/lora lang=zh
    """
    from expertkit.core.config import load_config, split_cli_args
    from expertkit.ui.config import WebUIConfig

    path, overrides = split_cli_args(args or [])
    config = load_config(WebUIConfig, path, overrides)
    from expertkit.ui.app import run

    run(config)
