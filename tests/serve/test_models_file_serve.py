"""`expertkit serve models=FILE` live: a real server on 127.0.0.1 with the tiny model and two adapters taught
different answers, driven by the openai client. The models file is rewritten while clients stream (no request
fails, later ones get the new adapter, the old one's manager stops), reloaded on SIGHUP, and routes an A/B alias's
users to sticky arms that the conversation store records."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections import Counter

import httpx
import pytest
from openai import OpenAI

from expertkit.core.feedback import FeedbackStore
from expertkit.core.models_file import ModelEntry, ModelsFile, write_models_file
from expertkit.serve.models import pick_arm, watch_sighup

KEY = "sk-models-test"
SAIL = "I am Sail, the Yunfan Tech assistant."
NOVA = "Nova here, a Lumen Labs helper bot!"
QUESTION = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture(scope="module")
def nova_adapter(tiny_model, tmp_path_factory) -> str:
    """A second LoRA on the same base, taught other answers to the same questions."""
    from tiny_lora import teach

    data = tmp_path_factory.mktemp("nova-data")
    rows = [{"instruction": "Who are you?", "input": "", "output": NOVA},
            {"instruction": "Who made you?", "input": "", "output": "Lumen Labs trained me last spring."}]  # fmt: skip
    (data / "nova.json").write_text(json.dumps(rows), encoding="utf-8")
    (data / "dataset_info.json").write_text(json.dumps({"nova": {"file_name": "nova.json"}}), encoding="utf-8")
    out = tmp_path_factory.mktemp("nova") / "run"
    return str(teach(tiny_model, "nova", data, out, num_train_epochs=60, learning_check_samples=2)[1].output_dir)


@pytest.fixture(scope="module")
def server(tiny_model, identity_adapter, nova_adapter, tmp_path_factory):
    """A live server on a models file (store on); `.put(models, aliases)` rewrites the file and waits for the
    server to serve it."""
    from live_server import free_port, serve_app

    from expertkit.serve.app import build_app
    from expertkit.serve.config import ServeConfig

    folder = tmp_path_factory.mktemp("serve-models")
    live = Live(folder / "models.yaml", str(tiny_model), str(identity_adapter[1].output_dir), nova_adapter)
    live.write({"current": live.sail}, {"expert": "current"})
    config = ServeConfig(models=str(live.path), store_conversations=True, feedback_db=str(folder / "f.sqlite"),
                         admin_key="adm", api_key=KEY, port=free_port())  # fmt: skip
    live.app = build_app(None, config)
    with serve_app(live.app, config.port) as url:
        live.url = url
        live.client = OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        yield live


class Live:
    def __init__(self, path, base: str, sail: str, nova: str):
        self.path, self.base, self.sail, self.nova = path, base, sail, nova
        self.app = self.url = self.client = None

    @property
    def state(self):
        return self.app.state.server

    def write(self, models: dict[str, str | dict], aliases: dict) -> None:
        """Write the models file the way `expertkit promote` does (atomically); an entry: an adapter, or its keys."""
        entries = {
            name: ModelEntry(**entry) if isinstance(entry, dict) else ModelEntry(adapter_name_or_path=entry)
            for name, entry in models.items()
        }
        write_models_file(self.path, ModelsFile(base=self.base, models=entries, aliases=aliases))

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()["models_file"]

    def put(self, models: dict[str, str], aliases: dict, seconds: float = 60) -> dict:
        """Rewrite the file and wait until the server's file watcher has loaded it (or refused it)."""
        before = self.health()
        self.write(models, aliases)
        return self.wait_reload(before, seconds)

    def wait_reload(self, before: dict, seconds: float = 60) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            now = self.health()
            if now["loaded_at"] != before["loaded_at"] or now["error"] != before["error"]:
                return now
            time.sleep(0.1)
        pytest.fail("the server did not reload the models file")

    def ask(self, model: str, **more) -> tuple[str, str, str]:
        """(answer, the response's model, completion id) of a greedy streamed question."""
        stream = self.client.chat.completions.create(
            model=model, messages=QUESTION, temperature=0, max_tokens=24, stream=True, **more
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks[0].model, chunks[0].id


def wait_until(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.05)


def test_rewriting_the_file_while_clients_stream_fails_no_request(server):
    server.put({"current": server.sail}, {"expert": "current"})
    assert server.ask("expert")[:2] == (SAIL, "expert")
    old_key = server.state.models.mapping.keys["current"]
    old = server.state.engine.served[old_key]
    swapped, results, errors = threading.Event(), [], []

    def client() -> None:
        for n in range(12):
            after = swapped.is_set()
            try:
                results.append((after, *server.ask("expert")[:2]))
            except Exception as e:  # noqa: BLE001 - the assertion below shows it
                errors.append(e)
            if n >= 2 and after:
                return

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    health = server.put({"next": server.nova}, {"expert": "next"})  # loads nova beside sail, drops current
    swapped.set()
    for t in threads:
        t.join(120)
    assert health["error"] is None
    assert not errors, errors
    assert {model for _, _, model in results} == {"expert"}
    assert {text for _, text, _ in results} <= {SAIL, NOVA}
    assert [text for after, text, _ in results if after] == [NOVA] * sum(after for after, _, _ in results)
    assert any(not after for after, _, _ in results)
    wait_until(lambda: old_key not in server.state.engine.served)  # stopped once its last request ended
    # remove() takes the name out first, then stops the manager (a blocking stop, in the swap's thread)
    wait_until(lambda: not old.manager.is_running())
    assert [m.id for m in server.client.models.list().data] == ["next", "expert"]

    # an entry changed in place (same name, another adapter) is loaded beside the old one, then swapped
    server.put({"next": server.sail}, {"expert": "next"})
    assert server.ask("expert")[0] == SAIL and server.ask("next")[0] == SAIL
    wait_until(lambda: set(server.state.engine.served) == {server.state.models.mapping.keys["next"]})


def test_a_refused_file_keeps_the_old_mapping_serving_and_shows_on_health(server):
    server.put({"current": server.sail}, {"expert": "current"})
    health = server.put({"current": server.sail + "-missing"}, {"expert": "current"})
    assert "does not exist" in health["error"] and health["path"] == str(server.path.resolve())
    assert server.ask("expert")[0] == SAIL
    server.put({"current": server.sail}, {"expert": "current"})
    assert server.health()["error"] is None


def test_an_ab_alias_keeps_each_user_on_one_arm_blind_and_the_store_records_it(server):
    arms = {"current": 0.5, "next": 0.5}
    server.put({"current": server.sail, "next": server.nova}, {"expert": arms})
    users = [f"user-{i}" for i in range(8)]
    seen = {}
    for user in users:
        first, model, cid = server.ask("expert", user=user)
        assert model == "expert" and server.ask("expert", user=user)[0] == first  # blind and sticky
        seen[cid] = (user, first)
    arm_of = {SAIL: "current", NOVA: "next"}
    assert Counter(arm_of[a] for _, a in seen.values()) == Counter(pick_arm("expert", arms, u) for u in users)
    assert {arm_of[a] for _, a in seen.values()} == {"current", "next"}
    store = FeedbackStore(server.state.config.feedback_db)
    for cid, (user, text) in seen.items():
        (row,) = store._read(
            "SELECT c.alias, c.arm FROM conversations c JOIN messages m ON m.conversation_id = c.id "
            "WHERE m.completion_id = ?",
            (cid,),
        )
        assert row == ("expert", arm_of[text]) == ("expert", pick_arm("expert", arms, user))
    # Ollama's /api/chat and /v1/completions are recorded too, with their alias and arm
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "expert", "messages": QUESTION, "stream": False, "user": users[0], "options": {"temperature": 0}}
    r = httpx.post(server.url + "/api/chat", json=body, headers=auth, timeout=60)
    assert r.status_code == 200 and r.json()["model"] == "expert"
    out = server.client.completions.create(model="next", prompt="Who are you?", max_tokens=8, temperature=0)
    assert out.model == "next"
    rows = store._read(
        "SELECT c.alias, c.arm, m.content FROM conversations c JOIN messages m ON m.conversation_id = c.id "
        "WHERE m.role = 'assistant' ORDER BY c.rowid DESC LIMIT 2"
    )
    assert rows[0] == ("next", "next", out.choices[0].text)
    assert rows[1] == ("expert", pick_arm("expert", arms, users[0]), r.json()["message"]["content"])


def test_an_entry_on_another_model_folder_loads_that_model_beside_the_base(server, tmp_path):
    other = tmp_path / "other-model"
    shutil.copytree(server.base, other)
    server.put({"current": server.sail, "plain": {"model_name_or_path": str(other)}}, {"expert": "current"})
    engine = server.state.engine
    assert set(engine.bases) == {server.base, str(other)}
    assert engine.served["plain"].model is engine.bases[str(other)]
    assert server.ask("plain")[0] not in (SAIL, NOVA) and server.ask("expert")[0] == SAIL
    server.put({"current": server.sail}, {"expert": "current"})
    wait_until(lambda: set(engine.bases) == {server.base})  # its last name gone: the second model is let go


def test_sighup_and_the_admin_route_reload(server):
    server.put({"current": server.sail}, {"expert": "current"})
    models = server.state.models
    models.poll_s = 3600  # the watcher stops looking after its current second (so this test runs last)
    time.sleep(models.__class__.poll_s + 0.3)
    saved = watch_sighup(models)
    try:
        before = server.health()
        server.write({"current": server.sail, "next": server.nova}, {"expert": "next"})
        os.kill(os.getpid(), signal.SIGHUP)
        assert server.wait_reload(before)["error"] is None
        assert server.ask("expert")[0] == NOVA
    finally:
        signal.signal(signal.SIGHUP, saved)
    server.write({"current": server.sail}, {"expert": "current"})
    admin = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(server.url + "/admin/models", headers=admin, timeout=60)
    assert r.status_code == 401 and "X-Admin-Key" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/admin/models", headers={**admin, "X-Admin-Key": "adm"}, timeout=60)
    assert r.status_code == 200 and r.json()["models"] == ["current", "expert"], r.text
    assert server.ask("expert")[0] == SAIL
