"""Why a run learned too little, worked out from that run's own figures (issue 11).

The learning check calls `advise` after training. Each cause it finds names the config key to change and a value
to try, computed from the run, e.g. for 15 rows, batch 8 x 1, 40 epochs, LoRA at 5e-5, that answered 0/5 as trained:

    only 80 optimiser steps (effective batch 8 = 8 x 1 accumulation x 1 device; 2 per epoch over 15 rows): lora
    usually needs ~300 to learn a small set by heart; try num_train_epochs=150 (or, keeping 40 epochs,
    per_device_train_batch_size=2: 320 steps)
    learning_rate 5e-5 is below the usual 1e-4..5e-4 for lora; try learning_rate=2e-4

Some causes are reported on every run (the loss did not fall, a tiny step count, under 3 epochs on a small set, a
learning rate far below the range); the rest only when the run learned too little (`learned_too_little`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# usual peak learning rates per method, and the one to try when below
LR_RANGE = {"lora": (1e-4, 5e-4), "full": (1e-5, 5e-5), "freeze": (1e-5, 5e-5)}
LR_TRY = {"lora": 2e-4, "full": 2e-5, "freeze": 2e-5}
# optimiser steps a method usually needs to reproduce a small training set word for word
MEMORISE_STEPS = {"lora": 300, "full": 100, "freeze": 100}
FEW_STEPS = 10  # fewer than this is too few whatever the outcome
SMALL_DATA_ROWS = 1000  # below this, fewer than 3 epochs is usually too few
LOW_LOSS_SHARE = 0.10  # share of tokens carrying loss below which the answers are short next to the prompts
STILL_FALLING = 0.05  # the loss's fitted drop over the last quarter of the log, as a share of its level
DECAY_TO_ZERO = {"linear", "cosine", "cosine_with_restarts", "polynomial"}


@dataclass
class RunFigures:
    """What one run did: its config keys that bear on learning and the figures training produced."""

    finetuning_type: str
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    num_train_epochs: float
    max_steps: int
    learning_rate: float
    lr_scheduler_type: str
    cutoff_len: int
    mask_history: bool
    train_on_prompt: bool
    rows: int  # training examples after cutoff_len filtering
    steps: int  # optimiser steps taken (the trainer's global_step)
    losses: list[float] = field(default_factory=list)  # logged training losses, in order
    loss_token_share: float = 1.0
    world_size: int = 1
    truncated: int = 0  # examples longer than cutoff_len (dropped ones included)
    dropped: int = 0  # examples left with no answer token, skipped
    longest: int = 0  # tokens of the longest example before truncation

    @classmethod
    def from_config(cls, config, **run) -> RunFigures:
        keys = [f for f in cls.__dataclass_fields__ if f not in run and hasattr(config, f)]
        return cls(**{k: getattr(config, k) for k in keys}, **run)

    @property
    def effective_batch(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size

    def steps_per_epoch(self, batch: int | None = None, accumulation: int | None = None) -> int:
        """As transformers counts them: micro-batches per device, then whole or partial accumulations."""
        batch = batch or self.per_device_train_batch_size
        micro = math.ceil(max(self.rows, 1) / (batch * self.world_size))
        return max(math.ceil(micro / (accumulation or self.gradient_accumulation_steps)), 1)


@dataclass
class Advice:
    cause: str  # steps, learning_rate, loss_not_falling, loss_still_falling, schedule, loss_tokens, cutoff_len
    figure: float | int  # this run's figure behind the cause (steps, rate, share, count)
    key: str  # the config key to change
    value: str  # what to try ("try" in learning_check.json)
    message: str
    also: dict[str, str] = field(default_factory=dict)  # other key=value changes that fix the same cause

    def to_dict(self) -> dict:
        return {
            "cause": self.cause,
            "figure": self.figure,
            "key": self.key,
            "try": self.value,
            "message": self.message,
            "also": self.also,
        }


def learned_too_little(tuned: int, base: int, n: int) -> bool:
    """Fewer than half the samples answered as trained, and not clearly more than the base answered."""
    return n > 0 and 2 * tuned < n and tuned - base < max(2, math.ceil(n / 4))


def advise(fig: RunFigures, poor: bool) -> list[Advice]:
    """The likely causes, most telling first; `poor`: the run learned too little (more causes are looked for)."""
    found = [_too_few_steps(fig, poor), _low_learning_rate(fig, poor), _loss_not_falling(fig, poor)]
    if poor:
        found += [_loss_still_falling(fig), _decaying_schedule(fig), _few_loss_tokens(fig), _cut_examples(fig)]
    return [a for a in found if a is not None]


def _steps_wanted(fig: RunFigures, poor: bool) -> int:
    target = MEMORISE_STEPS.get(fig.finetuning_type, 100) if poor else FEW_STEPS
    wanted = target if fig.steps < target else 2 * fig.steps
    if _few_epochs(fig):
        wanted = max(wanted, 3 * fig.steps_per_epoch())
    return wanted


def _few_epochs(fig: RunFigures) -> bool:
    return fig.max_steps <= 0 and fig.rows < SMALL_DATA_ROWS and fig.num_train_epochs < 3


def _train_longer(fig: RunFigures, wanted: int) -> tuple[str, str, dict[str, str], str]:
    """(key, value, also, note): the change giving about `wanted` optimiser steps, and a smaller batch that would."""
    if fig.max_steps > 0:
        return "max_steps", str(wanted), {}, ""
    value = str(math.ceil(wanted / fig.steps_per_epoch()))
    epochs = fig.num_train_epochs
    for batch in range(fig.per_device_train_batch_size, 0, -1):
        steps = math.ceil(fig.steps_per_epoch(batch, 1) * epochs)
        if steps >= wanted:
            break
    else:
        return "num_train_epochs", value, {}, ""
    also = {}
    if batch < fig.per_device_train_batch_size:
        also["per_device_train_batch_size"] = str(batch)
    if fig.gradient_accumulation_steps > 1:
        also["gradient_accumulation_steps"] = "1"
    if not also:
        return "num_train_epochs", value, {}, ""
    changes = " ".join(f"{k}={v}" for k, v in also.items())
    return "num_train_epochs", value, also, f" (or, keeping {epochs:g} epochs, {changes}: {steps} steps)"


def _too_few_steps(fig: RunFigures, poor: bool) -> Advice | None:
    target = MEMORISE_STEPS.get(fig.finetuning_type, 100) if poor else FEW_STEPS
    if fig.steps >= target and not _few_epochs(fig):
        return None
    key, value, also, note = _train_longer(fig, _steps_wanted(fig, poor))
    batch = (
        f"effective batch {fig.effective_batch} = {fig.per_device_train_batch_size} x "
        f"{fig.gradient_accumulation_steps} accumulation x {fig.world_size} device(s); "
        f"{fig.steps_per_epoch()} per epoch over {fig.rows} rows"
    )
    if fig.steps < target:
        why = (
            f"{fig.finetuning_type} usually needs ~{target} to learn a small set by heart"
            if poor
            else "too few to learn much"
        )
        head = f"only {fig.steps} optimiser steps ({batch}): {why}"
    else:
        head = f"only {fig.num_train_epochs:g} epoch(s) over {fig.rows} rows ({fig.steps} steps, {batch}): "
        head += "small datasets usually need 3-10"
    return Advice("steps", fig.steps, key, value, f"{head}; try {key}={value}{note}", also)


def _low_learning_rate(fig: RunFigures, poor: bool) -> Advice | None:
    low, high = LR_RANGE.get(fig.finetuning_type, LR_RANGE["full"])
    if fig.learning_rate >= (low if poor else low / 2):
        return None
    to_try = format_rate(LR_TRY.get(fig.finetuning_type, low))
    return Advice(
        "learning_rate",
        fig.learning_rate,
        "learning_rate",
        to_try,
        f"learning_rate {format_rate(fig.learning_rate)} is below the usual {format_rate(low)}..{format_rate(high)} "
        f"for {fig.finetuning_type}; try learning_rate={to_try}",
    )


def _loss_not_falling(fig: RunFigures, poor: bool) -> Advice | None:
    if len(fig.losses) < 2 or fig.losses[-1] < fig.losses[0]:
        return None
    low, high = LR_RANGE.get(fig.finetuning_type, LR_RANGE["full"])
    head = f"the training loss did not fall ({fig.losses[0]:.4g} -> {fig.losses[-1]:.4g})"
    to_try = format_rate(LR_TRY.get(fig.finetuning_type, low))
    if fig.learning_rate > high:
        msg = f"{head}: learning_rate {format_rate(fig.learning_rate)} is above the usual range and can make the "
        msg += f"loss jump instead of fall; try learning_rate={to_try}"
        return Advice("loss_not_falling", fig.losses[-1], "learning_rate", to_try, msg)
    if fig.learning_rate < low:
        msg = f"{head}: the rate is too low to move the weights much; try learning_rate={to_try}"
        return Advice("loss_not_falling", fig.losses[-1], "learning_rate", to_try, msg)
    key, value, also, note = _train_longer(fig, _steps_wanted(fig, poor))
    msg = f"{head} in {fig.steps} steps: train longer; try {key}={value}{note}"
    return Advice("loss_not_falling", fig.losses[-1], key, value, msg, also)


def _loss_still_falling(fig: RunFigures) -> Advice | None:
    drop = falling_share(fig.losses)
    if drop is None or drop <= STILL_FALLING:
        return None
    k = _window(len(fig.losses))
    key, value, also, note = _train_longer(fig, _steps_wanted(fig, True))
    return Advice(
        "loss_still_falling",
        round(drop, 4),
        key,
        value,
        f"the loss was still falling at the end ({fig.losses[-k]:.4g} -> {fig.losses[-1]:.4g} over the last {k} "
        f"logged values, about {100 * drop:.0f}% down): it had more to learn; try {key}={value}{note}",
        also,
    )


def _window(n: int) -> int:
    return max(3, math.ceil(n / 4))


def falling_share(losses: list[float]) -> float | None:
    """The least-squares drop over the last quarter of the log (at least 3 values), as a share of its mean level."""
    if len(losses) < 4:
        return None
    tail = losses[-_window(len(losses)) :]
    n, mean_x, mean_y = len(tail), (len(tail) - 1) / 2, sum(tail) / len(tail)
    slope = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(tail)) / sum((i - mean_x) ** 2 for i in range(n))
    return -slope * (n - 1) / mean_y if mean_y > 0 else None


def _decaying_schedule(fig: RunFigures) -> Advice | None:
    if fig.lr_scheduler_type not in DECAY_TO_ZERO or fig.steps >= MEMORISE_STEPS.get(fig.finetuning_type, 100):
        return None
    return Advice(
        "schedule",
        fig.steps,
        "lr_scheduler_type",
        "constant",
        f"lr_scheduler_type {fig.lr_scheduler_type} takes the learning rate down to 0 within these {fig.steps} "
        "steps, so on average it trained at about half of learning_rate; in a short run try "
        "lr_scheduler_type=constant",
    )


def _few_loss_tokens(fig: RunFigures) -> Advice | None:
    if fig.loss_token_share >= LOW_LOSS_SHARE or fig.train_on_prompt:
        return None
    head = (
        f"only {100 * fig.loss_token_share:.1f}% of the tokens carry loss: the answers are short next to the prompts "
        "(system prompt, history), so each step learns from few tokens"
    )
    if fig.mask_history:
        msg = f"{head}; mask_history=true trains only the last answer of each conversation: try mask_history=false"
        return Advice("loss_tokens", round(fig.loss_token_share, 4), "mask_history", "false", msg)
    msg = f"{head}; train longer, or, if the prompts are worth learning too, try train_on_prompt=true"
    return Advice("loss_tokens", round(fig.loss_token_share, 4), "train_on_prompt", "true", msg)


def _cut_examples(fig: RunFigures) -> Advice | None:
    if fig.truncated <= 0:
        return None
    size = 1 << max(fig.longest - 1, fig.cutoff_len).bit_length()  # the power of two that holds the longest
    dropped = f", {fig.dropped} of them left with no answer token and skipped" if fig.dropped else ""
    return Advice(
        "cutoff_len",
        fig.truncated,
        "cutoff_len",
        str(size),
        f"{fig.truncated} of {fig.rows + fig.dropped} examples were cut at cutoff_len={fig.cutoff_len} (longest "
        f"{fig.longest} tokens{dropped}): the cut answer ends were never trained; try cutoff_len={size}",
    )


def format_rate(x: float) -> str:
    """1e-4 style (the way configs write rates): 0.0002 -> '2e-4', 5e-05 -> '5e-5'."""
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
