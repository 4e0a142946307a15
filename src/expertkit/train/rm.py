"""Stage rm: a reward model that scores answers, trained on chosen / rejected pairs with TRL's RewardTrainer.

    expertkit train ... stage=rm dataset=insurance_preference

Only what differs from the run skeleton (`expertkit.train.run`):
- the model is the base with a one-output score head instead of the LM head (AutoModelForSequenceClassification,
  num_labels=1; `build_model` loads it for this stage). The head is new: it trains in full, and with LoRA it is
  saved with the adapter (peft's modules_to_save), so the run folder loads with
  AutoModelForSequenceClassification.from_pretrained(base, num_labels=1) + PeftModel.from_pretrained(..., run);
- pairs are rendered and cut as stage dpo does; each side is prompt + answer, scored at its last token;
- the learning check: the share of training pairs the model ranks right (score chosen > score rejected), tuned
  vs the starting model (scored before training).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from expertkit.core.runs import LEARNING_CHECK, write_json_atomic
from expertkit.train.config import TrainConfig
from expertkit.train.run import Precision, StageData

logger = logging.getLogger(__name__)


def prepare_data(config: TrainConfig, tokenizer) -> StageData:
    from expertkit.train import dpo

    data = dpo.prepare_data(config, tokenizer)

    def whole(ex: dict) -> dict:
        prompt = ex["prompt_ids"]
        return {"chosen_ids": prompt + ex["chosen_ids"], "rejected_ids": prompt + ex["rejected_ids"]}

    data.train_set = [whole(e) for e in data.train_set]
    data.val_set = [whole(e) for e in data.val_set]
    data.check_rows = [(pair, whole(ex)) for pair, ex in data.check_rows]
    return data


def build_trainer(config: TrainConfig, model, tokenizer, data: StageData, precision: Precision):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from expertkit.train.run import quiet_printer, run_callbacks, training_arguments

    model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last token that is not padding
    data.stats = starting_scores(model, data, config)  # before training: the start the learning check compares to
    args = training_arguments(
        config,
        precision,
        RewardConfig,
        max_length=None,  # cut already, to cutoff_len
        gradient_checkpointing=False,  # build_model turns it on when asked; TRL's own default is on
        disable_dropout=True,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(data.train_set),  # chosen_ids / rejected_ids: TRL does not re-tokenize
        eval_dataset=Dataset.from_list(data.val_set) if data.val_set else None,
        processing_class=tokenizer,
        callbacks=run_callbacks(config),
    )
    return quiet_printer(trainer)


def header_lines(config: TrainConfig, trainer) -> dict[str, str]:
    return {
        "reward model": "a new score head (one output, trained in full) on the model's last hidden state",
        "loss": "pairwise: -log sigmoid(score chosen - score rejected)",
    }


# --- learning check -----------------------------------------------------------------------------------------------


def score(model, ids: list[int]) -> float:
    import torch

    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids], device=model.device)).logits[0, 0])


def _picked(data: StageData, config: TrainConfig) -> list:
    import random

    n = min(config.learning_check_samples, len(data.check_rows))
    return random.Random(config.seed).sample(data.check_rows, n)


def starting_scores(model, data: StageData, config: TrainConfig) -> list[tuple[float, float]]:
    if config.learning_check_samples <= 0:
        return []
    was_training = model.training
    model.eval()
    scores = [(score(model, ex["chosen_ids"]), score(model, ex["rejected_ids"])) for _, ex in _picked(data, config)]
    model.train(was_training)
    return scores


@dataclass
class PairScore:
    source: str
    start_chosen: float
    start_rejected: float
    tuned_chosen: float
    tuned_rejected: float


@dataclass
class RewardCheck:
    pairs: int
    right_start: int  # pairs with score(chosen) > score(rejected) before training
    right_tuned: int
    mean_margin_start: float
    mean_margin_tuned: float
    first_loss: float | None
    last_loss: float | None
    samples: list[PairScore] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"pairs ranked right (score chosen > rejected) of {self.pairs} training pairs: start {self.right_start} "
            f"-> tuned {self.right_tuned}; mean margin {self.mean_margin_start:+.3f} -> {self.mean_margin_tuned:+.3f}"
        ]
        if self.first_loss is not None and self.last_loss is not None:
            lines.append(f"loss: {self.first_loss:.4f} -> {self.last_loss:.4f} (ln 2 = 0.6931 is no preference)")
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


def check_learning(trainer, tokenizer, data: StageData, config: TrainConfig):
    if config.learning_check_samples <= 0:
        return None
    model = trainer.model
    model.eval()
    samples = []
    for (pair, ex), (c0, r0) in zip(_picked(data, config), data.stats or []):
        samples.append(PairScore(pair.source, c0, r0, score(model, ex["chosen_ids"]), score(model, ex["rejected_ids"])))
    n = max(len(samples), 1)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    check = RewardCheck(
        pairs=len(samples),
        right_start=sum(s.start_chosen > s.start_rejected for s in samples),
        right_tuned=sum(s.tuned_chosen > s.tuned_rejected for s in samples),
        mean_margin_start=sum(s.start_chosen - s.start_rejected for s in samples) / n,
        mean_margin_tuned=sum(s.tuned_chosen - s.tuned_rejected for s in samples) / n,
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
        samples=samples,
    )
    if check.pairs and (check.right_tuned <= check.pairs // 2 or check.right_tuned < check.right_start):
        check.warnings.append(
            f"the tuned model ranks {check.right_tuned}/{check.pairs} checked pairs right (start {check.right_start}):"
            f" train longer (num_train_epochs={config.num_train_epochs * 3:g}) or raise learning_rate (now "
            f"{config.learning_rate:g}), or check that chosen and rejected differ"
        )
    write_json_atomic(Path(config.output_dir) / LEARNING_CHECK, asdict(check))
    logger.info("learning check (saved to learning_check.json):\n%s", check.summary())
    return check
