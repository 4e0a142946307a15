"""`expertkit serve` as a user runs it: prints the URL and model, answers, and exits 0 on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from expertkit.cli.main import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_prints_url_answers_and_stops_cleanly_on_sigterm(tiny_model):
    port = free_port()
    args = ["serve", f"model_name_or_path={tiny_model}", f"port={port}"]
    code = "import sys; from expertkit.cli.main import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("serving") or not line:
                break
        assert lines[-1].startswith(f"serving tiny at http://127.0.0.1:{port}/v1"), lines
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
        assert [m["id"] for m in r.json()["data"]] == ["tiny"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stdout.read()
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
