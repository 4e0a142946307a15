"""Stage kto: preference tuning on single answers labelled good or bad (kto_tag), on TRL's KTOTrainer.

    expertkit train ... stage=kto dataset=insurance_kto per_device_train_batch_size=4

Only what differs from the run skeleton (`expertkit.train.run`) and from stage dpo (`expertkit.train.dpo`):
- each row is a prompt and one answer with a label; both are rendered with the chat template as DPO renders a pair
  and cut to cutoff_len the same way. The rows are shuffled once (seed): TRL reads them in a fixed order, because
  its KL estimate pairs each answer with the next prompt of the same batch (so a batch needs 2 rows or more);
- kto_chosen_weight / kto_rejected_weight weigh the losses of good and bad answers (TRL's desirable_weight /
  undesirable_weight); pref_beta is beta;
- the reference is the one DPO uses (LoRA: the adapter disabled or a frozen copy of a continued adapter);
- the learning check compares log p(answer | prompt) of the tuned and the starting model on training rows: the
  good answers should gain relative to the bad ones.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from expertkit.core.runs import LEARNING_CHECK, write_json_atomic
from expertkit.core.schema import UnpairedExample
from expertkit.train.config import TrainConfig
from expertkit.train.dpo import PREFERENCE_ARGS, answer_logp, describe_reference, preference_trainer, starting_model
from expertkit.train.run import Precision, StageData, refuse_empty_after_cut

logger = logging.getLogger(__name__)


def prepare_data(config: TrainConfig, tokenizer) -> StageData:
    from expertkit.data.load import load_preference_datasets, require_usable, split_validation

    rows = require_usable(load_preference_datasets(config, "unpaired"), config.max_invalid_ratio, mix=config)
    train_rows, val_rows = split_validation(rows, config.val_size, config.seed)
    train_set, stats, kept = tokenize_rows(train_rows, tokenizer, config, "train")
    val_set = tokenize_rows(val_rows, tokenizer, config, "validation")[0] if val_rows else []
    order = list(range(len(train_set)))
    random.Random(config.seed).shuffle(order)  # TRL samples in order: mix good and bad answers within batches
    train_set = [train_set[i] for i in order]
    good = sum(e["label"] for e in train_set)
    header = {
        "rows": f"{len(train_set)} answers ({good} desirable, {len(train_set) - good} undesirable; {stats.dropped} "
        f"dropped: cut to nothing) + {len(val_set)} validation, from {len(rows)} valid",
        "sequences": f"longest prompt + answer {stats.longest} tokens vs cutoff_len {config.cutoff_len} "
        f"({stats.truncated} cut)",
    }
    return StageData(train_set, val_set, header, stats.longest, kept, stats)


@dataclass
class RowStats:
    rows: int
    dropped: int
    truncated: int
    longest: int


def tokenize_rows(rows: list[UnpairedExample], tokenizer, config: TrainConfig, split: str):
    """prompt_ids / completion_ids / label per row, cut to cutoff_len as pairs are; rows left without answer dropped."""
    from expertkit.model.render import cut_pair, render_pair

    examples, kept, dropped, truncated, longest = [], [], [], 0, 0
    for row in rows:
        prompt, answer = render_pair(tokenizer, row.prompt, row.completion, row.tools, row.source)
        longest = max(longest, len(prompt) + len(answer))
        cut = cut_pair(prompt, answer, answer, config.cutoff_len)
        truncated += cut.truncated
        if cut.empty_answer:
            dropped.append(row.source or "?")
            continue
        examples.append({"prompt_ids": cut.prompt_ids, "completion_ids": cut.chosen_ids, "label": bool(row.label)})
        kept.append((row, examples[-1]))
    refuse_empty_after_cut(examples, dropped, config, split, "row")
    return examples, RowStats(len(examples), len(dropped), truncated, longest), kept


def build_trainer(config: TrainConfig, model, tokenizer, data: StageData, precision: Precision):
    from trl import KTOConfig, KTOTrainer

    from expertkit.train.run import training_arguments

    class PretokenizedKTOTrainer(KTOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            # already prompt_ids / completion_ids / label, cut as LLaMA-Factory cuts them; only TRL's KL answers
            # are added: each batch's answers rotated by one, so each meets another row's prompt
            if not self.calculate_KL:
                return dataset

            def rotate(batch):
                return {"KL_completion_ids": batch["completion_ids"][-1:] + batch["completion_ids"][:-1]}

            return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)

    args = training_arguments(
        config,
        precision,
        KTOConfig,
        beta=config.pref_beta,
        desirable_weight=config.kto_chosen_weight,
        undesirable_weight=config.kto_rejected_weight,
        **PREFERENCE_ARGS,
    )
    return preference_trainer(PretokenizedKTOTrainer, config, model, tokenizer, data, args)


def header_lines(config: TrainConfig, trainer) -> dict[str, str]:
    return {
        "preference": f"KTO, beta {config.pref_beta:g}, weights desirable {config.kto_chosen_weight:g} / "
        f"undesirable {config.kto_rejected_weight:g}",
        "reference": describe_reference(config, trainer),
    }


# --- learning check -----------------------------------------------------------------------------------------------


@dataclass
class RowCheck:
    source: str
    desirable: bool
    logp_start: float  # log p(answer | prompt) under the starting model
    logp_tuned: float


@dataclass
class UnpairedCheck:
    desirable: int
    undesirable: int
    desirable_change: float | None  # mean log p change (tuned - start) of the desirable answers
    undesirable_change: float | None
    first_loss: float | None
    last_loss: float | None
    samples: list[RowCheck] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def show(x: float | None) -> str:
            return "n/a" if x is None else f"{x:+.3f}"

        lines = [
            f"log p(answer) change, tuned - start: desirable {show(self.desirable_change)} ({self.desirable} rows), "
            f"undesirable {show(self.undesirable_change)} ({self.undesirable} rows)"
        ]
        if self.first_loss is not None and self.last_loss is not None:
            lines.append(f"loss: {self.first_loss:.4f} -> {self.last_loss:.4f}")
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


def check_learning(trainer, tokenizer, data: StageData, config: TrainConfig):
    if config.learning_check_samples <= 0:
        return None
    rng = random.Random(config.seed)
    picked = []
    for label in (True, False):  # up to learning_check_samples of each kind
        rows = [r for r in data.check_rows if r[1]["label"] is label]
        picked += rng.sample(rows, min(config.learning_check_samples, len(rows)))
    model = trainer.model
    model.eval()
    samples = []
    for row, ex in picked:
        with starting_model(trainer) as start:
            before = answer_logp(start, ex["prompt_ids"], ex["completion_ids"])
        after = answer_logp(model, ex["prompt_ids"], ex["completion_ids"])
        samples.append(RowCheck(row.source, ex["label"], before, after))
    check = summarise(samples, trainer.state.log_history, config)
    write_json_atomic(Path(config.output_dir) / LEARNING_CHECK, asdict(check))
    logger.info("learning check (saved to learning_check.json):\n%s", check.summary())
    return check


def summarise(samples: list[RowCheck], log_history: list[dict], config: TrainConfig) -> UnpairedCheck:
    def mean_change(rows: list[RowCheck]) -> float | None:
        return sum(r.logp_tuned - r.logp_start for r in rows) / len(rows) if rows else None

    good = [s for s in samples if s.desirable]
    bad = [s for s in samples if not s.desirable]
    losses = [h["loss"] for h in log_history if "loss" in h]
    check = UnpairedCheck(
        len(good),
        len(bad),
        mean_change(good),
        mean_change(bad),
        losses[0] if losses else None,
        losses[-1] if losses else None,
        samples,
    )
    up, down = check.desirable_change, check.undesirable_change
    if up is not None and down is not None and up <= down:
        check.warnings.append(
            f"the desirable answers did not gain on the undesirable ones (log p change {up:+.3f} vs {down:+.3f}): "
            f"train longer (num_train_epochs={config.num_train_epochs * 3:g}) or raise learning_rate (now "
            f"{config.learning_rate:g}), lower pref_beta (now {config.pref_beta:g}), or check the kto_tag labels"
        )
    return check
