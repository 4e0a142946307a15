"""A run killed with SIGKILL at any moment and restarted loses at most save_steps steps and continues the
same schedule; a half-written checkpoint is never resumed from (transformers#35782)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from expertkit.train.checkpoints import COMPLETE_MARKER, list_checkpoints, resolve_resume


def train_args(tiny_model, identity_dir, out, steps: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "expertkit",
        "train",
        f"model_name_or_path={tiny_model}",
        "dataset=identity",
        f"dataset_dir={identity_dir}",
        f"output_dir={out}",
        f"max_steps={steps}",
        "save_steps=5",
        "logging_steps=1",
        "per_device_train_batch_size=1",
        "gradient_accumulation_steps=1",
        "learning_rate=1e-3",
        "lr_scheduler_type=cosine",
        "warmup_steps=3",
        "learning_check_samples=0",
        "plot_loss=false",
        "bf16=false",
        "lora_dropout=0.1",
    ]


def losses(out: Path) -> dict[int, float]:
    lines = (out / "trainer_log.jsonl").read_text().splitlines()
    return {r["current_steps"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def test_sigkill_then_resume_continues_the_same_schedule(tiny_model, identity_dir, tmp_path):
    steps = 150
    reference = tmp_path / "reference"
    subprocess.run(train_args(tiny_model, identity_dir, reference, steps), check=True, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        train_args(tiny_model, identity_dir, out, steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not list(out.glob(f"checkpoint-*/{COMPLETE_MARKER}")) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # somewhere in the next steps, possibly inside a save
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = [s for s, _, ok in list_checkpoints(out) if ok]
    assert done and done[-1] < steps

    resumed = subprocess.run(
        train_args(tiny_model, identity_dir, out, steps) + ["resume_from_checkpoint=true"],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {out / f'checkpoint-{done[-1]}'}" in resumed.stderr
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == steps
    ref, got = losses(reference), losses(out)
    assert sorted(got) == sorted(ref)  # one log line per step, no repeats
    for step in range(done[-1] + 1, steps + 1):
        assert abs(got[step] - ref[step]) < 1e-4, f"step {step}: {got[step]} vs {ref[step]}"


def test_half_written_checkpoint_is_skipped_and_removed(tmp_path):
    for step, complete in [(5, True), (10, True), (15, False)]:
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "trainer_state.json").write_text("{}")
        if complete:
            (d / COMPLETE_MARKER).write_text("complete\n")
    assert resolve_resume(tmp_path, True) == str(tmp_path / "checkpoint-10")
    assert not (tmp_path / "checkpoint-15").exists()
    assert resolve_resume(tmp_path, False) is None


def test_resume_with_nothing_to_resume_starts_fresh(tmp_path):
    assert resolve_resume(tmp_path, True) is None
