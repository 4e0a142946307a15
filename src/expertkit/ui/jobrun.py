"""The small parent of every background job: runs the command, then records how it ended in the job file.

    python -m expertkit.ui.jobrun JOB_FILE -- python -m expertkit train run.yaml

The web UI starts this in a session of its own, so neither a closed browser tab nor Ctrl-C on the UI reaches
the job. Stop signals go to the whole process group: the command gets them directly, this parent only waits and
then writes `returncode` and `ended` into JOB_FILE, so the UI knows how the job ended even if the UI was restarted
meanwhile. Imports nothing heavy: it stays in memory as long as the job runs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from expertkit.core.runs import write_json_atomic


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m expertkit.ui.jobrun JOB_FILE -- COMMAND ...", file=sys.stderr)
        return 2
    job_file, command = Path(argv[0]), argv[2:]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)  # the command got the same signal: wait for it to end
    child = subprocess.Popen(command)
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:  # pragma: no cover - Python retries wait() itself
            continue
    try:
        record = json.loads(job_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    record.update(returncode=code, ended=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_json_atomic(job_file, record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
