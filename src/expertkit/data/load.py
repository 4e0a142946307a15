"""Read the datasets a config names into conversations (or preference pairs), keeping every invalid row as a
located problem.

datasets = load_datasets(config)                           # raises only if a file can't be read at all
conversations = require_usable(datasets, config.max_invalid_ratio)   # refuses mostly-broken data
train, val = split_validation(conversations, config.val_size, config.seed)

Preference stages read `load_preference_datasets(config, "pairs")` (dpo, rm: `PreferencePair` items) or
`load_preference_datasets(config, "unpaired")` (kto: `UnpairedExample` items) the same way.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, overload

from expertkit.core.errors import DataError, Problem
from expertkit.core.schema import Conversation, PreferencePair, UnpairedExample
from expertkit.data.config import DataConfig
from expertkit.data.files import Record
from expertkit.data.formats import FORMATS, convert_prompt, convert_record, detect_format
from expertkit.data.preference import (
    PREFERENCE_FORMATS,
    PreferenceKind,
    answer_keys,
    convert_preference,
    detect_preference_format,
)
from expertkit.data.registry import DatasetEntry, read_entry, resolve_dataset

logger = logging.getLogger(__name__)

SHOWN_IN_WARNING = 5

T = TypeVar("T")


@dataclass
class LoadedDataset(Generic[T]):
    """One dataset after reading and checking: its valid items and a problem per invalid row.

    Items are `Conversation`s (`load_datasets`), `PreferencePair`s or `UnpairedExample`s
    (`load_preference_datasets`), each with `.source`.
    """

    name: str  # as given in `dataset`
    path: str  # resolved file, folder or hub id
    format: str  # alpaca | sharegpt | openai | trl ("unknown" when no row is an object)
    total_rows: int  # rows read (after num_samples and max_samples)
    items: list[T] = field(default_factory=list)  # valid rows, each with .source
    problems: list[Problem] = field(default_factory=list)  # every problem of every invalid row

    @property
    def conversations(self) -> list[T]:
        """The items, under the name instruction data uses."""
        return self.items

    @property
    def invalid_rows(self) -> int:
        return self.total_rows - len(self.items)


def load_datasets(config: DataConfig, prompts: bool = False) -> list[LoadedDataset[Conversation]]:
    """Read and check every dataset in `config.dataset`, in order (`prompts`: rows may lack the answer).

    Invalid rows are kept as problems (see `require_usable`); a `DataError` is raised only when a dataset
    cannot be read at all, naming every such dataset at once.
    """
    return _load_each(config, lambda name: load_dataset(name, config, prompts))


@overload
def load_preference_datasets(config: DataConfig, kind: Literal["pairs"]) -> list[LoadedDataset[PreferencePair]]: ...
@overload
def load_preference_datasets(config: DataConfig, kind: Literal["unpaired"]) -> list[LoadedDataset[UnpairedExample]]: ...
def load_preference_datasets(config: DataConfig, kind: PreferenceKind) -> list[LoadedDataset[Any]]:
    """Read and check every dataset in `config.dataset` as chosen/rejected pairs or as labelled answers (KTO).

    As `load_datasets`: invalid rows are kept as problems; a `DataError` names every dataset that cannot be
    read, or that holds another kind of data (instruction rows given to a pair stage, pairs given to KTO).
    """
    return _load_each(config, lambda name: load_preference_dataset(name, config, kind))


def _load_each(config: DataConfig, load_one: Callable[[str], LoadedDataset[T]]) -> list[LoadedDataset[T]]:
    loaded: list[LoadedDataset[T]] = []
    errors: list[DataError] = []
    for name in config.dataset:
        try:
            loaded.append(load_one(name))
        except DataError as e:
            errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        problems = [p for e in errors for p in (e.problems or [Problem(e.message, hint=e.hint)])]
        raise DataError(f"cannot read {len(errors)} of the {len(config.dataset)} datasets:", problems=problems)
    return loaded


def load_dataset(name: str, config: DataConfig, prompts: bool = False) -> LoadedDataset[Conversation]:
    """Read one dataset: resolve the name, read rows, sample, detect the format, convert each row (`prompts`: a
    row without an answer is a prompt, as batch prediction reads it)."""
    entry = resolve_dataset(name, config.dataset_dir)
    _refuse_multimodal(entry)
    if entry.ranking or entry.preference_columns:
        what = "ranking: true" if entry.ranking else f"columns: {', '.join(entry.preference_columns)}"
        raise _preference_for_sft_error(entry, what, kto=not entry.ranking and "kto_tag" in entry.columns)
    records = read_records(entry, config)
    first = next((r.data for r in records if isinstance(r.data, dict)), {})
    if entry.formatting is None and {"chosen", "rejected"} <= first.keys():
        raise _preference_for_sft_error(entry, "its rows have chosen and rejected answers", kto=False)
    formatting = entry.formatting or detect_format(records)
    if formatting is None and any(isinstance(r.data, dict) for r in records):
        raise _undetected_format_error(entry, records)
    # no row is an object (an empty file, or every line unreadable): each row is reported as it is
    spec = entry.spec(formatting or "alpaca")
    conversations: list[Conversation] = []
    problems: list[Problem] = []
    for record in records:
        conversation, found = (convert_prompt if prompts else convert_record)(record, spec)
        if conversation is not None:
            conversations.append(conversation)
        problems += found
    return LoadedDataset(name, entry.path, formatting or "unknown", len(records), conversations, problems)


def load_preference_dataset(name: str, config: DataConfig, kind: PreferenceKind) -> LoadedDataset[Any]:
    """Read one dataset as pairs or labelled answers: resolve, read, sample, detect, check the kind, convert."""
    entry = resolve_dataset(name, config.dataset_dir)
    _refuse_multimodal(entry)
    if kind == "unpaired" and entry.ranking:
        raise DataError(
            f"dataset '{name}' holds chosen/rejected pairs (ranking: true), but KTO reads one answer per row "
            "labelled with a boolean kto_tag",
            hint="use stage: dpo (or rm) for pairs, or write one row per answer with a kto_tag true or false",
        )
    records = read_records(entry, config)
    formatting = entry.formatting or detect_preference_format(records)
    if formatting is None and any(isinstance(r.data, dict) for r in records):
        raise _undetected_format_error(entry, records, kind)
    spec = entry.spec(formatting if formatting in FORMATS else "alpaca")  # type: ignore[arg-type]
    if formatting is not None and not _holds(kind, entry, records, answer_keys(formatting, spec.columns, kind)):
        raise _other_kind_error(entry, records, kind, answer_keys(formatting, spec.columns, kind))
    items: list[Any] = []
    problems: list[Problem] = []
    for record in records:
        item, found = convert_preference(record, formatting or "alpaca", spec, kind)
        if item is not None:
            items.append(item)
        problems += found
    return LoadedDataset(name, entry.path, formatting or "unknown", len(records), items, problems)


def read_records(entry: DatasetEntry, config: DataConfig) -> list[Record]:
    """The rows of a dataset after LLaMA-Factory's num_samples and max_samples."""
    limit = config.max_samples if entry.num_samples is None else None
    return sample_records(read_entry(entry, limit), entry.num_samples, config.max_samples, config.seed)


def _refuse_multimodal(entry: DatasetEntry) -> None:
    media = [c for c in ("images", "videos", "audios") if c in entry.other_columns]
    if media:
        raise DataError(
            f"dataset '{entry.name}' is multimodal (columns: {', '.join(media)}): expertkit trains text-only models",
            hint="pick a text dataset; removing the columns would leave <image>-style tags in the text",
        )


def _preference_for_sft_error(entry: DatasetEntry, what: str, kto: bool) -> DataError:
    use = "for KTO training" if kto else "for DPO / reward training"
    stage = "set stage: kto to train on its labelled answers" if kto else "set stage: dpo (or rm) to train on its pairs"
    return DataError(
        f"dataset '{entry.name}' is preference data ({what}), {use}, which supervised fine-tuning (stage: sft) "
        "does not read",
        hint=f"{stage}, or pick an instruction dataset (alpaca, sharegpt or openai rows with one answer each)",
    )


def _holds(kind: PreferenceKind, entry: DatasetEntry, records: list[Record], keys: tuple[str, ...]) -> bool:
    """Whether the dataset holds the kind of data asked for: by its dataset_info.json entry, or by its rows' keys."""
    if kind == "pairs" and entry.ranking:
        return True
    mapped = {"pairs": ("chosen", "rejected"), "unpaired": ("kto_tag",)}[kind]
    if all(c in entry.columns for c in mapped):
        return True
    rows = [r.data for r in records[:50] if isinstance(r.data, dict)]
    return not rows or any(all(k in row for k in keys) for row in rows)


def _other_kind_error(
    entry: DatasetEntry, records: list[Record], kind: PreferenceKind, keys: tuple[str, ...]
) -> DataError:
    first = next(r for r in records if isinstance(r.data, dict))
    row_keys = ", ".join(map(str, first.data)) or "none"
    lacks = "ranking: true" if kind == "pairs" else "kto_tag column"
    source = f"its dataset_info.json entry has no {lacks}, and {first.where}" if entry.described else first.where
    if kind == "pairs":
        return DataError(
            f"dataset '{entry.name}' has no chosen/rejected pairs: {source} has keys {row_keys}, no "
            f"{' and '.join(repr(k) for k in keys)}",
            hint="set ranking: true in dataset_info.json with chosen/rejected columns, or use stage: sft",
        )
    return DataError(
        f"dataset '{entry.name}' has no KTO labels: {source} has keys {row_keys}, no {keys[0]!r}",
        hint='give each row a boolean "kto_tag" (or map its column: "columns": {"kto_tag": "label"} in '
        "dataset_info.json); use stage: dpo for chosen/rejected pairs, stage: sft for plain answers",
    )


_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")


def placeholder_warning(dataset: LoadedDataset) -> str | None:
    """Unfilled `{{name}}` placeholders, as in LLaMA-Factory's identity.json (`{{name}}`, `{{author}}`), which
    the model would otherwise learn as written. A warning, not a problem: such text can be meant literally."""
    names: dict[str, None] = {}
    rows = []
    for item in dataset.items:
        found = [m.group(0) for text in item_texts(item) for m in _PLACEHOLDER.finditer(text)]
        if found:
            names.update(dict.fromkeys(found))
            rows.append(item.source)
    if not rows:
        return None
    shown = ", ".join(names)
    example = "; ".join(f"s/{n}/My{_PLACEHOLDER.match(n).group(1).capitalize()}/g" for n in list(names)[:2])
    return (
        f"{len(rows)} of {dataset.total_rows} rows of dataset '{dataset.name}' hold the unfilled placeholder(s) "
        f"{shown} (first {rows[0]}), which training would teach as written; replace them first, e.g. "
        f"sed -i '{example}' {dataset.path}"
    )


def item_texts(item: Conversation | PreferencePair | UnpairedExample) -> list[str]:
    """Every text of a conversation, pair or labelled answer, in order."""
    if isinstance(item, Conversation):
        return [m.content for m in item.messages]
    answers = [item.chosen, item.rejected] if isinstance(item, PreferencePair) else [item.completion]
    return [m.content for m in item.prompt + answers]


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


def _undetected_format_error(
    entry: DatasetEntry, records: list[Record], kind: PreferenceKind | None = None
) -> DataError:
    first = next(r for r in records if isinstance(r.data, dict))
    keys = ", ".join(map(str, first.data)) or "none"
    if kind is None:
        hint = "use instruction/output (alpaca), conversations (sharegpt) or messages (openai) keys, or describe the "
        hint += 'columns and "formatting" in a dataset_info.json entry'
        if {"prompt", "completion", "label"} <= first.data.keys():
            hint = "prompt/completion/label rows are KTO data: set stage: kto to train on them"
        formats = FORMATS
    else:
        answers = "chosen/rejected" if kind == "pairs" else "output plus a boolean kto_tag"
        trl = "prompt/chosen/rejected" if kind == "pairs" else "prompt/completion/label"
        hint = f"use instruction with {answers} (alpaca), conversations with {answers.split(' plus ')[-1]} "
        hint += f'(sharegpt), or TRL\'s {trl} keys; or describe the columns and "formatting" in dataset_info.json'
        formats = PREFERENCE_FORMATS
    return DataError(
        f"cannot tell the format of dataset '{entry.name}': {first.where} has keys {keys}",
        hint=f"{hint} (formats: {', '.join(formats)})",
    )


def require_usable(
    datasets: list[LoadedDataset[T]], max_invalid_ratio: float, mix: DataConfig | None = None
) -> list[T]:
    """The valid items (conversations, pairs ...) of all datasets, mixed as `mix` says (its mix_strategy,
    interleave_probs and seed; unset: one after the other); refuse mostly invalid data.

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
        if not d.items:
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
    if mix is None:
        return [item for d in datasets for item in d.items]
    return mix_items([d.items for d in datasets], mix.mix_strategy, mix.interleave_probs, mix.seed)


def mix_items(parts: list[list[T]], strategy: str, probs: list[float] | None, seed: int) -> list[T]:
    """LLaMA-Factory's mix_strategy, by `datasets.interleave_datasets` itself (as LLaMA-Factory calls it), so the
    same seed draws the same rows: concat chains the parts; interleave_under takes one row of each part in turn (or
    draws the part by `probs`) until the first part runs out; interleave_over until every part has run out (the
    shorter ones start over)."""
    if strategy == "concat" or len(parts) < 2:
        return [item for part in parts for item in part]
    from datasets import Dataset, interleave_datasets

    indexed = [Dataset.from_dict({"part": [n] * len(p), "row": list(range(len(p)))}) for n, p in enumerate(parts)]
    stopping = "first_exhausted" if strategy == "interleave_under" else "all_exhausted"
    mixed = interleave_datasets(indexed, probabilities=probs, seed=seed, stopping_strategy=stopping)
    return [parts[n][i] for n, i in zip(mixed["part"], mixed["row"])]


def split_validation(rows: list[T], val_size: float, seed: int) -> tuple[list[T], list[T]]:
    """Hold out `val_size` rows at random: a share when below 1, a count from 1 up. Same seed, same split.

    Both parts keep the original order of the rows.
    """
    if val_size <= 0:
        return list(rows), []
    count = math.ceil(val_size * len(rows)) if val_size < 1 else int(val_size)
    if count >= len(rows):
        raise DataError(
            f"val_size={val_size:g} holds out {count} rows, but there are only {len(rows)}",
            hint="lower val_size (a share such as 0.1, or a count smaller than the number of rows)",
        )
    held_out = set(random.Random(seed).sample(range(len(rows)), count))
    train = [c for i, c in enumerate(rows) if i not in held_out]
    val = [c for i, c in enumerate(rows) if i in held_out]
    return train, val
