"""`expertkit serve`: load the config, start uvicorn, print where to connect once the model is ready.

uvicorn owns the signals: Ctrl-C or SIGTERM closes the listening socket (new connections are refused), lets the
open responses, streams included, finish for up to `shutdown_timeout` seconds (then cancels them), closes the
engine and exits 0. A second Ctrl-C/SIGTERM stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading

from expertkit.core.errors import ExpertkitError
from expertkit.core.optional import import_optional
from expertkit.serve.config import ServeConfig

logger = logging.getLogger(__name__)


def run(config: ServeConfig) -> None:
    """Serve until stopped; raise an ExpertkitError if the model could not be loaded."""
    uvicorn = import_optional("uvicorn", "uvicorn", "serve")
    from expertkit.engine.factory import load_engine
    from expertkit.serve.app import build_app
    from expertkit.serve.models import watch_sighup

    keys = config.accepted_keys()  # a missing api_key_file fails here, before anything loads
    if not keys and not config.loopback:
        logger.warning("serving on %s without an API key: anyone who can reach this port can use it", config.host)
    app = build_app(None if config.models else (lambda: load_engine(config)), config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            timeout_graceful_shutdown=config.shutdown_timeout,
        )
    )
    state = app.state.server
    what = config.models or config.adapter_name_or_path or config.model_name_or_path or config.base_url
    print(f"loading {what} ...", flush=True)
    threading.Thread(target=announce, args=(server, state, config, bool(keys)), daemon=True).start()
    saved = watch_sighup(state.models) if state.models is not None else None
    try:
        with signals_end_quietly():
            server.run()
    finally:
        if saved is not None:
            signal.signal(signal.SIGHUP, saved)
    if state.load_error is not None:
        raise ExpertkitError(f"the model could not be loaded: {state.load_error}") from state.load_error
    print("server stopped", flush=True)


def announce(server, state, config: ServeConfig, with_key: bool) -> None:
    """Once loading ends: print the URL and model names, or stop the server when loading failed."""
    state.loaded.wait()
    if state.load_error is not None:
        server.should_exit = True
        return
    if state.models is not None:
        names = ", ".join(state.models.mapping.listed())
        print(f"models file {state.models.path}: reloaded when it changes, on SIGHUP or POST /admin/models", flush=True)
    else:
        names = ", ".join(state.engine.model_names()) or "(the remote's models)"
    speed = getattr(state.engine, "speed", None)  # the local engine's
    if speed is not None and (line := speed()):
        print(f"speed: {line}", flush=True)
    key_note = "  (send Authorization: Bearer KEY)" if with_key else ""
    print(f"serving {names} at {config.url}{key_note}", file=sys.stdout, flush=True)
    print("OpenAI /v1 (chat, completions, embeddings), Ollama /api, /metrics; Ctrl-C to stop", flush=True)


@contextlib.contextmanager
def signals_end_quietly():
    """uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler it found: make
    that one a no-op, so a stop the user asked for is a normal exit (0), not death by signal or KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in saved:
        signal.signal(s, lambda *_: None)
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
