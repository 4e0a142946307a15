"""What `expertkit train` does with mistakes and interruptions around a run: a clear message, never a traceback,
and never a step more than planned."""

from __future__ import annotations

import logging

import pytest

from expertkit.core.config import load_config
from expertkit.core.errors import ConfigError, ExpertkitError
from expertkit.train.config import TrainConfig
from expertkit.train.resume import FINISHED_MARKER
from expertkit.train.run import run


def config(tiny_model, identity_dir, out, **over) -> TrainConfig:
    values = {
        "model_name_or_path": str(tiny_model),
        "dataset": "identity",
        "dataset_dir": str(identity_dir),
        "output_dir": str(out),
        "cutoff_len": 128,
        "max_steps": 3,
        "save_steps": 1,
        "logging_steps": 1,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_check_samples": 0,
        "plot_loss": False,
        "bf16": False,
    }
    values.update(over)
    return load_config(TrainConfig, None, values)


def test_output_dir_that_is_a_file_is_a_config_error(tiny_model, identity_dir, tmp_path):
    f = tmp_path / "train.yaml"
    f.write_text("x: 1\n")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        run(config(tiny_model, identity_dir, f))
    with pytest.raises(ConfigError, match="cannot create output_dir"):
        run(config(tiny_model, identity_dir, f / "run"))


def test_unknown_optimiser_is_named_with_close_names(tiny_model, identity_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown optim 'adamw'") as e:
        run(config(tiny_model, identity_dir, tmp_path / "run", optim="adamw"))
    assert "adamw_torch" in str(e.value.hint)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_resume_at_the_last_step_trains_no_extra_step(tiny_model, identity_dir, tmp_path):
    out = tmp_path / "run"
    assert run(config(tiny_model, identity_dir, out)).global_step == 3
    # a finished run: nothing left to train is said, not done (transformers would train step 4)
    with pytest.raises(ExpertkitError, match="nothing left to train"):
        run(config(tiny_model, identity_dir, out, resume_from_checkpoint=True))
    assert (out / FINISHED_MARKER).is_file() and not (out / "checkpoint-4").exists()
    # killed after its last checkpoint, before the final save: finished from that checkpoint, still 3 steps
    (out / FINISHED_MARKER).unlink()
    (out / "adapter_model.safetensors").unlink()
    result = run(config(tiny_model, identity_dir, out, resume_from_checkpoint=True))
    assert result.global_step == 3 and not (out / "checkpoint-4").exists()
    assert (out / "adapter_model.safetensors").is_file() and (out / FINISHED_MARKER).is_file()
    # raising max_steps continues the run
    assert run(config(tiny_model, identity_dir, out, resume_from_checkpoint=True, max_steps=4)).global_step == 4


def test_ctrl_c_says_which_checkpoint_to_resume_from(tiny_model, identity_dir, tmp_path, monkeypatch, caplog):
    from transformers import Trainer

    real_train = Trainer.train

    def train_then_interrupt(self, *args, **kwargs):
        self.args.max_steps = 2  # trains and checkpoints 2 steps, then Ctrl-C
        real_train(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", train_then_interrupt)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="expertkit"), pytest.raises(KeyboardInterrupt):
        run(config(tiny_model, identity_dir, out, max_steps=5))
    assert "interrupted at step 2" in caplog.text
    assert "checkpoint-2 (step 2) is complete" in caplog.text and "resume_from_checkpoint=true" in caplog.text
    assert not (out / FINISHED_MARKER).exists()
