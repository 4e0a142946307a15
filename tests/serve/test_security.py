"""Keys on every route but /health, the loopback Host check (DNS rebinding), CORS off unless asked, key sources."""

from __future__ import annotations

import logging

import pytest
from serve_fakes import FakeEngine, make_client

from expertkit.serve.app import build_app
from expertkit.serve.auth import host_is_loopback
from expertkit.serve.config import ServeConfig

pytestmark = pytest.mark.anyio
HI = {"messages": [{"role": "user", "content": "hi"}]}


def walk_routes(routes, prefix=""):
    """(path, methods) of every route, into included routers (FastAPI >= 0.16x nests them)."""
    for route in routes:
        if hasattr(route, "original_router"):
            yield from walk_routes(route.original_router.routes, prefix + route.include_context.prefix)
        elif getattr(route, "methods", None):
            yield prefix + route.path, route.methods


async def test_every_route_but_health_needs_a_key():
    app = build_app(FakeEngine(), ServeConfig(model_name_or_path="fake", api_key="k1,k2"))
    async with make_client(FakeEngine(), api_key="k1,k2") as c:
        checked = 0
        for path, methods in walk_routes(app.routes):
            for method in sorted(methods - {"HEAD"}):
                r = await c.request(method, path, json=HI)
                if path == "/health":
                    assert r.status_code == 200
                else:
                    assert r.status_code == 401, (method, path)
                    error = r.json()["error"]
                    if path == "/" or path.startswith("/api/"):  # Ollama's body: {"error": "..."}
                        assert "API key" in error, (method, path)
                    else:
                        assert error["type"] == "authentication_error"
                    checked += 1
        assert checked >= 13
        assert (await c.head("/")).status_code == 401
        assert (await c.get("/api/tags", headers={"Authorization": "Bearer k1"})).status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Authorization": "Bearer k2"}, 200),
        ({"authorization": "bearer k1"}, 200),
        ({"X-Api-Key": "k1"}, 200),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Basic k1"}, 401),
        ({"X-Api-Key": "k1x"}, 401),
        ({}, 401),
    ],
)
async def test_keys_by_bearer_or_x_api_key(headers, status):
    async with make_client(FakeEngine(), api_key="k1,k2") as c:
        r = await c.post("/v1/chat/completions", json=HI, headers=headers)
        assert r.status_code == status, r.text


async def test_keys_are_never_logged(caplog, monkeypatch, tmp_path):
    caplog.set_level(logging.DEBUG)
    (tmp_path / "keys").write_text("file-key\n", encoding="utf-8")
    monkeypatch.setenv("EXPERTKIT_API_KEY", "env-key")
    config = ServeConfig(model_name_or_path="fake", api_key="sk-secret-1", api_key_file=str(tmp_path / "keys"))
    assert config.accepted_keys() == ["sk-secret-1", "file-key", "env-key"]
    assert "sk-secret-1" not in repr(config)
    async with make_client(FakeEngine(), api_key="sk-secret-1") as c:
        await c.post("/v1/chat/completions", json=HI, headers={"Authorization": "Bearer sk-secret-2"})
        await c.post("/v1/chat/completions", json=HI, headers={"Authorization": "Bearer sk-secret-1"})
    assert "sk-secret" not in caplog.text


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1:8000", True),
        ("localhost:8000", True),
        ("localhost", True),
        ("[::1]:8000", True),
        ("evil.example:8000", False),
        ("127.0.0.1.evil.example", False),
        ("localhost.evil.example:80", False),
    ],
)
def test_loopback_host_names(host, ok):
    assert host_is_loopback(host) is ok


async def test_rebinding_host_is_400_when_bound_to_loopback_only():
    async with make_client(FakeEngine()) as c:
        r = await c.get("/v1/models", headers={"Host": "attacker.example:8000"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
        assert (await c.get("/health", headers={"Host": "attacker.example"})).status_code == 400
    async with make_client(FakeEngine(), host="0.0.0.0") as c:
        assert (await c.get("/v1/models", headers={"Host": "my-server.lan:8000"})).status_code == 200


async def test_cors_is_off_unless_origins_are_given():
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    async with make_client(FakeEngine()) as c:
        r = await c.get("/v1/models", headers={"Origin": "http://localhost:3000"})
        assert "access-control-allow-origin" not in r.headers
    async with make_client(FakeEngine(), cors_origins="http://localhost:3000") as c:
        r = await c.options("/v1/chat/completions", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
        r = await c.get("/v1/models", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers
