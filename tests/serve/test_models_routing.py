"""A models file served (serve/models.py) in front of a fake engine that can add and remove names: routing of names
and aliases, sticky blind A/B arms, leases that keep a request on its model through a reload, refused files, the
admin route, and what the conversation store records. The live tests with the real tiny model are in
test_models_file_serve.py."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml
from serve_fakes import BASE_URL, FakeEngine

from expertkit.core.feedback import FeedbackStore
from expertkit.engine.base import Delta, Usage
from expertkit.serve.app import build_app
from expertkit.serve.config import ServeConfig
from expertkit.serve.models import pick_arm, stable_unit

pytestmark = pytest.mark.anyio
ASK = {"messages": [{"role": "user", "content": "Who are you?"}]}
ADMIN = {"X-Admin-Key": "adm"}


class SwapEngine(FakeEngine):
    """Answers with the adapter folder's name of the served key it was asked for; `add` / `remove` as LocalEngine;
    `gates[key]`: an event the key's generations wait for."""

    def __init__(self, config, served):
        super().__init__(names=[])
        self.served = {name: adapter for name, (_, adapter) in served.items()}
        self.removed: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    def model_names(self) -> list[str]:
        return list(self.served)

    def add(self, name, adapter=None, model=None, share=(0, 1)):
        if "broken" in str(adapter):
            raise RuntimeError("the adapter's weights do not fit the model")
        self.served = {**self.served, name: adapter}

    def remove(self, name):
        self.served = {n: a for n, a in self.served.items() if n != name}
        self.removed.append(name)

    async def stream(self, messages, params, model=None, tools=None):
        self.calls.append((messages, params, model))
        adapter = self.served[model]  # a key removed while a request uses it would fail here
        if model in self.gates:
            await self.gates[model].wait()
        yield Delta(text=Path(adapter).name)
        yield Delta(finish_reason="stop", usage=Usage(3, 1))


def adapter(folder: Path, name: str) -> str:
    (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / name / "adapter_config.json").write_text("{}", encoding="utf-8")
    return name  # relative: read from the models file's folder


def write(path: Path, models: dict, aliases: dict | None = None, **more) -> None:
    body = {"base": str(path.parent / "base"), "models": models, "aliases": aliases or {}, **more}
    path.write_text(yaml.safe_dump(body), encoding="utf-8")


@pytest.fixture
def models_file(tmp_path) -> Path:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}", encoding="utf-8")
    for name in ("round1", "round2", "round3"):
        adapter(tmp_path, name)
    path = tmp_path / "models.yaml"
    write(path, {"r1": {"adapter_name_or_path": "round1"}, "r2": {"adapter_name_or_path": "round2"}},
          {"expert": {"r1": 0.5, "r2": 0.5}, "stable": "r1"})  # fmt: skip
    return path


async def serve(models_file: Path, **keys):
    config = ServeConfig(models=str(models_file), admin_key="adm", **keys)
    app = build_app(SwapEngine, config)
    state = app.state.server
    state.load(lambda: state.models.load_engine(SwapEngine))  # what the app's load thread does at startup
    assert state.load_error is None, state.load_error
    return app, httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL)


async def answer(c, model, headers=None, **more) -> dict:
    r = await c.post("/v1/chat/completions", json={**ASK, "model": model, **more}, headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_arm_is_a_stable_hash_of_the_user_and_the_split_follows_the_weights():
    arms = {"current": 0.9, "round2": 0.1}
    picked = [pick_arm("expert", arms, f"user-{i}") for i in range(10_000)]
    assert picked == [pick_arm("expert", arms, f"user-{i}") for i in range(10_000)]  # sticky
    share = Counter(picked)["round2"] / len(picked)
    assert 0.08 < share < 0.12, share
    assert stable_unit("user-1") == stable_unit("user-1") and 0 <= stable_unit("x") < 1
    assert {pick_arm("expert", arms, None) for _ in range(300)} == {"current", "round2"}  # no key: random


async def test_names_and_aliases_are_listed_and_an_alias_answers_as_itself(models_file, tmp_path):
    db = tmp_path / "f.sqlite"
    app, c = await serve(models_file, store_conversations=True, feedback_db=str(db))
    async with c:
        assert [m["id"] for m in (await c.get("/v1/models")).json()["data"]] == ["r1", "r2", "expert", "stable"]
        assert [m["name"] for m in (await c.get("/api/tags")).json()["models"]] == ["r1", "r2", "expert", "stable"]
        seen = {}
        for i in range(40):
            body = await answer(c, "expert", user=f"user-{i}")
            assert body["model"] == "expert"  # blind: never the arm
            arm = "r1" if body["choices"][0]["message"]["content"] == "round1" else "r2"
            assert arm == pick_arm("expert", {"r1": 0.5, "r2": 0.5}, f"user-{i}")
            seen[body["id"]] = arm
            again = await answer(c, "expert", user=f"user-{i}", stream=False)
            assert again["choices"][0]["message"]["content"] == body["choices"][0]["message"]["content"]
        assert set(seen.values()) == {"r1", "r2"}
        assert (await answer(c, "stable"))["choices"][0]["message"]["content"] == "round1"
        assert (await answer(c, None))["model"] == "r1"  # the first name is the default
        r = await c.post("/v1/chat/completions", json={**ASK, "model": "nope"})
        assert r.status_code == 404 and "r1, r2, expert, stable" in r.json()["error"]["message"]
    store = FeedbackStore(db)
    for cid, arm in seen.items():
        (row,) = store._read(
            "SELECT c.alias, c.arm, c.model FROM conversations c JOIN messages m ON m.conversation_id = c.id "
            "WHERE m.completion_id = ?",
            (cid,),
        )
        assert row == ("expert", arm, arm)


async def test_without_a_user_the_api_key_then_the_sticky_header_keeps_the_arm(models_file):
    write(models_file, yaml.safe_load(models_file.read_text())["models"], {"expert": {"r1": 0.5, "r2": 0.5}},
          sticky_header="X-Team")  # fmt: skip
    _, c = await serve(models_file, api_key="k1,k2,k3,k4,k5,k6")
    async with c:
        by_key = set()
        for key in ("k1", "k2", "k3", "k4", "k5", "k6"):
            auth = {"Authorization": f"Bearer {key}"}
            got = {(await answer(c, "expert", headers=auth))["choices"][0]["message"]["content"] for _ in range(3)}
            assert len(got) == 1, key  # the same key, the same arm
            by_key |= got
        assert by_key == {"round1", "round2"}
    _, c = await serve(models_file)  # no API keys: the header decides
    async with c:
        for team in ("a", "b", "c"):
            got = {(await answer(c, "expert", headers={"X-Team": team}))["choices"][0]["message"]["content"]
                   for _ in range(3)}  # fmt: skip
            assert len(got) == 1, team


async def test_a_request_in_flight_finishes_on_its_model_and_the_old_one_is_freed_after(models_file):
    write(models_file, {"r1": {"adapter_name_or_path": "round1"}}, {"expert": "r1"})
    app, c = await serve(models_file)
    engine = app.state.server.engine
    engine.gates["r1"] = asyncio.Event()
    async with c:
        first = asyncio.ensure_future(answer(c, "expert"))
        while not engine.calls:
            await asyncio.sleep(0.01)
        # r1 changes (its adapter), r2 is new and the alias moves to it
        write(models_file, {"r1": {"adapter_name_or_path": "round3"}, "r2": {"adapter_name_or_path": "round2"}},
              {"expert": "r2"})  # fmt: skip
        r = await c.post("/admin/models", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["models"] == ["r1", "r2", "expert"]
        assert set(engine.served) == {"r1", "r1#2", "r2"}  # the old r1 stays while its request runs
        assert (await answer(c, "expert"))["choices"][0]["message"]["content"] == "round2"
        assert (await answer(c, "r1"))["choices"][0]["message"]["content"] == "round3"
        engine.gates["r1"].set()
        body = await first
        assert body["choices"][0]["message"]["content"] == "round1" and body["model"] == "expert"
        for _ in range(100):
            if engine.removed:
                break
            await asyncio.sleep(0.02)
        assert engine.removed == ["r1"] and set(engine.served) == {"r1#2", "r2"}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"models": {"r1": {"adapter_name_or_path": "missing"}}}, "does not exist"),
        ({"aliases": {"expert": {"r1": 0.5, "r2": 0.3}}}, "weights sum to 0.8"),
        ({"aliases": {"expert": {"r1": 0.5, "stable": 0.5}}}, "arm 'stable' is another alias"),
        ({"models": {"r3": {"adapter_name_or_path": "round3"}, "r4": {"adapter_name_or_path": "broken"}}},
         "do not fit"),  # r3 loads, r4 fails: r3 is dropped again
        ("models: [oops", "not valid YAML"),
    ],
)  # fmt: skip
async def test_a_bad_file_is_refused_shown_on_health_and_the_old_mapping_keeps_serving(models_file, change, says):
    app, c = await serve(models_file)
    good = models_file.read_text()
    if isinstance(change, dict):
        body = yaml.safe_load(good)
        adapter(models_file.parent, "broken")  # a folder with an adapter_config.json that fails to load
        body["models"].update(change.get("models", {}))
        body["aliases"].update(change.get("aliases", {}))
        models_file.write_text(yaml.safe_dump(body), encoding="utf-8")
    else:
        models_file.write_text(change, encoding="utf-8")
    async with c:
        r = await c.post("/admin/models", headers=ADMIN)
        assert r.status_code == 422 and says in r.json()["error"]["message"], r.text
        health = (await c.get("/health")).json()
        assert health["status"] == "ok" and says in health["models_file"]["error"]
        assert health["models_file"]["path"] == str(models_file.resolve())
        assert (await answer(c, "stable"))["choices"][0]["message"]["content"] == "round1"
        assert set(app.state.server.engine.served) == {"r1", "r2"}  # what a refused load loaded is gone
        assert app.state.server.engine.removed == (["r3"] if says == "do not fit" else [])
        models_file.write_text(good, encoding="utf-8")
        assert (await c.post("/admin/models", headers=ADMIN)).status_code == 200
        assert (await c.get("/health")).json()["models_file"]["error"] is None


async def test_the_admin_route_needs_the_admin_key_and_the_api_key(models_file):
    _, c = await serve(models_file, api_key="k1")
    async with c:
        r = await c.post("/admin/models", headers=ADMIN)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = await c.post("/admin/models", headers={"Authorization": "Bearer k1", "X-Admin-Key": "wrong"})
        assert r.status_code == 401 and "X-Admin-Key" in r.json()["error"]["message"]
        r = await c.post("/admin/models", headers={"Authorization": "Bearer k1", **ADMIN})
        assert r.status_code == 200 and r.json()["status"] == "reloaded"
    config = ServeConfig(models=str(models_file))  # no admin_key: off, saying how to turn it on
    app = build_app(SwapEngine, config)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as c:
        r = await c.post("/admin/models", headers=ADMIN)
    assert r.status_code == 403 and "admin_key=" in r.json()["error"]["message"]


async def test_a_bad_file_at_start_fails_the_load_with_the_problem(models_file):
    write(models_file, {"r1": {"adapter_name_or_path": "nowhere"}}, {"expert": {"r1": 0.7}})
    app = build_app(SwapEngine, ServeConfig(models=str(models_file)))
    state = app.state.server
    state.load(lambda: state.models.load_engine(SwapEngine))
    assert "does not exist" in str(state.load_error) and "weights sum to 0.7" in str(state.load_error)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as c:
        r = await c.get("/health")
    assert r.status_code == 503 and "nowhere" in r.json()["message"]


def test_models_excludes_adapters_and_remote_engines():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="leave out adapter_name_or_path"):
        ServeConfig(models="m.yaml", adapter_name_or_path="saves/a")
    with pytest.raises(ValidationError, match="engine=transformers only"):
        ServeConfig(models="m.yaml", engine="vllm")
    assert ServeConfig(models="m.yaml").model_name_or_path == ""  # the file names the base
    assert "adm" not in repr(ServeConfig(models="m.yaml", admin_key="adm"))


async def test_feedback_records_the_rater_or_the_api_keys_place(tmp_path):
    db = tmp_path / "f.sqlite"
    config = ServeConfig(model_name_or_path="fake", api_key="k1,k2", store_conversations=True, feedback_db=str(db))
    app = build_app(FakeEngine(), config)
    auth = {"Authorization": "Bearer k2"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as c:
        cid = (await c.post("/v1/chat/completions", json=ASK, headers=auth)).json()["id"]
        r = await c.post("/v1/feedback", json={"completion_id": cid, "rating": 1}, headers=auth)
        assert r.json()["rater"] == "api_key#2"
        r = await c.post("/v1/feedback", json={"completion_id": cid, "rating": -1, "rater": "alice"}, headers=auth)
        assert r.json()["rater"] == "alice"
    raters = [row[0] for row in FeedbackStore(db)._read("SELECT rater FROM feedback ORDER BY rowid")]
    assert raters == ["api_key#2", "alice"]
    assert "k2" not in json.dumps(FeedbackStore(db)._read("SELECT * FROM feedback"))


async def test_ollama_chat_and_text_completions_are_recorded(tmp_path):
    db = tmp_path / "f.sqlite"
    fake = FakeEngine()
    fake.queue = ["Ollama answer.", "Raw continuation.", "Generated."]
    config = ServeConfig(model_name_or_path="fake", store_conversations=True, feedback_db=str(db))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(fake, config)), base_url=BASE_URL) as c:
        r = await c.post("/api/chat", json={"model": "fake-expert", "stream": False, **ASK, "options": {"seed": 1}})
        assert r.status_code == 200 and r.json()["message"]["content"] == "Ollama answer."
        r = await c.post("/v1/completions", json={"prompt": "Once upon", "max_tokens": 5})
        assert r.status_code == 200
        async with c.stream("POST", "/api/generate", json={"prompt": "Hi", "raw": True}) as r:
            assert [json.loads(line) async for line in r.aiter_lines()][-1]["done"]
    store = FeedbackStore(db)
    rows = store._read(
        "SELECT c.alias, c.arm, m.role, m.content, m.options FROM messages m "
        "JOIN conversations c ON c.id = m.conversation_id ORDER BY c.rowid, m.position"
    )
    assert [r[2:4] for r in rows] == [
        ("user", "Who are you?"), ("assistant", "Ollama answer."),
        ("user", "Once upon"), ("assistant", "Raw continuation."),
        ("user", "Hi"), ("assistant", "Generated."),
    ]  # fmt: skip
    assert rows[1][:2] == ("fake-expert", "fake-expert") and rows[3][:2] == (None, "fake-expert")
    assert json.loads(rows[1][4]) == {"seed": 1}
    assert json.loads(rows[3][4]) == {"max_tokens": 5, "raw_prompt": True} and json.loads(rows[5][4])["raw_prompt"]
