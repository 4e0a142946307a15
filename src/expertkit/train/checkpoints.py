"""Resumable runs: which checkpoints are complete, and which one to resume from.

transformers picks the newest `checkpoint-N` folder even when a kill during the save left it half written
(transformers#35782). We mark a checkpoint complete only after the trainer has finished writing it, and
resume from the newest marked one.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from expertkit.core.errors import ExpertkitError

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "expertkit_complete"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path, bool]]:
    """(step, folder, complete) for every checkpoint folder, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _CHECKPOINT.match(d.name)
        if m and d.is_dir():
            found.append((int(m.group(1)), d, (d / COMPLETE_MARKER).is_file()))
    return sorted(found)


def mark_complete(checkpoint_dir: str | Path) -> None:
    from expertkit.core.runs import write_text_atomic

    write_text_atomic(Path(checkpoint_dir) / COMPLETE_MARKER, "complete\n")


def resolve_resume(output_dir: str | Path, resume: bool | str | None) -> str | None:
    """The checkpoint folder to resume from (None: start fresh), removing half-written newer ones."""
    if not resume:
        return None
    if isinstance(resume, str) and resume.lower() not in ("true", "latest"):
        path = Path(resume)
        if not (path / "trainer_state.json").is_file():
            # list the complete checkpoints where the user looked (a run folder, or the checkpoint's own folder)
            folders = [path] if path.is_dir() else []
            folders += [f for f in (path.parent, Path(output_dir)) if f not in folders]
            found = [str(d) for f in folders for _, d, ok in list_checkpoints(f) if ok]
            hint = f"complete checkpoints: {', '.join(found[-5:])}" if found else "no complete checkpoint found near it"
            raise ExpertkitError(
                f"resume_from_checkpoint '{resume}' is not a checkpoint folder (no trainer_state.json)",
                hint=hint + "; or resume_from_checkpoint=true for the newest one in output_dir",
            )
        return str(path)
    checkpoints = list_checkpoints(output_dir)
    complete = [(step, d) for step, d, ok in checkpoints if ok]
    if not complete:
        if checkpoints:
            logger.warning("no complete checkpoint in %s (only half-written ones); starting from step 0", output_dir)
        else:
            logger.warning("resume_from_checkpoint is set but %s has no checkpoint; starting from step 0", output_dir)
        for _, d, _ in checkpoints:
            shutil.rmtree(d, ignore_errors=True)
        return None
    step, chosen = complete[-1]
    for s, d, ok in checkpoints:
        if s > step or not ok:
            logger.warning("removing incomplete checkpoint %s (interrupted while it was being written)", d.name)
            shutil.rmtree(d, ignore_errors=True)
    logger.info("resuming from %s (step %d, the newest complete checkpoint)", chosen, step)
    return str(chosen)
