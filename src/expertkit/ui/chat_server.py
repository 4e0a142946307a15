"""The UI's own chat server: `expertkit serve` on a free loopback port, which never outlives the UI.

It runs under `expertkit.ui.parentwatch`, so the kernel stops it when the UI dies, even by SIGKILL; and a pid file
(`saves_dir/webui_jobs/chat-server-<ui port>.json`) lets the next UI on that port stop a server that a lost UI left
behind (where no parent-death signal exists).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from expertkit.core.runs import write_json_atomic

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_file(config) -> Path:
    return Path(config.saves_dir) / "webui_jobs" / f"chat-server-{config.port}.json"


def serve_args(config, port: int) -> list[str]:
    args = [f"model_name_or_path={config.model_name_or_path}", "host=127.0.0.1", f"port={port}"]
    if config.adapter_name_or_path:
        args.append(f"adapter_name_or_path={config.adapter_name_or_path}")
    if config.template:
        args.append(f"template={config.template}")
    if config.kb_dir:
        args.append(f"kb_dir={config.kb_dir}")
    if config.web:
        args.append("web=true")
    return args


def start_chat_server(config) -> tuple[subprocess.Popen, int]:
    """`expertkit serve` for the chat tab, on a free loopback port; its output goes to the UI's terminal.

    Call it from the UI's main thread: Linux sends the parent-death signal when the *thread* that started the child
    ends, so a worker thread would stop the server with it."""
    stop_orphan(pid_file(config))
    port = free_port()
    args = serve_args(config, port)
    watch = [sys.executable, "-m", "expertkit.ui.parentwatch", str(os.getpid()), "--"]
    logger.info("starting the chat server: expertkit serve %s", " ".join(args))
    proc = subprocess.Popen([*watch, sys.executable, "-m", "expertkit", "serve", *args], stdin=subprocess.DEVNULL)
    try:
        write_json_atomic(pid_file(config), {"pid": proc.pid, "port": port, "ui_pid": os.getpid()})
    except OSError as e:  # a read-only saves_dir: the parent-death signal still stops the server
        logger.warning("cannot write the chat server's pid file: %s", e)
    return proc, port


def stop_orphan(path: Path, timeout: float = 10.0) -> bool:
    """Stop the chat server an earlier UI (now dead) left running, as its pid file says; True if one was stopped."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        pid, ui_pid = int(record["pid"]), int(record.get("ui_pid") or 0)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if ui_pid and _alive(ui_pid) or not _is_chat_server(pid):  # its UI lives on, or the pid is not a server of ours
        return False
    logger.warning("stopping the chat server (pid %d) that an earlier web UI left running", pid)
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _is_chat_server(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _is_chat_server(pid):
        _signal(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return True


def _is_chat_server(pid: int) -> bool:
    """Whether pid is a live `expertkit serve` (or its parentwatch), not an unrelated process that reused the pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"expertkit" in cmdline and b"serve" in cmdline


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc/self").exists():  # no /proc (macOS): trust the pid
        return True
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())  # a zombie's is empty
    except OSError:
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process(proc: subprocess.Popen, timeout: float = 30.0, record: Path | None = None) -> None:
    """Ask a child to stop (SIGTERM: the server finishes open answers), then kill it if it does not."""
    if proc.poll() is None:
        proc.terminate()
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if record is not None:
        record.unlink(missing_ok=True)
