"""Fixtures for the serve tests: the asyncio backend for anyio, a fake engine, a client of an app around it, and
`live`: a real server on 127.0.0.1 (uvicorn in a thread) serving the tiny tuned model, shared by the session."""

from __future__ import annotations

import pytest
from serve_fakes import FakeEngine, make_client


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


@pytest.fixture(scope="session")
def live(live_server):
    """(app, "http://127.0.0.1:PORT/v1") of the shared live server (key LIVE_KEY, the identity adapter as 'sail')."""
    app, url = live_server
    return app, url + "/v1"
