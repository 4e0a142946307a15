"""Find a dataset by name: dataset_info.json (LLaMA-Factory's format), a file or folder, or a `datasets` id.

A dataset_info.json entry, as LLaMA-Factory writes it::

    {"claims_qa": {"file_name": "claims_qa.jsonl", "formatting": "sharegpt",
                   "columns": {"messages": "conversations", "system": "system"},
                   "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}}}

A name is looked up in that order: an entry of dataset_dir/dataset_info.json; a file or folder (relative to
the working directory, then to dataset_dir); a `datasets` folder saved with `save_to_disk`; a hub id.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from expertkit.core.errors import DataError, ProblemList
from expertkit.core.optional import import_optional
from expertkit.data.files import DATA_SUFFIXES, Record, missing_file_error, read_path
from expertkit.data.formats import FORMATS, Columns, Format, FormatSpec, Tags

DATASET_INFO = "dataset_info.json"

# in LLaMA-Factory's order of precedence: a hub url wins over file_name
SOURCE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name", "file_name")
ENTRY_KEYS = frozenset(SOURCE_KEYS) | {
    "formatting", "ranking", "subset", "split", "folder", "num_samples", "revision", "columns", "tags", "file_sha1",
}  # fmt: skip
# columns that make a dataset preference data, read by load_preference_datasets only
PREFERENCE_COLUMNS = frozenset({"chosen", "rejected", "kto_tag"})
# LLaMA-Factory columns for multimodal data: kept on the entry to refuse the dataset, never read
OTHER_COLUMNS = frozenset({"images", "videos", "audios"})
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class DatasetEntry:
    """Where one dataset lives and how its rows are laid out."""

    name: str
    load_from: Literal["file", "hf_hub", "disk"]
    path: str  # file or folder (load_from file/disk) or hub id
    formatting: Format | None = None  # None: detect from the rows
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] | None = None
    ranking: bool = False
    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    revision: str | None = None
    num_samples: int | None = None
    other_columns: dict[str, str] = field(default_factory=dict)
    described: bool = False  # found in dataset_info.json (not a bare file, folder or hub id)

    def spec(self, formatting: Format) -> FormatSpec:
        return FormatSpec.build(formatting, self.columns, self.tags)

    @property
    def preference_columns(self) -> list[str]:
        """The chosen / rejected / kto_tag columns the entry maps (they mark preference data)."""
        return [c for c in ("chosen", "rejected", "kto_tag") if c in self.columns]


def load_dataset_info(dataset_dir: str | Path) -> dict[str, Any] | None:
    """The raw mapping in dataset_dir/dataset_info.json, or None when there is no such file."""
    path = Path(dataset_dir) / DATASET_INFO
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte offset {e.start})", hint="save the file as UTF-8") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}",
            hint="a missing comma or quote, or a trailing comma, is the usual cause",
        ) from None
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: the top level must be an object of dataset names, not {type(data).__name__}",
            hint='write it as {"my_data": {"file_name": "my_data.jsonl"}}',
        )
    return data


def resolve_dataset(name: str, dataset_dir: str | Path) -> DatasetEntry:
    """Find the dataset called `name` (see the module docstring for the order)."""
    info = load_dataset_info(dataset_dir)
    if info is not None and name in info:
        return parse_entry(name, info[name], dataset_dir)
    for candidate in (Path(name), Path(dataset_dir) / name):
        if candidate.exists():
            return DatasetEntry(name, _local_kind(candidate), str(candidate))
    if Path(name).suffix.lower() in DATA_SUFFIXES:  # surely meant as a file: say what its folder holds
        in_cwd = Path(name).parent != Path(".") and Path(name).parent.is_dir()
        raise missing_file_error(Path(name) if in_cwd or not Path(dataset_dir).is_dir() else Path(dataset_dir) / name)
    if _HUB_ID.match(name) and not Path(name).parent.is_dir():
        return DatasetEntry(name, "hf_hub", name)
    raise _unknown_dataset_error(name, dataset_dir, info)


def _local_kind(path: Path) -> Literal["file", "disk"]:
    """Data files (or a folder holding them) we read ourselves; other dataset folders go to `datasets`."""
    if not path.is_dir():
        return "file"
    if _is_saved_dataset(path):
        return "disk"
    entries = [x for x in path.iterdir() if x.name != DATASET_INFO and not x.name.startswith(".")]
    if any(x.is_file() and x.suffix.lower() in DATA_SUFFIXES for x in entries):
        return "file"
    if any(x.is_dir() or x.suffix == ".py" for x in entries):
        return "disk"  # a dataset repository clone: data/ subfolders or a loading script
    return "file"  # nothing readable: read_path says what the folder holds


def _is_saved_dataset(folder: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _unknown_dataset_error(name: str, dataset_dir: str | Path, info: dict[str, Any] | None) -> DataError:
    info_path = Path(dataset_dir) / DATASET_INFO
    if info is None:
        where = f"there is no {info_path}, and no file, folder or hub id called '{name}'"
        return DataError(
            f"unknown dataset '{name}': {where}",
            hint=f"give a data file path, or describe the dataset in {info_path} (dataset_dir={dataset_dir})",
        )
    names = sorted(info)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    shown = ", ".join(names[:30]) + (" ..." if len(names) > 30 else "")
    hint += f"datasets in {info_path}: {shown}" if names else f"{info_path} is empty"
    return DataError(f"unknown dataset '{name}': not in {info_path}, and no file or folder by that name", hint=hint)


def parse_entry(name: str, raw: Any, dataset_dir: str | Path) -> DatasetEntry:
    """Check one dataset_info.json entry (every problem at once) and type it."""
    where = f"{Path(dataset_dir) / DATASET_INFO} [{name!r}]"
    if not isinstance(raw, dict):
        raise DataError(
            f"{where}: the entry must be an object, not {type(raw).__name__}",
            hint='write it as {"file_name": "my_data.jsonl"}',
        )
    problems = ProblemList()
    for key in sorted(set(raw) - ENTRY_KEYS):
        close = difflib.get_close_matches(key, sorted(ENTRY_KEYS), n=1, cutoff=0.6)
        problems.add(f"unknown key '{key}'", where, key, f"did you mean '{close[0]}'?" if close else "remove it")
    formatting = raw.get("formatting")
    if formatting is not None and formatting not in FORMATS:
        problems.add(f"unknown formatting {formatting!r}", where, "formatting", f"use one of {', '.join(FORMATS)}")
    columns, other = _parse_mapping(
        raw.get("columns"), "columns", set(vars(Columns())) | OTHER_COLUMNS, where, problems
    )
    tags = _parse_mapping(raw.get("tags"), "tags", set(vars(Tags())), where, problems)[0] if "tags" in raw else None
    num_samples = raw.get("num_samples")
    if num_samples is not None and (
        not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1
    ):
        problems.add(f"num_samples must be a positive whole number, not {num_samples!r}", where, "num_samples", "")
    source = next((k for k in SOURCE_KEYS if raw.get(k)), None)
    if source is None:
        problems.add(
            "the entry names no data", where, "", 'add "file_name" (a file or folder in dataset_dir) or "hf_hub_url"'
        )
    elif source in ("ms_hub_url", "om_hub_url", "cloud_file_name"):
        problems.add(f"'{source}' is not supported", where, source, 'download the data and use "file_name"')
    if problems:
        raise DataError(f"found the following problems in {where}:", problems=problems.items)
    formatting = formatting or ("alpaca" if columns or tags else None)  # LLaMA-Factory's default with columns
    entry = DatasetEntry(
        name=name,
        load_from="file",
        path="",
        formatting=formatting,
        columns=columns,
        tags=tags,
        ranking=bool(raw.get("ranking", False)),
        subset=raw.get("subset"),
        split=raw.get("split") or "train",
        folder=raw.get("folder"),
        revision=raw.get("revision"),
        num_samples=num_samples,
        other_columns=other,
        described=True,
    )
    if source == "hf_hub_url":
        entry.load_from, entry.path = "hf_hub", str(raw[source])
    else:
        path = Path(dataset_dir) / str(raw[source])
        entry.load_from = "disk" if source == "script_url" else _local_kind(path)
        entry.path = str(path)
    return entry


def _parse_mapping(
    value: Any, key: str, allowed: set[str], where: str, problems: ProblemList
) -> tuple[dict[str, str], dict[str, str]]:
    """`columns` / `tags`: an object of text values with known keys; returns (ours, LLaMA-Factory-only)."""
    if value is None:
        return {}, {}
    if not isinstance(value, dict):
        problems.add(f"'{key}' must be an object, not {type(value).__name__}", where, key, "")
        return {}, {}
    ours, other = {}, {}
    for k, v in value.items():
        if k not in allowed:
            close = difflib.get_close_matches(k, sorted(allowed), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(sorted(allowed))}"
            problems.add(f"unknown {key} key '{k}'", where, f"{key}.{k}", hint)
        elif not isinstance(v, str) or not v:
            problems.add(f"{key}.{k} must be a non-empty text, not {v!r}", where, f"{key}.{k}", "")
        elif k in OTHER_COLUMNS:
            other[k] = v
        else:
            ours[k] = v
    return ours, other


def read_entry(entry: DatasetEntry, limit: int | None = None) -> list[Record]:
    """Read the rows of a dataset, wherever it lives."""
    if entry.load_from == "file":
        return read_path(entry.path, limit)
    dataset = _load_hf_dataset(entry)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    label = f"{entry.path}[{entry.split}]"
    return [Record(row, f"{label} row {i}") for i, row in enumerate(dataset, start=1)]


def _load_hf_dataset(entry: DatasetEntry) -> Any:
    """A `datasets.Dataset` from a save_to_disk folder, a local dataset folder, or the hub."""
    datasets = import_optional("datasets", "datasets", "train", needed_for=f"reading '{entry.path}'")
    if entry.load_from == "hf_hub" and not _hub_offline() and not _hub_reachable():
        if entry.name != entry.path:  # a dataset_info.json entry with hf_hub_url
            where = f"is the hub dataset '{entry.path}' (hf_hub_url in its dataset_info.json entry), but"
            hint = (
                "download it where there is network (then run with HF_HUB_OFFLINE=1), or save its rows as a file in "
                'dataset_dir and use "file_name" instead of "hf_hub_url"'
            )
        else:
            where = "was not found locally (no dataset_info.json entry, file or folder by that name) and"
            hint = "check the name; or fetch it where there is network, then run with HF_HUB_OFFLINE=1"
        raise DataError(
            f"dataset '{entry.name}' {where} the Hugging Face hub ({_hub_host()}) is not reachable", hint=hint
        )
    try:
        if entry.load_from == "disk" and _is_saved_dataset(Path(entry.path)):
            loaded = datasets.load_from_disk(entry.path)
        else:
            loaded = datasets.load_dataset(
                entry.path, entry.subset, split=entry.split, data_dir=entry.folder, revision=entry.revision
            )
    except Exception as e:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError ...)
        if entry.load_from == "hf_hub":
            offline = " (offline mode is on: HF_HUB_OFFLINE)" if _hub_offline() else ""
            message = f"dataset '{entry.name}' was not found locally nor loaded from the hub{offline}: {e}"
        else:
            message = f"cannot load the dataset folder '{entry.path}': {e}"
        raise DataError(message, hint="check the name, subset and split") from None
    if isinstance(loaded, datasets.DatasetDict):
        if entry.split not in loaded:
            raise DataError(
                f"dataset '{entry.path}' has no split '{entry.split}'",
                hint=f'splits: {", ".join(loaded)}; set "split" in dataset_info.json',
            )
        loaded = loaded[entry.split]
    return loaded


def _hub_offline() -> bool:
    return any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _hub_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick connect, so that a missing network fails in seconds rather than after the client's retries."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy knows; let the client try
    try:
        with socket.create_connection((_hub_host(), 443), timeout=timeout_s):
            return True
    except OSError:
        return False
