"""`expertkit data clean`: drop exact and near-duplicate rows, too short or too long rows, rows in other languages,
and scrub PII.

    expertkit data clean data/handbook/train.jsonl output=data/handbook/clean.jsonl near_dup_threshold=0.7

Rows stream through one at a time (`data/stream.py`: a JSON Lines file or a JSON list is never loaded whole) and
the kept ones are written as they come, into a temporary file renamed over the output at the end. Near-duplicates
are found with MinHash LSH on character n-grams of the row's text (`data/dedup.py`), so Chinese needs no word
segmentation; a row is compared with the rows kept before it, and the first one wins. Languages are guessed by
script (`data/language.py`). The report (counts and examples per reason) goes next to the output as
`<output>.report.json`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from expertkit.core.errors import DataError
from expertkit.data.config import CleanConfig
from expertkit.data.dedup import DuplicateIndex
from expertkit.data.language import detect_language
from expertkit.data.pii import find_pii, id_card_valid, luhn_valid, scrub_row
from expertkit.data.stream import RowStream

logger = logging.getLogger(__name__)
EXAMPLES_KEPT = 5
PROGRESS_EVERY = 10_000  # rows between progress lines in the log (the web UI shows them)

__all__ = ["CleanConfig", "CleanReport", "find_pii", "id_card_valid", "luhn_valid", "row_text", "run"]


@dataclass
class CleanReport:
    read: int = 0
    kept: int = 0
    removed: dict[str, int] = field(default_factory=dict)  # reason -> rows
    pii_masked: dict[str, int] = field(default_factory=dict)  # kind -> occurrences
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few locations and texts

    def note(self, reason: str, example: str) -> None:
        self.removed[reason] = self.removed.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_KEPT:
            shown.append(example[:200])

    def summary(self) -> str:
        lines = [f"read {self.read} rows, kept {self.kept}"]
        lines += [f"  removed {n} ({reason})" for reason, n in self.removed.items()]
        lines += [f"  masked {n} {kind}" for kind, n in self.pii_masked.items()]
        return "\n".join(lines)


def row_text(row: Any) -> str:
    """Every text of a row (any format) joined, for comparing and scanning."""
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        return "\n".join(row_text(v) for v in row.values())
    if isinstance(row, list):
        return "\n".join(row_text(v) for v in row)
    return ""


def run(config: CleanConfig) -> CleanReport:
    from expertkit.core.runs import open_atomic, write_json_atomic

    rows = RowStream(config.input)
    index = DuplicateIndex(config.near_dup_threshold, config.ngram, config.num_perm)
    report, started = CleanReport(), time.monotonic()
    with open_atomic(config.output) as out:
        for number, row in rows:
            report.read += 1
            kept = clean_row(number, row, config, index, report, rows.where)
            if kept is not None:
                out.write(json.dumps(kept, ensure_ascii=False) + "\n")
                report.kept += 1
            if report.read % PROGRESS_EVERY == 0:
                rate = report.read / max(time.monotonic() - started, 1e-9)
                logger.info("read %d rows, kept %d (%.0f rows/s)", report.read, report.kept, rate)
        if report.read == 0:
            raise DataError(f"'{config.input}' has no rows", hint="check that the file is not empty")
    write_json_atomic(f"{config.output}.report.json", asdict(report))
    return report


def clean_row(number: int, row: Any, config: CleanConfig, index: DuplicateIndex, report: CleanReport, where) -> Any:
    """The row to write (PII masked), or None when a filter removed it (noted in the report)."""
    text = row_text(row)
    reason = length_reason(text, config) or language_reason(text, config.languages)
    first = None if reason else index.exact_copy(text)  # before the PII scan: copies are cheap to drop
    if first is not None:
        report.note("exact duplicate", f"{where(number)} ~ {where(first)}: {text}")
        return None
    found = find_pii(text) if config.pii != "keep" and not reason else []
    if found and config.pii == "drop":
        reason = f"PII ({', '.join(sorted({k for k, _ in found}))})"
    if reason:
        report.note(reason, f"{where(number)}: {text}")
        return None
    duplicate = index.first_copy(number, text)
    if duplicate:
        kind, first = duplicate
        report.note(kind, f"{where(number)} ~ {where(first)}: {text}")
        return None
    for kind, _ in found:
        report.pii_masked[kind] = report.pii_masked.get(kind, 0) + 1
    return scrub_row(row, found)


def length_reason(text: str, config: CleanConfig) -> str | None:
    n = len(text.strip())
    if n < config.min_chars:
        return f"shorter than min_chars={config.min_chars}"
    if config.max_chars is not None and n > config.max_chars:
        return f"longer than max_chars={config.max_chars}"
    return None


def language_reason(text: str, languages: list[str]) -> str | None:
    if not languages:
        return None
    language = detect_language(text)
    return None if language in languages else f"language {language} (not in languages={','.join(languages)})"
