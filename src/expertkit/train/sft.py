"""Stage sft: supervised fine-tuning on instruction data (loss on the assistant turns).

    expertkit train examples/train/qwen2.5-0.5b-instruct_lora_sft.yaml
    expertkit train my.yaml lora_rank=16 output_dir=saves/r16

Only what differs from the run skeleton (`expertkit.train.run`): conversations -> ids + labels, transformers'
Trainer with our collators, and the learning check on training prompts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from expertkit.core.schema import Conversation
from expertkit.train.config import TrainConfig
from expertkit.train.run import Precision, StageData, refuse_empty_after_cut

logger = logging.getLogger(__name__)


def prepare_data(config: TrainConfig, tokenizer) -> StageData:
    train_rows, val_rows = load_conversations(config)
    train_set, stats = tokenize_conversations(train_rows, tokenizer, config, "train")
    val_set, _ = tokenize_conversations(val_rows, tokenizer, config, "validation") if val_rows else ([], None)
    n_valid = len(train_rows) + len(val_rows)
    header = {
        "rows": f"{stats.rows} train ({stats.dropped} dropped) + {len(val_rows)} validation, from {n_valid} valid",
        "sequences": f"longest {stats.longest} tokens vs cutoff_len {config.cutoff_len} ({stats.truncated} cut); "
        f"{stats.loss_tokens / max(stats.tokens, 1):.0%} of tokens carry loss",
    }
    return StageData(train_set, val_set, header, stats.longest, train_rows, stats)


def build_trainer(config: TrainConfig, model, tokenizer, data: StageData, precision: Precision):
    from transformers import Trainer

    from expertkit.train.collate import PaddedCollator, PaddingFreeCollator
    from expertkit.train.run import quiet_printer, run_callbacks, training_arguments
    from expertkit.train.speed import loss_logits_only, row_multiple, segment_attention, split_micro_batches

    if config.padding_free:
        collator = PaddingFreeCollator(loss_logits_only(config, model), row_multiple(config), tokenizer.pad_token_id)
    else:
        collator = PaddedCollator(tokenizer.pad_token_id)
    args = training_arguments(config, precision)
    split_micro_batches(config, args)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.train_set,
        eval_dataset=data.val_set or None,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=run_callbacks(config),
    )
    if segment_attention(config, model):
        from expertkit.train.attention import SegmentAttentionCallback

        trainer.add_callback(SegmentAttentionCallback())
    return quiet_printer(trainer)


def header_lines(config: TrainConfig, trainer) -> dict[str, str]:
    from expertkit.train.speed import speed_line

    return speed_line(config, trainer)


def load_conversations(config: TrainConfig) -> tuple[list[Conversation], list[Conversation]]:
    from expertkit.data.load import load_datasets, placeholder_warning, require_usable, split_validation

    datasets = load_datasets(config)
    rows = require_usable(datasets, config.max_invalid_ratio, mix=config)
    for warning in filter(None, map(placeholder_warning, datasets)):
        logger.warning("%s", warning)
    return split_validation(rows, config.val_size, config.seed)


@dataclass
class TokenStats:
    rows: int
    dropped: int  # examples left with no trainable token after cutoff_len
    truncated: int
    longest: int  # before truncation
    tokens: int
    loss_tokens: int


def tokenize_conversations(rows: list[Conversation], tokenizer, config: TrainConfig, split: str):
    """Render every conversation into ids + labels; drop (and say so) those with nothing left to learn."""
    from expertkit.model.render import render_conversation
    from expertkit.train.collate import pack_examples

    examples, dropped, truncated, longest = [], [], 0, 0
    for conv in rows:
        r = render_conversation(tokenizer, conv, config.cutoff_len, config.mask_history, config.train_on_prompt)
        longest = max(longest, r.full_length)
        truncated += r.truncated
        if r.trainable_tokens == 0:
            dropped.append(conv.source or "?")
            continue
        examples.append({"input_ids": r.input_ids, "labels": r.labels})
    refuse_empty_after_cut(examples, dropped, config, split, "example")
    tokens = sum(len(e["input_ids"]) for e in examples)
    loss_tokens = sum(sum(1 for x in e["labels"] if x != -100) for e in examples)
    stats = TokenStats(len(examples), len(dropped), truncated, longest, tokens, loss_tokens)
    if config.packing:
        examples = pack_examples(examples, config.cutoff_len)
    return examples, stats


def check_learning(trainer, tokenizer, data: StageData, config: TrainConfig):
    import random

    from expertkit.train.learning_check import run_learning_check

    if config.learning_check_samples <= 0:
        return None
    rows, stats = data.check_rows, data.stats
    samples = random.Random(config.seed).sample(rows, min(config.learning_check_samples, len(rows)))
    base = None
    if config.finetuning_type != "lora":
        from expertkit.model.load import load_model

        device = str(trainer.model.device)
        base = load_model(config.model_name_or_path, trainer.model.dtype, config.trust_remote_code, device=device)
    check = run_learning_check(
        trainer.model,
        tokenizer,
        samples,
        trainer.state.log_history,
        config,
        stats.rows,
        stats.loss_tokens / max(stats.tokens, 1),
        base_model=base,
        global_step=trainer.state.global_step,
        world_size=trainer.args.world_size,
        truncated=stats.truncated,
        dropped=stats.dropped,
        longest=stats.longest,
    )
    logger.info("learning check (saved to learning_check.json):\n%s", check.summary())
    return check
