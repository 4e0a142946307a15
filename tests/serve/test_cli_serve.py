"""`expertkit serve` as a user runs it: prints the URL and model, answers, and exits 0 on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from live_server import free_port

from expertkit.cli.main import main


def start_serve(tiny_model, port: int) -> tuple[subprocess.Popen, list[str]]:
    """`expertkit serve` of the tiny model in a subprocess, and its output up to the `serving ...` line."""
    args = ["serve", f"model_name_or_path={tiny_model}", f"port={port}"]
    code = "import sys; from expertkit.cli.main import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("serving") or not line:
            break
    return proc, lines


def test_serve_prints_url_answers_and_stops_cleanly_on_sigterm(tiny_model):
    port = free_port()
    proc, lines = start_serve(tiny_model, port)
    try:
        assert lines[-1].startswith(f"serving tiny at http://127.0.0.1:{port}/v1"), lines
        assert any(line.startswith("speed: CPU, linear weights packed for oneDNN, one batching") for line in lines)
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
        assert [m["id"] for m in r.json()["data"]] == ["tiny"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_lets_open_streams_finish_refuses_new_connections_and_exits_0(tiny_model):
    port = free_port()
    proc, lines = start_serve(tiny_model, port)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 200, "stream": True}
    try:
        assert lines[-1].startswith("serving tiny"), lines
        with httpx.Client(timeout=30) as a, httpx.Client(timeout=30) as b:
            with a.stream("POST", url, json=body) as ra, b.stream("POST", url, json=body) as rb:
                streams = [ra.iter_lines(), rb.iter_lines()]
                seen = [[next(line for line in s if line.startswith("data: "))] for s in streams]
                assert all('"role": "assistant"' in first[0] for first in seen)
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.3)  # uvicorn closes its listening socket at once
                with pytest.raises(httpx.ConnectError):
                    httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                for s, got in zip(streams, seen):
                    got += [line for line in s if line.startswith("data: ")]
        for got in seen:
            assert got[-1] == "data: [DONE]", got[-3:]
            finish = json.loads(got[-2][6:])["choices"][0]["finish_reason"]
            assert finish in ("stop", "length"), got[-3:]
            events = [json.loads(line[6:]) for line in got if line != "data: [DONE]"]
            assert not any("error" in event for event in events)  # no error event (answer text may say "error")
        assert proc.wait(timeout=30) == 0
        out = proc.stdout.read()
        assert "Traceback" not in out and "server stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_config_errors_are_reported_before_starting(capsys, tmp_path):
    assert main(["serve", "model_name_or_path=x", "max_queu=3"]) == 1
    assert "did you mean 'max_queue'" in capsys.readouterr().err
    assert main(["serve", "model_name_or_path=x", f"api_key_file={tmp_path / 'nope'}"]) == 1
    assert "api_key_file" in capsys.readouterr().err


def test_every_shipped_serve_yaml_loads():
    from pathlib import Path

    from expertkit.core.config import load_config
    from expertkit.serve.config import ServeConfig

    files = sorted((Path(__file__).resolve().parents[2] / "examples" / "serve").rglob("*.yaml"))
    assert files
    for path in files:
        config = load_config(ServeConfig, path)
        assert config.loopback and config.model_name_or_path, path
