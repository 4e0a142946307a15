"""Training runs as the UI sees them: folders under saves_dir, their status and progress, read from disk only.

Nothing is kept in the browser session: a reopened page (or a restarted UI) reads the same folders and shows a
running run as it is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertkit.core.runs import RESOLVED_CONFIG, TRAINER_LOG
from expertkit.ui.jobs import Job

FINISHED_MARKER = "expertkit_finished"  # written by `expertkit train` last, once the run is complete
PLOTTED = ("loss", "eval_loss", "rewards/accuracies", "rewards/margins")  # preference stages log the rewards too
MAX_DEPTH = 4  # saves/<model>/<method>/<stage>/ is LLaMA-Factory's usual depth


@dataclass
class Progress:
    step: int = 0
    total: int = 0
    loss: float | None = None
    epoch: float | None = None
    elapsed: str = ""
    remaining: str = ""
    points: list[dict[str, Any]] = field(default_factory=list)  # {"step", "loss", "series"} for the plot

    @property
    def percent(self) -> float:
        return 100.0 * self.step / self.total if self.total else 0.0


@dataclass
class RunInfo:
    path: Path
    status: str  # running, finished, stopped, failed
    progress: Progress
    updated: float


def train_job(folder: str | os.PathLike) -> Job:
    return Job(Path(folder), "train")


def run_status(folder: Path) -> str:
    """running / finished / stopped / failed, from the job file and the run's own markers."""
    state = train_job(folder).state()
    if state == "running":
        return "running"
    if (folder / FINISHED_MARKER).is_file():
        return "finished"
    if state in ("failed", "stopped"):
        return state
    return "stopped"  # started from a terminal and not finished: interrupted (or running there right now)


def read_progress(folder: str | os.PathLike) -> Progress:
    """Step, total, last loss and ETA from trainer_log.jsonl; every logged loss for the plot."""
    progress = Progress()
    path = Path(folder) / TRAINER_LOG
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return progress
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written right now
        if not isinstance(record, dict):
            continue
        step = record.get("current_steps")
        if isinstance(step, int):
            progress.step = step
            progress.total = int(record.get("total_steps") or progress.total)
            progress.epoch = record.get("epoch", progress.epoch)
            progress.elapsed = record.get("elapsed_time", progress.elapsed)
            progress.remaining = record.get("remaining_time", progress.remaining)
        for key in PLOTTED:
            if isinstance(record.get(key), (int, float)) and isinstance(step, int):
                progress.points.append({"step": step, "loss": float(record[key]), "series": key})
                if key == "loss":
                    progress.loss = float(record[key])
    return progress


def is_run_folder(folder: Path) -> bool:
    return any((folder / name).is_file() for name in (RESOLVED_CONFIG, TRAINER_LOG, train_job(folder).record_path.name))


def list_runs(saves_dir: str | os.PathLike) -> list[RunInfo]:
    """Every run folder under saves_dir (checkpoints not descended into), newest first."""
    root = Path(saves_dir)
    runs: list[RunInfo] = []
    if not root.is_dir():
        return runs
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        if is_run_folder(folder):
            runs.append(RunInfo(folder, run_status(folder), read_progress(folder), _updated(folder)))
            continue
        if depth >= MAX_DEPTH:
            continue
        try:
            children = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "checkpoint-"))]
        except OSError:
            continue
        stack += [(p, depth + 1) for p in children]
    return sorted(runs, key=lambda r: r.updated, reverse=True)


def _updated(folder: Path) -> float:
    times = [
        (folder / n).stat().st_mtime for n in (TRAINER_LOG, "webui_train.log", RESOLVED_CONFIG) if (folder / n).exists()
    ]
    return max(times, default=folder.stat().st_mtime)
