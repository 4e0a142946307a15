"""Raw text for continued pre-training (stage pt): one document per row, LLaMA-Factory's way.

A JSON Lines row, and its dataset_info.json entry (LLaMA-Factory's `c4_demo`)::

    {"text": "The pump's seal is replaced every 2,000 operating hours ..."}
    {"manuals_text": {"file_name": "manuals.jsonl", "columns": {"prompt": "text"}}}

The text column is `columns.prompt` of the entry, or `text` when the entry maps none (a bare file path). JSON,
JSON Lines, CSV and parquet rows are read as for instruction data; a `.txt` file is read as LLaMA-Factory reads it
(through `datasets`' text loader): every non-empty line is one document. PDF, Word, HTML and Markdown files are
turned into text first with `expertkit data text` (the knowledge base's extractor), which writes such a JSON Lines
file.

    datasets = load_text_datasets(config)
    documents = require_usable(datasets, config.max_invalid_ratio, mix=config)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from expertkit.core.errors import DataError, Problem
from expertkit.data.config import DataConfig
from expertkit.data.files import DATA_SUFFIXES, Record, _read_text, read_file
from expertkit.data.load import LoadedDataset, _load_each, read_records, sample_records
from expertkit.data.registry import DatasetEntry, resolve_dataset

TEXT_SUFFIX = ".txt"
DOCUMENT_SUFFIXES = (".md", ".markdown", ".html", ".htm", ".pdf", ".docx")
DEFAULT_COLUMN = "text"


@dataclass
class TextDocument:
    """One document of raw text and where it came from (``manuals.jsonl:3``, ``notes.txt:12``)."""

    text: str
    source: str


def load_text_datasets(config: DataConfig) -> list[LoadedDataset[TextDocument]]:
    """Read every dataset in `config.dataset` as raw text documents; invalid rows become located problems."""
    return _load_each(config, lambda name: load_text_dataset(name, config))


def load_text_dataset(name: str, config: DataConfig) -> LoadedDataset[TextDocument]:
    entry = resolve_dataset(name, config.dataset_dir)
    column = entry.columns.get("prompt") or DEFAULT_COLUMN
    records = _read(entry, config)
    rows = [r for r in records if isinstance(r.data, dict)]
    if rows and not any(column in r.data for r in rows):
        keys = ", ".join(map(str, rows[0].data)) or "none"
        where = f"its dataset_info.json entry maps columns.prompt to '{column}'" if entry.described else ""
        raise DataError(
            f"dataset '{name}' has no text column '{column}': {rows[0].where} has keys {keys}"
            + (f" ({where})" if where else ""),
            hint='name the column holding the text in dataset_info.json: "columns": {"prompt": "<column>"}'
            + ("" if entry.described else f", or rename it to '{DEFAULT_COLUMN}'"),
        )
    documents, problems = [], []
    for record in records:
        document, problem = _document(record, column)
        if document is not None:
            documents.append(document)
        if problem is not None:
            problems.append(problem)
    return LoadedDataset(name, entry.path, "text", len(records), documents, problems)


def _document(record: Record, column: str) -> tuple[TextDocument | None, Problem | None]:
    if record.error is not None:
        return None, record.error
    if isinstance(record.data, str):  # a .txt line
        return TextDocument(record.data, record.where), None
    if not isinstance(record.data, dict):
        return None, Problem("the row is not an object", record.where, hint=f'write it as {{"{column}": "..."}}')
    value = record.data.get(column)
    if not isinstance(value, str):
        kind = "missing" if value is None else f"a {type(value).__name__}"
        return None, Problem(f"'{column}' is {kind}, but text belongs here", record.where, column)
    if not value.strip():
        return None, Problem(f"'{column}' is empty", record.where, column, "remove the row or write its text")
    return TextDocument(value, record.where), None


def _read(entry: DatasetEntry, config: DataConfig) -> list[Record]:
    """Rows of the dataset; `.txt` files (alone or in a folder) one row per non-empty line."""
    path = Path(entry.path)
    if entry.load_from != "file":
        return read_records(entry, config)
    files = sorted(x for x in path.iterdir() if x.is_file() and not x.name.startswith(".")) if path.is_dir() else []
    documents = [x for x in ([path] if path.is_file() else files) if x.suffix.lower() in DOCUMENT_SUFFIXES]
    if documents:
        raise DataError(
            f"dataset '{entry.name}' holds documents ({', '.join(x.name for x in documents[:3])}) that stage pt does "
            "not read directly",
            hint=f"turn them into text first: expertkit data text {path} output=data/{path.stem or 'docs'}_text.jsonl,"
            " then train on that file",
        )
    if path.is_file() and path.suffix.lower() == TEXT_SUFFIX:
        records = _read_txt(path)
    elif path.is_dir() and any(x.suffix.lower() == TEXT_SUFFIX for x in files):
        records = []
        for file in files:
            if file.suffix.lower() == TEXT_SUFFIX:
                records += _read_txt(file)
            elif file.suffix.lower() in DATA_SUFFIXES and file.name != "dataset_info.json":
                records += read_file(file)
    else:
        return read_records(entry, config)
    return sample_records(records, entry.num_samples, config.max_samples, config.seed)


def _read_txt(path: Path) -> list[Record]:
    lines = _read_text(path).splitlines()
    return [Record(line, f"{path}:{n}") for n, line in enumerate(lines, start=1) if line.strip()]
