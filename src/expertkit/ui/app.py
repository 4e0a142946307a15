"""`expertkit webui`: build the Gradio page and serve it; start `expertkit serve` for the chat tab when asked.

With `users=users.yaml` every page needs a login (Gradio's login form, checked against the scrypt hashes), and the
role decides which tabs a user sees and which events run for them (ui/access.py).

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

from expertkit.core.errors import ExpertkitError
from expertkit.core.feedback import FeedbackStore, default_feedback_db
from expertkit.core.optional import import_optional
from expertkit.ui.accounts import Accounts, load_users
from expertkit.ui.chat_server import pid_file, start_chat_server, stop_process
from expertkit.ui.config import WebUIConfig
from expertkit.ui.labels import labels

logger = logging.getLogger(__name__)

SERVER_WAIT_S = 2.0  # how often the chat tab asks a starting server for its models


def build_app(config: WebUIConfig, server_url: str | None = None, accounts: Accounts | None = None):
    """The page (a gr.Blocks) in config.lang: chat and compare for everyone; train, evaluate, export and promote for
    the trainer role (everyone, without accounts)."""
    import gradio as gr

    from expertkit.ui.access import Access, trainer_only
    from expertkit.ui.chat import Chat, build_chat_tab
    from expertkit.ui.client import ChatClient
    from expertkit.ui.compare import Arena, build_compare_tab

    L = labels(config.lang)
    url = server_url or config.server_url
    client = ChatClient(url, api_key=config.api_key) if url else None
    store = FeedbackStore(config.feedback_db or default_feedback_db())
    access = Access(accounts)
    chat = Chat(client, store, L)

    def models(current=None, current_a=None, current_b=None):
        """The served names into the chat's and the arena's pickers (a choice made before is kept)."""
        keep = (gr.update(), gr.update())
        if client is None:
            return gr.update(choices=[], value=None), L["no_server"], gr.Timer(active=False), *keep
        try:
            names = client.models()
        except ExpertkitError:
            return gr.update(), L["server_waiting"].format(url=client.base_url), gr.Timer(active=True), *keep

        def pick(value, i):
            return gr.update(choices=names, value=value if value in names else names[min(i, len(names) - 1)])

        if not names:  # still loading: ask again
            return (
                gr.update(choices=[], value=None),
                L["server_ready"].format(n=0, url=client.base_url),
                gr.Timer(active=True),
                *keep,
            )
        ready = L["server_ready"].format(n=len(names), url=client.base_url)
        return pick(current, 0), ready, gr.Timer(active=False), pick(current_a, 0), pick(current_b, 1)

    with gr.Blocks(title="expertkit", analytics_enabled=False) as demo:
        gr.Markdown(f"## {L['title']}\n{L['subtitle']}")
        user_line = gr.Markdown(elem_id="user-line", visible=accounts is not None)
        with gr.Tabs():
            with gr.Tab(L["chat"], id="chat", elem_id="tab-chat"):
                chat_parts = build_chat_tab(chat, lambda: models()[:2], config, L, rater=access.user)
            with gr.Tab(L["compare"], id="compare", elem_id="tab-compare"):
                compare = build_compare_tab(Arena(client, store, L), config, L, rater=access.user)
            before = set(demo.fns)
            trainer_tabs, timers = build_trainer_tabs(demo, config, L, shown=accounts is None)
            guarded = [i for i in demo.fns if i not in before]
        wait = gr.Timer(SERVER_WAIT_S)
        model, server = chat_parts["model"], chat_parts["server"]
        io = [model, server, wait, compare["a"], compare["b"]]
        wait.tick(models, [model, compare["a"], compare["b"]], io)
        demo.load(models, [model, compare["a"], compare["b"]], io)
        aliases_fn, aliases_out = compare["aliases"]
        demo.load(aliases_fn, None, aliases_out)

        on_open = access.opener(L, trainer_tabs, timers)
        demo.load(on_open, None, [user_line, *trainer_tabs, *timers])
    trainer_only(demo, guarded, access)
    return demo


def build_trainer_tabs(demo, config: WebUIConfig, L: dict[str, str], shown: bool) -> tuple[list, list]:
    """The trainer's tabs and what their page loads; returns (tabs, their timers)."""
    import gradio as gr

    from expertkit.ui.data_tab import build_data_tab
    from expertkit.ui.datasets import dataset_names
    from expertkit.ui.improve_tab import build_promote_tab
    from expertkit.ui.stage_tabs import build_eval_tab, build_export_tab
    from expertkit.ui.train_tab import build_train_tab

    with gr.Tab(L["data_tab"], id="data", elem_id="tab-data", visible=shown) as data:
        data_parts = build_data_tab(config, L)
    with gr.Tab(L["train"], id="train", elem_id="tab-train", visible=shown) as train:
        train_parts = build_train_tab(config, L)
    with gr.Tab(L["eval"], id="eval", elem_id="tab-eval", visible=shown) as evaluate:
        build_eval_tab(config, L)
    with gr.Tab(L["export"], id="export", elem_id="tab-export", visible=shown) as export:
        build_export_tab(config, L)
    with gr.Tab(L["promote_tab"], id="promote", elem_id="tab-promote", visible=shown) as promote:
        promote_parts = build_promote_tab(config, L)
    runs_fn, runs_out = train_parts["runs"]
    demo.load(runs_fn, None, runs_out)
    fresh_dir, output_dir = train_parts["output_dir"]
    demo.load(fresh_dir, None, [output_dir])
    for fn, outputs in promote_parts["load"]:
        demo.load(fn, None, outputs)
    picker, dataset_dir = train_parts["dataset"]
    for accepted in data_parts["accepted"]:  # a dataset accepted in the Data tab appears in the Train tab's picker
        accepted.then(lambda d: gr.update(choices=dataset_names(d or ".")), [dataset_dir], [picker])
    tabs = [data, train, evaluate, export, promote]
    return tabs, [t for tab in tabs for t in _descendants(tab) if isinstance(t, gr.Timer)]


def _descendants(block) -> list:
    found = []
    for child in getattr(block, "children", []):
        found += [child, *_descendants(child)]
    return found


def run(config: WebUIConfig) -> None:
    """Serve the UI until Ctrl-C; the chat server it started (if any) stops with it, even if the UI is killed."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry
    import_optional("gradio", "gradio", "ui")
    accounts = load_users(config.users) if config.users else None
    check_port_free(config.host, config.port)
    server = start_chat_server(config) if config.starts_server else None
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops like Ctrl-C: the chat server with it
    try:
        url = f"http://127.0.0.1:{server[1]}/v1" if server else None
        demo = build_app(config, server_url=url, accounts=accounts)
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
            auth=accounts.check if accounts else None,
            auth_message=labels(config.lang)["login_message"] if accounts else None,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server:
            stop_process(server[0], record=pid_file(config))


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
