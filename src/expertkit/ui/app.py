"""`expertkit webui`: build the Gradio page and serve it; start `expertkit serve` for the chat tab when asked.

    expertkit webui model_name_or_path=saves/demo/tiny-model adapter_name_or_path=saves/demo/lora
    expertkit webui server_url=http://127.0.0.1:8000/v1 lang=zh

Gradio's telemetry, version check and share links are off: the page and everything it loads come from this
machine.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time

from expertkit.core.errors import ExpertkitError
from expertkit.core.feedback import FeedbackStore, default_feedback_db
from expertkit.core.optional import import_optional
from expertkit.ui.config import WebUIConfig
from expertkit.ui.labels import labels

logger = logging.getLogger(__name__)

SERVER_WAIT_S = 2.0  # how often the chat tab asks a starting server for its models


def build_app(config: WebUIConfig, server_url: str | None = None):
    """The page (a gr.Blocks): chat, train, evaluate and export tabs in config.lang."""
    import gradio as gr

    from expertkit.ui.chat import Chat, build_chat_tab
    from expertkit.ui.client import ChatClient
    from expertkit.ui.stage_tabs import build_eval_tab, build_export_tab
    from expertkit.ui.train_tab import build_train_tab

    L = labels(config.lang)
    url = server_url or config.server_url
    client = ChatClient(url, api_key=config.api_key) if url else None
    chat = Chat(client, FeedbackStore(config.feedback_db or default_feedback_db()), L)

    def models(current=None):
        if client is None:
            return gr.update(choices=[], value=None), L["no_server"], gr.Timer(active=False)
        try:
            names = client.models()
        except ExpertkitError:
            return gr.update(), L["server_waiting"].format(url=client.base_url), gr.Timer(active=True)
        value = current if current in names else (names[0] if names else None)
        ready = L["server_ready"].format(n=len(names), url=client.base_url)
        return gr.update(choices=names, value=value), ready, gr.Timer(active=not names)

    with gr.Blocks(title="expertkit", analytics_enabled=False) as demo:
        gr.Markdown(f"## {L['title']}\n{L['subtitle']}")
        with gr.Tabs():
            with gr.Tab(L["chat"], id="chat", elem_id="tab-chat"):
                chat_parts = build_chat_tab(chat, lambda: models()[:2], config, L)
            with gr.Tab(L["train"], id="train", elem_id="tab-train"):
                train_parts = build_train_tab(config, L)
            with gr.Tab(L["eval"], id="eval", elem_id="tab-eval"):
                build_eval_tab(config, L)
            with gr.Tab(L["export"], id="export", elem_id="tab-export"):
                build_export_tab(config, L)
        wait = gr.Timer(SERVER_WAIT_S)
        model, server = chat_parts["model"], chat_parts["server"]
        wait.tick(models, [model], [model, server, wait])
        demo.load(models, [model], [model, server, wait])
        runs_fn, runs_out = train_parts["runs"]
        demo.load(runs_fn, None, runs_out)
        fresh_dir, output_dir = train_parts["output_dir"]
        demo.load(fresh_dir, None, [output_dir])
    return demo


def run(config: WebUIConfig) -> None:
    """Serve the UI until Ctrl-C; the chat server it started (if any) stops with it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry
    import_optional("gradio", "gradio", "ui")
    check_port_free(config.host, config.port)
    server = start_chat_server(config) if config.starts_server else None
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops like Ctrl-C: the chat server with it
    try:
        url = f"http://127.0.0.1:{server[1]}/v1" if server else None
        demo = build_app(config, server_url=url)
        host = f"[{config.host}]" if ":" in config.host else config.host
        print(f"expertkit webui at http://{host}:{config.port} (Ctrl-C to stop)", flush=True)
        demo.queue(default_concurrency_limit=8).launch(
            server_name=config.host,
            server_port=config.port,
            share=False,
            inbrowser=False,
            quiet=True,
            show_error=True,
            footer_links=[],  # no links to gradio.app or the API page
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server:
            stop_process(server[0])


def _interrupt(*_) -> None:
    raise KeyboardInterrupt  # Gradio closes its server on it and launch() returns


def check_port_free(host: str, port: int) -> None:
    """Say which port is taken before anything starts (Gradio's own message names an environment variable)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ExpertkitError(
                f"cannot listen on {host}:{port}: {e.strerror}",
                hint=f"another program (an earlier webui?) uses port {port}: stop it, or choose another with port=...",
            ) from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_chat_server(config: WebUIConfig) -> tuple[subprocess.Popen, int]:
    """`expertkit serve` for the chat tab, on a free loopback port; its output goes to the UI's terminal."""
    port = free_port()
    args = [f"model_name_or_path={config.model_name_or_path}", "host=127.0.0.1", f"port={port}"]
    if config.adapter_name_or_path:
        args.append(f"adapter_name_or_path={config.adapter_name_or_path}")
    if config.template:
        args.append(f"template={config.template}")
    if config.kb_dir:
        args.append(f"kb_dir={config.kb_dir}")
    if config.web:
        args.append("web=true")
    command = [sys.executable, "-m", "expertkit", "serve", *args]
    logger.info("starting the chat server: expertkit serve %s", " ".join(args))
    return subprocess.Popen(command, stdin=subprocess.DEVNULL), port


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Ask a child to stop (SIGTERM: the server finishes open answers), then kill it if it does not."""
    if proc.poll() is not None:
        return
    proc.terminate()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
