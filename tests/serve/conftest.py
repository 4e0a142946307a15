"""Fixtures for the serve tests: the asyncio backend for anyio, a fake engine, a client of an app around it."""

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
