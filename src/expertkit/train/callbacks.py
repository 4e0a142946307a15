"""Trainer callbacks: a JSON-lines log with ETA, complete-checkpoint markers, and the loss plot."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from transformers import TrainerCallback

from expertkit.core.runs import TRAINER_LOG, append_jsonl
from expertkit.train.checkpoints import mark_complete

logger = logging.getLogger(__name__)
LOSS_PLOT = "training_loss.png"


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ShardCheckCallback(TrainerCallback):
    """FSDP (the fsdp key or an accelerate FSDP config): the model really is sharded when training starts."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from expertkit.train import fsdp

        if model is not None and (args.fsdp or fsdp.accelerate_config()):
            fsdp.check_sharded(model, state.is_world_process_zero)


class RunLogCallback(TrainerCallback):
    """Append every log event to trainer_log.jsonl (LLaMA-Factory's file name) and echo it without a TTY."""

    def __init__(self, output_dir: str, echo: bool):
        self.path = Path(output_dir) / TRAINER_LOG
        self.echo = echo
        self.start_time = 0.0
        self.start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_time = time.time()
        self.start_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        elapsed = time.time() - self.start_time
        done = max(state.global_step - self.start_step, 1)
        remaining = elapsed / done * max(state.max_steps - state.global_step, 0)
        record = {
            **{k: v for k, v in logs.items() if isinstance(v, (int, float))},
            "current_steps": state.global_step,
            "total_steps": state.max_steps,
            "epoch": round(state.epoch or 0.0, 4),
            "percentage": round(100 * state.global_step / max(state.max_steps, 1), 2),
            "elapsed_time": format_seconds(elapsed),
            "remaining_time": format_seconds(remaining),
        }
        if state.num_input_tokens_seen:
            record["num_input_tokens_seen"] = int(state.num_input_tokens_seen)
        append_jsonl(self.path, record)
        if self.echo and any(k in logs for k in ("loss", "eval_loss")):
            parts = [f"step {state.global_step}/{state.max_steps}"]
            keys = (
                "loss",
                "eval_loss",
                "rewards/accuracies",
                "rewards/margins",
                "rewards/score",
                "kl",
                "learning_rate",
            )
            for key in (*keys, "grad_norm"):
                if key in logs:
                    parts.append(f"{key} {logs[key]:.4g}")
            parts.append(f"elapsed {record['elapsed_time']} eta {record['remaining_time']}")
            logger.info(" | ".join(parts))


class CompleteCheckpointCallback(TrainerCallback):
    """Mark a checkpoint complete once the trainer has finished writing it (`on_save` runs after the save)."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                mark_complete(folder)


def plot_loss(log_history: list[dict], output_dir: str | os.PathLike) -> Path | None:
    """training_loss.png: the raw and smoothed training loss, and eval loss when there is one."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    parts = {k: [(h["step"], h[k]) for h in log_history if k in h] for k in ("policy_loss", "value_loss")}  # ppo
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = zip(*train)
    smoothed, value = [], losses[0]
    for x in losses:  # exponential moving average, as TensorBoard does
        value = 0.8 * value + 0.2 * x
        smoothed.append(value)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, color="#1f77b4", alpha=0.35, label="train loss")
    ax.plot(steps, smoothed, color="#1f77b4", label="train loss (smoothed)")
    if evals:
        ax.plot(*zip(*evals), "o-", color="#d62728", label="eval loss")
    for key, points in parts.items():
        if points:
            ax.plot(*zip(*points), label=key.replace("_", " "), alpha=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"training loss of {Path(output_dir).name}")
    ax.legend()
    ax.grid(alpha=0.3)
    path = Path(output_dir) / LOSS_PLOT
    tmp = path.with_name(".training_loss.tmp.png")
    fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins")


def plot_rewards(log_history: list[dict], output_dir: str | os.PathLike) -> Path | None:
    """training_rewards.png for preference stages: the rewards/* TRL logs (chosen, rejected, margins), and the
    share of pairs ranked right (rewards/accuracies) when logged; for ppo, rewards/score and the KL to the
    reference."""
    keys = sorted({k for h in log_history for k in h if k.startswith("rewards/") and k != "rewards/accuracies"})
    if not keys:  # kto logs rewards/chosen and rewards/rejected (margins only for batches holding both)
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for key in [k for k in REWARD_KEYS if k in keys] + [k for k in keys if k not in REWARD_KEYS]:
        points = [(h["step"], h[key]) for h in log_history if key in h and "step" in h]
        if points:
            left.plot(*zip(*points), label=key)
    accuracy = [(h["step"], h["rewards/accuracies"]) for h in log_history if "rewards/accuracies" in h and "step" in h]
    if accuracy:
        right.plot(*zip(*accuracy), color="#2ca02c", label="rewards/accuracies")
    kl = [(h["step"], h["kl"]) for h in log_history if "kl" in h and "step" in h]  # ppo
    if kl and not accuracy:
        right.plot(*zip(*kl), color="#9467bd", label="kl")
    else:
        right.set_ylim(-0.05, 1.05)
    for ax, title in ((left, "rewards"), (right, "KL to the reference" if kl else "pairs ranked right")):
        ax.set_xlabel("step")
        ax.set_title(f"{title} of {Path(output_dir).name}")
        if ax.get_legend_handles_labels()[0]:  # kto logs no rewards/accuracies
            ax.legend()
        ax.grid(alpha=0.3)
    path = Path(output_dir) / "training_rewards.png"
    tmp = path.with_name(".training_rewards.tmp.png")
    fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path
