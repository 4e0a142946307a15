"""Background jobs: `expertkit train|eval|export CONFIG` started as processes of their own, stopped by signal.

A job lives in a folder as three files, so its state survives the browser tab and the UI process alike:

    webui_train.yaml   the config the job runs (what "show YAML" showed)
    webui_train.log    its stdout and stderr
    webui_train.json   {"command", "pid", "started", "stop_requested", "returncode", "ended"}

The pid is that of `expertkit.ui.jobrun`, the job's parent, which writes `returncode` when the job ends. Training
jobs use the run's output_dir as their folder; eval jobs their output_dir; export jobs a folder under saves_dir.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from expertkit.core.errors import ExpertkitError
from expertkit.core.feedback import now
from expertkit.core.runs import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

JobState = Literal["none", "running", "finished", "stopped", "failed"]

STOP_GRACE_S = 20.0  # after SIGINT (a clean stop: training saves nothing more, logs how to resume), then SIGTERM

_children: dict[int, subprocess.Popen] = {}  # processes this UI started, reaped so none lingers as a zombie


@dataclass(frozen=True)
class Job:
    folder: Path
    name: str  # train, eval, export

    @property
    def record_path(self) -> Path:
        return self.folder / f"webui_{self.name}.json"

    @property
    def log_path(self) -> Path:
        return self.folder / f"webui_{self.name}.log"

    @property
    def config_path(self) -> Path:
        return self.folder / f"webui_{self.name}.yaml"

    def record(self) -> dict[str, Any]:
        try:
            data = json.loads(self.record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def state(self) -> JobState:
        """running (its process lives), finished (exit 0), stopped (asked to, or interrupted), failed, or none."""
        record = self.record()
        if not record:
            return "none"
        if is_alive(record.get("pid")):
            return "running"
        code = record.get("returncode")
        if code == 0:
            return "finished"
        if record.get("stop_requested") or code in (130, -signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGTERM):
            return "stopped"
        return "failed" if code is not None else "stopped"  # no code: its parent was killed with it

    def tail(self, max_bytes: int = 20_000) -> str:
        """The end of the log (the last max_bytes, cut at a line start)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - max_bytes))
                data = fh.read()
        except OSError:
            return ""
        text = data.decode("utf-8", errors="replace")
        if size > max_bytes and "\n" in text:
            text = text.split("\n", 1)[1]
        return text


def expertkit_command(args: list[str]) -> list[str]:
    """How to run `expertkit ARGS` with this very Python (no PATH lookup, same virtual environment)."""
    return [sys.executable, "-m", "expertkit", *args]


def shown_command(args: list[str]) -> str:
    """The command a user would type for the same job."""
    return shlex.join(["expertkit", *args])


def start_job(
    job: Job, args: list[str], config_yaml: str, private: bool = False, env: dict[str, str] | None = None
) -> None:
    """Write the job's config and start `expertkit ARGS` detached: its own session, stdin closed, output logged.

    private: the config holds an API key, so its file is readable by its owner only (0600).
    env: variables added to the job's environment (an API key the command reads from there, never written down)."""
    if job.state() == "running":
        raise ExpertkitError(
            f"a {job.name} job is already running in {job.folder}", hint="stop it first, or choose another folder"
        )
    try:
        job.folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExpertkitError(f"cannot create '{job.folder}': {e.strerror}", hint="choose a folder you can write") from e
    if private:
        write_private(job.config_path, config_yaml)
    else:
        write_text_atomic(job.config_path, config_yaml)
    command = expertkit_command(args)
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}  # the log shows progress as it happens
    with open(job.log_path, "wb") as log:
        log.write(f"$ {shown_command(args)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "expertkit.ui.jobrun", str(job.record_path), "--", *command],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a closed tab or Ctrl-C on the UI does not reach the job
            env=env,
        )
    write_json_atomic(
        job.record_path, {"command": shown_command(args), "pid": proc.pid, "started": now(), "log": str(job.log_path)}
    )
    _children[proc.pid] = proc
    threading.Thread(target=_reap, args=(proc,), daemon=True).start()
    logger.info("started %s (pid %d), log %s", shown_command(args), proc.pid, job.log_path)


def write_private(path: Path, text: str) -> None:
    """Write text atomically to a file only its owner can read (0600 from its creation, never wider)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mkstemp makes 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _reap(proc: subprocess.Popen) -> None:
    proc.wait()
    _children.pop(proc.pid, None)


def stop_job(job: Job, grace_s: float = STOP_GRACE_S) -> bool:
    """Ask a running job to stop: SIGINT to its process group, SIGTERM after grace_s (at once on a second stop)."""
    record = job.record()
    pid = record.get("pid")
    if not is_alive(pid):
        return False
    again = bool(record.get("stop_requested"))
    write_json_atomic(job.record_path, {**record, "stop_requested": now()})
    _signal_group(pid, signal.SIGTERM if again else signal.SIGINT)
    if not again:
        threading.Thread(target=_escalate, args=(pid, grace_s), daemon=True).start()
    return True


def _escalate(pid: int, grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not is_alive(pid):
            return
        time.sleep(0.2)
    _signal_group(pid, signal.SIGTERM)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the job parent leads its own group: the command and its workers get it too
    except (ProcessLookupError, PermissionError):
        pass


def is_alive(pid: object) -> bool:
    """Whether pid is a live job parent of ours (not a zombie, not an unrelated process that reused the pid)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        return False
    if Path("/proc/self/cmdline").exists():  # a zombie's cmdline is empty
        try:
            return b"expertkit.ui.jobrun" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
    try:  # no /proc (macOS): trust the pid
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
