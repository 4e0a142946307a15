"""Where a training run starts in its output_dir: fresh, resumed from a checkpoint, or finished from one.

A new run refuses a folder that holds another run unless told to overwrite it; `resume_from_checkpoint` picks the
newest complete checkpoint (`checkpoints`), and one that already holds every planned step (`planned_steps`) is
finished from without training. `FINISHED_MARKER` is written last, once a run is complete (`run.finish`), and
`interrupted_message` tells after Ctrl-C which checkpoint to go on from.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from expertkit.core.config import save_config
from expertkit.core.errors import ConfigError, ExpertkitError
from expertkit.core.runs import RESOLVED_CONFIG, TRAINER_LOG
from expertkit.train.config import TrainConfig

logger = logging.getLogger(__name__)
FINISHED_MARKER = "expertkit_finished"


def prepare_output_dir(config: TrainConfig, write: bool = True) -> str | None:
    """Refuse to overwrite a run by accident; pick the checkpoint to resume from; save the resolved config.

    write=False (the ranks other than 0 of a multi-process run): the same checks and choice, no writes.
    """
    from expertkit.train.checkpoints import list_checkpoints, resolve_resume

    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"output_dir '{out}' is a file, not a folder",
            hint="set output_dir to a folder path (it is created when missing), e.g. saves/my-run",
        )
    checkpoints = list_checkpoints(out)
    finished = (out / FINISHED_MARKER).is_file()
    if config.overwrite_output_dir and not config.resume_from_checkpoint and out.is_dir():
        if not write:  # rank 0 clears the folder; this rank starts fresh
            return None
        for _, d, _ in checkpoints:
            shutil.rmtree(d)
        (out / FINISHED_MARKER).unlink(missing_ok=True)
        (out / TRAINER_LOG).unlink(missing_ok=True)
    elif not config.resume_from_checkpoint and (checkpoints or finished):
        what = "a finished run" if finished else f"checkpoints ({', '.join(d.name for _, d, _ in checkpoints[-3:])})"
        raise ExpertkitError(
            f"output_dir '{out}' already holds {what}",
            hint="continue it with resume_from_checkpoint=true, start over with "
            "overwrite_output_dir=true, or choose another output_dir",
        )
    resume = resolve_resume(out, config.resume_from_checkpoint)
    if not write:
        return resume
    # a fresh start must not append to an earlier run's log; a resumed one drops the steps it will repeat
    trim_log(out / TRAINER_LOG, checkpoint_step(resume))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where a folder of the path belongs, no permission, a read-only disk
        raise ConfigError(
            f"cannot create output_dir '{out}': {e.strerror}", hint="choose a folder you can write to"
        ) from None
    save_config(config, out / RESOLVED_CONFIG)
    return resume


def resume_is_at_end(config: TrainConfig, resume: str | None, n_examples: int) -> bool:
    """Whether the checkpoint to resume from already holds every planned step.

    transformers would train one step more than planned from there (it checks max_steps only after a step), so
    a finished run is refused with what to change, and an unfinished one (killed after its last checkpoint) is
    finished from that checkpoint without training.
    """
    if not resume:
        return False
    done, planned = checkpoint_step(resume), planned_steps(config, n_examples)
    if done < planned:
        return False
    if (Path(config.output_dir) / FINISHED_MARKER).is_file():
        limit = (
            f"max_steps={config.max_steps}" if config.max_steps > 0 else f"num_train_epochs={config.num_train_epochs:g}"
        )
        raise ExpertkitError(
            f"output_dir '{config.output_dir}' holds a finished run: {Path(resume).name} is at step {done}, "
            f"and {limit} plans {planned} steps, so there is nothing left to train",
            hint="to train further, raise max_steps or num_train_epochs (with resume_from_checkpoint=true); "
            "to start over, overwrite_output_dir=true",
        )
    logger.warning(
        "%s is at step %d of %d planned: nothing left to train; finishing the run from it",
        Path(resume).name,
        done,
        planned,
    )
    return True


def finish_from_checkpoint(trainer, checkpoint: str):
    """The TrainOutput of a run whose last checkpoint holds every step: its weights and state, no training."""
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    trainer._load_from_checkpoint(checkpoint)
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    losses = [x["loss"] for x in trainer.state.log_history if "loss" in x]
    train_loss = sum(losses) / len(losses) if losses else float("nan")
    return TrainOutput(trainer.state.global_step, train_loss, {"train_loss": train_loss, "train_runtime": 0.0})


def planned_steps(config: TrainConfig, n_examples: int) -> int:
    import math

    if config.max_steps > 0:
        return config.max_steps
    per_pass = config.per_device_train_batch_size * (config.ppo_buffer_size if config.stage == "ppo" else 1)
    per_epoch = max(math.ceil(math.ceil(n_examples / per_pass) / config.gradient_accumulation_steps), 1)
    return math.ceil(config.num_train_epochs * per_epoch)


def checkpoint_step(checkpoint: str | None) -> int:
    """The global step a checkpoint folder was saved at (from its trainer_state.json)."""
    import json

    if not checkpoint:
        return 0
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text()).get("global_step", 0))


def trim_log(path: Path, step: int) -> None:
    """Drop log lines of steps the resumed run will repeat (they were logged after the checkpoint)."""
    import json

    from expertkit.core.runs import write_text_atomic

    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        keep = [x for x in lines if x.strip() and json.loads(x).get("current_steps", 0) <= step]
        write_text_atomic(path, "".join(x + "\n" for x in keep))


def interrupted_message(config: TrainConfig, step: int) -> str:
    """What Ctrl-C left behind, and how to go on."""
    from expertkit.train.checkpoints import list_checkpoints

    complete = [(s, d) for s, d, ok in list_checkpoints(config.output_dir) if ok]
    if not complete:
        return (
            f"interrupted at step {step}, before the first checkpoint (save_steps={config.save_steps}): "
            "running the same command again starts from step 0"
        )
    last_step, last = complete[-1]
    return (
        f"interrupted at step {step}; {last} (step {last_step}) is complete: continue from it by running the "
        "same command with resume_from_checkpoint=true"
    )
