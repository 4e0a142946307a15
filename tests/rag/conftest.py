"""Fixtures for the rag tests: the asyncio backend for anyio; `site`, a real local website (see site.py) shared by
the session, with its request log cleared before each test that uses it; and no real web search (ddgs.DDGS fails).

site.py is loaded under the name `rag_site` (a module named `site` would be the standard library's): tests import
its constants with `from rag_site import FACT, LocalSite`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _load_site_module():
    if "rag_site" in sys.modules:
        return sys.modules["rag_site"]
    spec = importlib.util.spec_from_file_location("rag_site", Path(__file__).with_name("site.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["rag_site"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


rag_site = _load_site_module()


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def local_site():
    """The session's LocalSite on 127.0.0.1, started once and shut down at the end."""
    with rag_site.LocalSite() as s:
        yield s


@pytest.fixture
def site(local_site):
    """The shared LocalSite with an empty request log."""
    local_site.clear()
    return local_site


class _NoRealSearch:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("tests must not search the real web: monkeypatch ddgs.DDGS with a fake")


@pytest.fixture(autouse=True)
def no_real_web_search(monkeypatch):
    """DuckDuckGo is never called from tests; a test that wants it monkeypatches `ddgs.DDGS` with a fake."""
    try:
        import ddgs
    except ImportError:
        return
    monkeypatch.setattr(ddgs, "DDGS", _NoRealSearch)
