"""One recipe for the tests that kill a training run with SIGKILL right after its first complete checkpoint and
resume it (stages dpo and ppo): the same command runs once to the end as the reference.

    reference, out, last = kill_then_resume(args, tmp_path)   # args(output_dir) -> the command line
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def kill_then_resume(args: Callable[[Path], list[str]], tmp_path: Path) -> tuple[Path, Path, int]:
    """(reference run folder, killed-and-resumed run folder, last complete checkpoint's step before the kill)."""
    from expertkit.train.checkpoints import COMPLETE_MARKER, list_checkpoints

    reference = tmp_path / "reference"
    subprocess.run(args(reference), check=True, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(args(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(out.glob(f"checkpoint-*/{COMPLETE_MARKER}")) and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = [s for s, _, ok in list_checkpoints(out) if ok]
    resumed = subprocess.run(args(out) + ["resume_from_checkpoint=true"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    return reference, out, done[-1]
