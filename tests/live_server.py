"""A real expertkit server (uvicorn in a thread) on 127.0.0.1 around any engine: the shared piece behind the live
servers of the tests (conftest's tiny model, the rag tests' reader, the eval tests' judge).

    with serve_engine(MyEngine(), served_model_name="reader", kb_dir="kb") as url:   # url: http://127.0.0.1:PORT
        OpenAI(base_url=url + "/v1", api_key="unused")
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_app(app, port: int, ready_timeout: float = 60.0):
    """Run a built app on 127.0.0.1:port until the block ends; yields its base URL once it listens and, for our
    server, its engine has loaded (/health stops answering 503; an app without /health is ready when it listens)."""
    import httpx
    import pytest
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    while True:
        try:
            if server.started and httpx.get(url + "/health", timeout=1).status_code != 503:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.should_exit = True
            pytest.fail(f"the server did not become healthy in {ready_timeout:g} s")
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the server thread did not stop"


class ScriptedEngine:
    """The Engine methods a scripted test model needs besides `model_names` and `stream` (a remote-like engine:
    no context length or token counts)."""

    def context_length(self, model=None):
        return None

    def count_prompt_tokens(self, messages, model=None):
        return None

    async def close(self) -> None:
        pass


@contextmanager
def serve_engine(engine, **keys):
    """A live server answering with `engine` (an object with the Engine methods); `keys`: ServeConfig keys."""
    from expertkit.serve.app import build_app
    from expertkit.serve.config import ServeConfig

    config = ServeConfig(engine="openai", base_url="http://unused/v1", port=free_port(), **keys)
    with serve_app(build_app(lambda: engine, config), config.port) as url:
        yield url
