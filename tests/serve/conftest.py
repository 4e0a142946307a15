"""Fixtures for the serve tests: the asyncio backend for anyio, a fake engine, a client of an app around it, and
`live`: a real server on 127.0.0.1 (uvicorn in a thread) serving the tiny tuned model, shared by the session."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from serve_fakes import LIVE_KEY, FakeEngine, make_client


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def fake():
    return FakeEngine()


@pytest.fixture
async def client(fake):
    async with make_client(fake) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def live(tiny_model, identity_adapter):
    """(app, "http://127.0.0.1:PORT/v1") of a server with key LIVE_KEY serving the identity adapter as 'sail'."""
    import uvicorn

    from expertkit.engine.base import load_engine
    from expertkit.serve.app import build_app
    from expertkit.serve.config import ServeConfig

    _, result = identity_adapter
    config = ServeConfig(
        model_name_or_path=str(tiny_model),
        adapter_name_or_path=str(result.output_dir),
        served_model_name="sail",
        port=free_port(),
        api_key=LIVE_KEY,
    )
    app = build_app(lambda: load_engine(config), config)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{config.port}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    else:
        pytest.fail("the server did not become healthy in 60 s")
    yield app, f"http://127.0.0.1:{config.port}/v1"
    server.should_exit = True
    thread.join(30)
    assert not thread.is_alive()
