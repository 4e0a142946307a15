"""The UI's own chat server never outlives the UI: killed with it (even by SIGKILL, through the parent-death signal),
and stopped by the next UI when a pid file says an earlier one left it behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from expertkit.ui.chat_server import stop_orphan

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; prctl is Linux's")


def alive(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())  # empty: a zombie
    except OSError:
        return False


def wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-m", "expertkit.ui.parentwatch", str(__import__("os").getpid()), "--",
                          sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def test_parentwatch_stops_the_command_when_its_parent_is_killed(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    wait_for(lambda: b"time.sleep(120)" in Path(f"/proc/{child}/cmdline").read_bytes(), 30)  # exec'd: same pid
    parent.kill()
    parent.wait()
    wait_for(lambda: not alive(child), 10)


def test_parentwatch_does_not_start_for_a_parent_already_gone():
    r = subprocess.run([sys.executable, "-m", "expertkit.ui.parentwatch", "1", "--", "true"], timeout=30)
    assert r.returncode == 1  # its parent is not pid 1
    r = subprocess.run([sys.executable, "-m", "expertkit.ui.parentwatch", "--", "true"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr


def test_the_next_ui_stops_a_chat_server_left_behind(tmp_path):
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "expertkit", "serve"])
    dead_ui = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_ui.wait()
    record = tmp_path / "chat-server-7860.json"
    record.write_text(json.dumps({"pid": fake.pid, "port": 1, "ui_pid": os.getpid()}))
    assert not stop_orphan(record) and fake.poll() is None  # its UI (this process) lives: not an orphan
    record.write_text(json.dumps({"pid": fake.pid, "port": 1, "ui_pid": dead_ui.pid}))
    assert stop_orphan(record)
    assert fake.wait(10) == -signal.SIGTERM and not record.exists()
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    record.write_text(json.dumps({"pid": unrelated.pid, "port": 1, "ui_pid": dead_ui.pid}))
    assert not stop_orphan(record) and unrelated.poll() is None  # a reused pid is not ours to stop
    unrelated.kill()
    unrelated.wait()


def test_the_chat_server_dies_with_a_ui_killed_by_sigkill(tiny_model, tmp_path):
    from expertkit.ui.chat_server import free_port

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    args = [f"model_name_or_path={tiny_model}", f"port={port}", "saves_dir=saves", "feedback_db=f.sqlite"]
    with open(tmp_path / "webui.log", "wb") as log:
        ui = subprocess.Popen(
            [sys.executable, "-m", "expertkit", "webui", *args], cwd=tmp_path, env=env, stdout=log, stderr=log
        )
    record = tmp_path / "saves" / "webui_jobs" / f"chat-server-{port}.json"
    try:
        wait_for(lambda: record.is_file() or ui.poll() is not None, 120)
        server = json.loads(record.read_text())
        assert server["ui_pid"] == ui.pid and alive(server["pid"])
        wait_for(lambda: _answers(f"http://127.0.0.1:{server['port']}/v1/models"), 120)  # up and serving
    finally:
        ui.kill()
        ui.wait()
    wait_for(lambda: not alive(server["pid"]), 10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
