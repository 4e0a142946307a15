"""ui/jobs.py and ui/runs.py: detached jobs with a state on disk, stop by signal, runs read from their folders."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from expertkit.core.errors import ExpertkitError
from expertkit.ui import jobs
from expertkit.ui.jobs import Job, start_job, stop_job
from expertkit.ui.runs import FINISHED_MARKER, list_runs, read_progress, run_status


def wait_for(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture
def fake_command(monkeypatch):
    """Jobs run a small Python script instead of `expertkit ...` (same parent, log and job file)."""

    def use(script: str):
        monkeypatch.setattr(jobs, "expertkit_command", lambda args: [sys.executable, "-c", script, *args])

    return use


def test_a_job_runs_detached_logs_and_records_how_it_ended(tmp_path, fake_command):
    fake_command("import sys; print('hello from', sys.argv[1:])")
    job = Job(tmp_path / "run", "train")
    start_job(job, ["train", "x.yaml"], "a: 1\n")
    record = job.record()
    assert os.getsid(record["pid"]) == record["pid"]  # its own session: Ctrl-C on the UI does not reach it
    wait_for(lambda: job.state() == "finished")
    assert job.config_path.read_text() == "a: 1\n"
    assert "$ expertkit train x.yaml" in job.tail() and "hello from ['train', 'x.yaml']" in job.tail()
    assert job.record()["returncode"] == 0 and job.record()["command"] == "expertkit train x.yaml"


def test_a_failing_job_is_failed(tmp_path, fake_command):
    fake_command("raise SystemExit(3)")
    job = Job(tmp_path, "eval")
    start_job(job, ["eval"], "")
    wait_for(lambda: job.state() == "failed")
    assert job.record()["returncode"] == 3


def test_stop_sends_ctrl_c_then_sigterm_and_refuses_a_second_start(tmp_path, fake_command):
    fake_command("import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    raise SystemExit(130)")
    job = Job(tmp_path, "train")
    start_job(job, ["train"], "")
    assert job.state() == "running"
    time.sleep(0.5)  # let Python start and install its Ctrl-C handler
    with pytest.raises(ExpertkitError, match="already running"):
        start_job(job, ["train"], "")
    assert stop_job(job)
    wait_for(lambda: job.state() != "running")
    assert job.state() == "stopped" and job.record()["returncode"] == 130
    assert not stop_job(job)

    stubborn = Job(tmp_path / "stubborn", "train")  # ignores Ctrl-C: SIGTERM follows after the grace period
    fake_command("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)")
    start_job(stubborn, ["train"], "")
    time.sleep(0.5)
    assert stop_job(stubborn, grace_s=0.5)
    wait_for(lambda: stubborn.state() != "running", timeout=10)
    assert stubborn.state() == "stopped"


def write_run(folder, losses, total=10, finished=False):
    folder.mkdir(parents=True)
    (folder / "expertkit_config.yaml").write_text("model_name_or_path: m\n")
    lines = [
        json.dumps({"loss": loss, "current_steps": i + 1, "total_steps": total, "remaining_time": "0:00:05"})
        for i, loss in enumerate(losses)
    ]
    (folder / "trainer_log.jsonl").write_text("\n".join(lines) + '\n{"loss": 0.1, "current_st')  # a torn last line
    if finished:
        (folder / FINISHED_MARKER).write_text("finished\n")


def test_runs_are_found_under_saves_dir_with_status_and_progress(tmp_path):
    write_run(tmp_path / "saves" / "qwen" / "lora" / "sft", [2.0, 1.5, 1.0], finished=True)
    write_run(tmp_path / "saves" / "other", [3.0])
    (tmp_path / "saves" / "qwen" / "lora" / "sft" / "checkpoint-3").mkdir()
    (tmp_path / "saves" / "not-a-run").mkdir()
    runs = {r.path.name: r for r in list_runs(tmp_path / "saves")}
    assert set(runs) == {"sft", "other"}
    assert runs["sft"].status == "finished" and runs["other"].status == "stopped"
    p = read_progress(tmp_path / "saves" / "qwen" / "lora" / "sft")
    assert (p.step, p.total, p.loss, p.remaining) == (3, 10, 1.0, "0:00:05") and p.percent == 30
    assert [pt["loss"] for pt in p.points] == [2.0, 1.5, 1.0]
    assert list_runs(tmp_path / "missing") == []
    assert run_status(tmp_path / "saves" / "other") == "stopped"


def test_resume_restarts_a_run_with_its_own_config_and_a_used_folder_is_refused(tmp_path, fake_command):
    from expertkit.core.config import load_config, save_config
    from expertkit.train.config import TrainConfig
    from expertkit.ui.train_tab import refuse_existing, resume_run

    fake_command("pass")
    with pytest.raises(ExpertkitError, match="no run selected"):
        resume_run(None)
    run = tmp_path / "run"
    config = TrainConfig(model_name_or_path="m", dataset=["identity"], output_dir=str(run), lora_rank=4)
    with pytest.raises(ExpertkitError, match="never started"):
        resume_run(str(run))
    save_config(config, run / "expertkit_config.yaml")
    refuse_existing(config)  # a config but no checkpoint or finished marker: fine
    (run / "checkpoint-2").mkdir()
    with pytest.raises(ExpertkitError, match="already holds a run"):
        refuse_existing(config)
    refuse_existing(config.model_copy(update={"resume_from_checkpoint": True}))

    job = resume_run(str(run))
    wait_for(lambda: job.state() == "finished")
    assert job.record()["command"] == f"expertkit train {job.config_path}"
    resumed = load_config(TrainConfig, job.config_path)
    assert resumed.resume_from_checkpoint is True and resumed.lora_rank == 4 and resumed.dataset == ["identity"]
