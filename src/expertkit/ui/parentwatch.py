"""Run a command that must not outlive the process that started it, even when that one is killed with SIGKILL.

    python -m expertkit.ui.parentwatch PARENT_PID -- python -m expertkit serve ...

On Linux it asks the kernel for SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG, kept across exec) and then
becomes the command (exec: same pid, nothing stays in between). Elsewhere it runs the command as a child, polls
its own parent once a second and stops the command when the parent is gone. Either way, if the parent is already
gone when it starts, it exits at once. Imports only the standard library: it starts in milliseconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_S = 1.0


def set_parent_death_signal(sig: int) -> bool:
    """Ask Linux to send sig to this process when its parent exits; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print("usage: python -m expertkit.ui.parentwatch PARENT_PID -- COMMAND ...", file=sys.stderr)
        return 2
    parent, command = int(argv[0]), argv[2:]
    armed = set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before (or while) the signal was armed
        return 1
    if armed:
        os.execvp(command[0], command)  # the death signal stays set across exec
    return watch(parent, command)


def watch(parent: int, command: list[str]) -> int:
    """Without prctl: run the command and stop it (SIGTERM, then SIGKILL) once the parent is gone."""
    child = subprocess.Popen(command)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, _: child.send_signal(s))
    while child.poll() is None:
        if os.getppid() != parent:
            child.terminate()
            try:
                return child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                return child.wait()
        time.sleep(POLL_S)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
