"""Read the datasets a config names into conversations, keeping every invalid row as a located problem.

datasets = load_datasets(config)                           # raises only if a file can't be read at all
conversations = require_usable(datasets, config.max_invalid_ratio)   # refuses mostly-broken data
train, val = split_validation(conversations, config.val_size, config.seed)
"""

from __future__ import annotations

import logging
import math
import random
import re
from dataclasses import dataclass, field

from expertkit.core.errors import DataError, Problem
from expertkit.core.schema import Conversation
from expertkit.data.config import DataConfig
from expertkit.data.files import Record
from expertkit.data.formats import FORMATS, convert_record, detect_format
from expertkit.data.registry import DatasetEntry, read_entry, resolve_dataset

logger = logging.getLogger(__name__)

SHOWN_IN_WARNING = 5


@dataclass
class LoadedDataset:
    """One dataset after reading and checking: its valid conversations and a problem per invalid row."""

    name: str  # as given in `dataset`
    path: str  # resolved file, folder or hub id
    format: str  # alpaca | sharegpt | openai ("unknown" when no row is an object)
    total_rows: int  # rows read (after num_samples and max_samples)
    conversations: list[Conversation] = field(default_factory=list)  # valid rows, each with .source
    problems: list[Problem] = field(default_factory=list)  # every problem of every invalid row

    @property
    def invalid_rows(self) -> int:
        return self.total_rows - len(self.conversations)


def load_datasets(config: DataConfig) -> list[LoadedDataset]:
    """Read and check every dataset in `config.dataset`, in order.

    Invalid rows are kept as problems (see `require_usable`); a `DataError` is raised only when a dataset
    cannot be read at all, naming every such dataset at once.
    """
    loaded: list[LoadedDataset] = []
    errors: list[DataError] = []
    for name in config.dataset:
        try:
            loaded.append(load_dataset(name, config))
        except DataError as e:
            errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        problems = [p for e in errors for p in (e.problems or [Problem(e.message, hint=e.hint)])]
        raise DataError(f"cannot read {len(errors)} of the {len(config.dataset)} datasets:", problems=problems)
    return loaded


def load_dataset(name: str, config: DataConfig) -> LoadedDataset:
    """Read one dataset: resolve the name, read rows, sample, detect the format, convert each row."""
    entry = resolve_dataset(name, config.dataset_dir)
    media = [c for c in ("images", "videos", "audios") if c in entry.other_columns]
    if media:
        raise DataError(
            f"dataset '{name}' is multimodal (columns: {', '.join(media)}): expertkit trains text-only models",
            hint="pick a text dataset; removing the columns would leave <image>-style tags in the text",
        )
    if entry.ranking or entry.other_columns:
        what = "ranking: true" if entry.ranking else f"columns: {', '.join(entry.other_columns)}"
        raise DataError(
            f"dataset '{name}' is preference data ({what}), for DPO / reward training, which `expertkit train` "
            "(supervised fine-tuning) does not read",
            hint="pick an instruction dataset (alpaca, sharegpt or openai rows with one answer each)",
        )
    limit = config.max_samples if entry.num_samples is None else None
    records = sample_records(read_entry(entry, limit), entry.num_samples, config.max_samples, config.seed)
    formatting = entry.formatting or detect_format(records)
    if formatting is None and any(isinstance(r.data, dict) for r in records):
        raise _undetected_format_error(entry, records)
    # no row is an object (an empty file, or every line unreadable): each row is reported as it is
    spec = entry.spec(formatting or "alpaca")
    conversations: list[Conversation] = []
    problems: list[Problem] = []
    for record in records:
        conversation, found = convert_record(record, spec)
        if conversation is not None:
            conversations.append(conversation)
        problems += found
    return LoadedDataset(name, entry.path, formatting or "unknown", len(records), conversations, problems)


_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")


def placeholder_warning(dataset: LoadedDataset) -> str | None:
    """Unfilled `{{name}}` placeholders, as in LLaMA-Factory's identity.json (`{{name}}`, `{{author}}`), which
    the model would otherwise learn as written. A warning, not a problem: such text can be meant literally."""
    names: dict[str, None] = {}
    rows = []
    for conv in dataset.conversations:
        found = [m.group(0) for msg in conv.messages for m in _PLACEHOLDER.finditer(msg.content)]
        if found:
            names.update(dict.fromkeys(found))
            rows.append(conv.source)
    if not rows:
        return None
    shown = ", ".join(names)
    example = "; ".join(f"s/{n}/My{_PLACEHOLDER.match(n).group(1).capitalize()}/g" for n in list(names)[:2])
    return (
        f"{len(rows)} of {dataset.total_rows} rows of dataset '{dataset.name}' hold the unfilled placeholder(s) "
        f"{shown} (first {rows[0]}), which training would teach as written; replace them first, e.g. "
        f"sed -i '{example}' {dataset.path}"
    )


def sample_records(records: list[Record], num_samples: int | None, max_samples: int | None, seed: int) -> list[Record]:
    """LLaMA-Factory's order: `num_samples` draws rows at random (repeating rows when it asks for more),
    then `max_samples` keeps the first N."""
    if num_samples is not None and records:
        rng = random.Random(seed)
        order = list(range(len(records)))
        rng.shuffle(order)
        order = order[:num_samples]
        order += [rng.randrange(len(records)) for _ in range(num_samples - len(order))]
        records = [records[i] for i in order]
    return records[:max_samples] if max_samples is not None else records


def _undetected_format_error(entry: DatasetEntry, records: list[Record]) -> DataError:
    first = next(r for r in records if isinstance(r.data, dict))
    keys = ", ".join(map(str, first.data)) or "none"
    hint = "use instruction/output (alpaca), conversations (sharegpt) or messages (openai) keys, or describe the "
    hint += 'columns and "formatting" in a dataset_info.json entry'
    if {"chosen", "rejected"} <= first.data.keys():
        hint = "chosen/rejected rows are preference data, for DPO training, not instruction training"
    return DataError(
        f"cannot tell the format of dataset '{entry.name}': {first.where} has keys {keys}",
        hint=f"{hint} (formats: {', '.join(FORMATS)})",
    )


def require_usable(datasets: list[LoadedDataset], max_invalid_ratio: float) -> list[Conversation]:
    """The valid conversations of all datasets, mixed in order; refuse data that is mostly invalid.

    Raises `DataError` listing the problems when a dataset has no rows or no valid row, or when more than
    `max_invalid_ratio` of all rows are invalid. Otherwise logs one warning about skipped rows.
    """
    problems = [p for d in datasets for p in d.problems]
    total = sum(d.total_rows for d in datasets)
    invalid = sum(d.invalid_rows for d in datasets)
    if not datasets:
        raise DataError("no datasets were given", hint="set dataset=... (names in dataset_info.json, or file paths)")
    for d in datasets:
        if d.total_rows == 0:
            raise DataError(f"dataset '{d.name}' ({d.path}) has no rows", hint="check that the file is not empty")
        if not d.conversations:
            raise DataError(
                f"every one of the {d.total_rows} rows of dataset '{d.name}' ({d.path}) is invalid:",
                problems=d.problems,
                hint="fix the first problems above: one cause (wrong tags or columns) often breaks every row",
            )
    if invalid / total > max_invalid_ratio:
        raise DataError(
            f"{invalid} of {total} rows ({invalid / total:.0%}) are invalid, more than max_invalid_ratio="
            f"{max_invalid_ratio:g}:",
            problems=problems,
            hint=f"fix those rows, or raise max_invalid_ratio (now {max_invalid_ratio:g}) to skip them",
        )
    if invalid:
        shown = "\n".join(f"  - {p.format()}" for p in problems[:SHOWN_IN_WARNING])
        more = f"\n  ... and {len(problems) - SHOWN_IN_WARNING} more" if len(problems) > SHOWN_IN_WARNING else ""
        logger.warning(
            "skipping %d invalid of %d rows (max_invalid_ratio=%g); run `expertkit data check` to see all:\n%s%s",
            invalid,
            total,
            max_invalid_ratio,
            shown,
            more,
        )
    return [c for d in datasets for c in d.conversations]


def split_validation(
    conversations: list[Conversation], val_size: float, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """Hold out `val_size` rows at random: a share when below 1, a count from 1 up. Same seed, same split.

    Both parts keep the original order of the rows.
    """
    if val_size <= 0:
        return list(conversations), []
    count = math.ceil(val_size * len(conversations)) if val_size < 1 else int(val_size)
    if count >= len(conversations):
        raise DataError(
            f"val_size={val_size:g} holds out {count} rows, but there are only {len(conversations)}",
            hint="lower val_size (a share such as 0.1, or a count smaller than the number of rows)",
        )
    held_out = set(random.Random(seed).sample(range(len(conversations)), count))
    train = [c for i, c in enumerate(conversations) if i not in held_out]
    val = [c for i, c in enumerate(conversations) if i in held_out]
    return train, val
