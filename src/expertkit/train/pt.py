"""Stage pt: continued pre-training on raw domain text (loss on every token), LLaMA-Factory's way.

    expertkit train examples/train/qwen2.5-0.5b-instruct_lora_pt.yaml
    expertkit train ... stage=pt dataset=manuals_text packing=false     # one document per row, cut at cutoff_len

Only what differs from the run skeleton (`expertkit.train.run`): documents (`expertkit.data.text`) -> token ids with
the EOS token after each document -> with `packing` (on by default for pt, as in LLaMA-Factory) every document
concatenated and cut into rows of exactly cutoff_len tokens (a row may span documents; the last, shorter row is
kept), without it one row per document cut at cutoff_len. The learning check is the perplexity of held-out text
(val_size, or else a small automatic slice of the documents) before and after training.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from expertkit.core.errors import DataError
from expertkit.core.runs import LEARNING_CHECK, write_json_atomic
from expertkit.data.text import TextDocument
from expertkit.train.config import TrainConfig
from expertkit.train.run import Precision, StageData

logger = logging.getLogger(__name__)

AUTO_HELD_OUT = 0.05  # share of documents held out for the perplexity check when val_size is 0
AUTO_HELD_OUT_MAX = 200  # documents
CHECK_ROWS_MAX = 64  # held-out rows measured by the perplexity check


def prepare_data(config: TrainConfig, tokenizer) -> StageData:
    train_docs, val_docs, held_out = load_documents(config)
    train_set, stats = tokenize_documents(train_docs, tokenizer, config)
    check_set, _ = tokenize_documents(val_docs, tokenizer, config) if val_docs else ([], None)
    layout = (
        f"packed into {len(train_set)} rows of {config.cutoff_len} tokens (EOS after each document)"
        if config.packing
        else f"one row per document, longest {stats.longest} tokens vs cutoff_len {config.cutoff_len} "
        f"({stats.truncated} cut)"
    )
    header = {
        "documents": f"{len(train_docs)} train + {len(val_docs)} held out ({held_out})",
        "sequences": f"{stats.tokens:,} train tokens {layout}",
    }
    val_set = check_set if config.val_size > 0 else []  # an automatic slice only serves the learning check
    data = StageData(train_set, val_set, header, stats.longest, check_set[:CHECK_ROWS_MAX], stats)
    return data


def load_documents(config: TrainConfig) -> tuple[list[TextDocument], list[TextDocument], str]:
    """Train and held-out documents, and how the held-out ones were chosen (for the header)."""
    import random

    from expertkit.data.load import require_usable, split_validation
    from expertkit.data.text import load_text_datasets

    documents = require_usable(load_text_datasets(config), config.max_invalid_ratio, mix=config)
    if config.val_size > 0:
        train, val = split_validation(documents, config.val_size, config.seed)
        return train, val, f"val_size={config.val_size:g}"
    if config.learning_check_samples <= 0 or len(documents) < 2:
        return documents, [], "none: the perplexity check needs val_size or 2 documents or more"
    count = min(max(1, round(AUTO_HELD_OUT * len(documents))), AUTO_HELD_OUT_MAX)
    held = set(random.Random(config.seed).sample(range(len(documents)), count))
    train = [d for i, d in enumerate(documents) if i not in held]
    val = [d for i, d in enumerate(documents) if i in held]
    return train, val, f"automatic {count} of {len(documents)} documents for the perplexity check; set val_size"


@dataclass
class TextStats:
    documents: int
    tokens: int  # with the EOS tokens
    longest: int  # tokens of the longest document
    truncated: int  # documents cut at cutoff_len (packing off)
    start_perplexity: float | None = None  # of the held-out rows, measured before training


def tokenize_documents(documents: list[TextDocument], tokenizer, config: TrainConfig) -> tuple[list[dict], TextStats]:
    """Each document's ids plus EOS (a BOS first where the tokenizer adds one); packed or cut into rows."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(
            f"the tokenizer of {config.model_name_or_path} has no EOS token, which stage pt puts after each document",
            hint="use a model whose tokenizer defines eos_token",
        )
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id else []
    texts = [d.text for d in documents]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    docs = [bos + ids + [eos] for ids in encoded]
    longest = max((len(x) for x in docs), default=0)
    if config.packing:
        rows = pack_blocks(docs, config.cutoff_len)
        truncated = 0
    else:
        rows = [x[: config.cutoff_len] for x in docs]
        truncated = sum(len(x) > config.cutoff_len for x in docs)
    examples = [{"input_ids": r, "labels": list(r)} for r in rows if len(r) >= 2]
    return examples, TextStats(len(docs), sum(map(len, docs)), longest, truncated)


def pack_blocks(docs: list[list[int]], block_size: int) -> list[list[int]]:
    """Concatenate the documents (each already ends in EOS) and cut the stream into block_size rows.

    LLaMA-Factory drops the last, shorter block; it is kept here, so that a text shorter than one block still trains.
    """
    stream = [t for doc in docs for t in doc]
    return [stream[i : i + block_size] for i in range(0, len(stream), block_size)]


def build_trainer(config: TrainConfig, model, tokenizer, data: StageData, precision: Precision):
    """SFT's Trainer (the rows are ids + labels like SFT's), after measuring the starting perplexity."""
    from expertkit.train import sft

    if config.learning_check_samples > 0 and data.check_rows:
        data.stats.start_perplexity = perplexity(model, data.check_rows)
    return sft.build_trainer(config, model, tokenizer, data, precision)


def header_lines(config: TrainConfig, trainer) -> dict[str, str]:
    return {}


def perplexity(model, rows: list[dict]) -> float:
    """exp of the mean next-token loss over every predicted token of the rows."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]], device=device)
            loss = model(input_ids=ids, labels=ids).loss
            total += float(loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    model.train(was_training)
    return math.exp(total / max(count, 1))


@dataclass
class PerplexityCheck:
    held_out_rows: int
    held_out_tokens: int
    start_perplexity: float
    tuned_perplexity: float
    first_loss: float | None
    last_loss: float | None
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        change = self.tuned_perplexity / self.start_perplexity - 1
        lines = [
            f"held-out perplexity ({self.held_out_rows} rows, {self.held_out_tokens} tokens): "
            f"start {self.start_perplexity:.2f} -> tuned {self.tuned_perplexity:.2f} ({change:+.1%})"
        ]
        if self.first_loss is not None and self.last_loss is not None:
            lines.append(f"train loss: {self.first_loss:.4f} -> {self.last_loss:.4f}")
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


def check_learning(trainer, tokenizer, data: StageData, config: TrainConfig):
    start = data.stats.start_perplexity if data.stats else None
    if config.learning_check_samples <= 0 or not data.check_rows or start is None:
        logger.info("learning check skipped: no held-out text (set val_size, e.g. 0.05)")
        return None
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    check = PerplexityCheck(
        held_out_rows=len(data.check_rows),
        held_out_tokens=sum(len(r["input_ids"]) for r in data.check_rows),
        start_perplexity=start,
        tuned_perplexity=perplexity(trainer.model, data.check_rows),
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
    )
    if check.tuned_perplexity >= check.start_perplexity:
        check.warnings.append(
            f"held-out perplexity did not fall ({check.start_perplexity:.2f} -> {check.tuned_perplexity:.2f}): "
            f"train longer or raise learning_rate (now {config.learning_rate:g}); if the train loss fell, the "
            "model memorised the training text: use more text"
        )
    write_json_atomic(Path(config.output_dir) / LEARNING_CHECK, asdict(check))
    logger.info("learning check (saved to learning_check.json):\n%s", check.summary())
    return check
