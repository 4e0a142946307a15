"""`expertkit data clean`: drop exact and near-duplicate rows, too short or too long rows, and scrub PII.

    expertkit data clean data/handbook/train.jsonl output=data/handbook/clean.jsonl near_dup_threshold=0.7

Rows stream through one at a time (a JSON Lines file is never loaded whole; the MinHash index holds one small
signature per kept row). Near-duplicates are found with MinHash LSH (`datasketch`) on character n-grams of the row's
text, so Chinese needs no word segmentation. A row is compared with the rows kept before it; the first one wins.
The report (counts and examples per reason) goes next to the output as `<output>.report.json`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator

from expertkit.core.config import StageConfig
from expertkit.core.errors import DataError
from expertkit.core.optional import import_optional

EXAMPLES_KEPT = 5


class CleanConfig(StageConfig):
    input: str
    """The dataset file to clean (JSON Lines or a JSON list of rows)."""

    output: str
    """Where the cleaned rows go (JSON Lines); written atomically."""

    near_dup_threshold: float = 0.7
    """Estimated Jaccard similarity of character n-grams above which a row is a near-duplicate (0-1; 1: exact only)."""

    ngram: int = 3
    """Characters per n-gram for the near-duplicate check (3 suits Chinese, where a word is one to three characters)."""

    num_perm: int = 128
    """MinHash permutations: more is more accurate and slower."""

    min_chars: int = 1
    """Drop rows whose text is shorter than this."""

    @field_validator("near_dup_threshold")
    @classmethod
    def _share(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError("must be a similarity above 0, at most 1 (1: exact duplicates only), e.g. 0.7")
        return v

    max_chars: int | None = None
    """Drop rows whose text is longer than this (unset: no limit)."""

    pii: Literal["mask", "drop", "keep"] = "mask"
    """E-mail addresses, phone numbers, mainland-China ID-card and bank-card numbers, IPv4 addresses: mask them
    (`[EMAIL]`, `[PHONE]`, `[ID_CARD]`, `[BANK_CARD]`, `[IP]`), drop the row, or keep them."""


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
PII_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("EMAIL", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    ("ID_CARD", re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)")),
    ("BANK_CARD", re.compile(r"(?<!\d)(?:\d[ -]?){15,18}\d(?!\d)")),
    ("IP", re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")),
    (
        "PHONE",
        re.compile(
            r"(?<!\d)(?:\+?86[ -]?)?1[3-9]\d{9}(?!\d)|(?<![\w])\+?\d{1,3}[ -]\(?\d{2,4}\)?[ -]\d{3,4}[ -]\d{3,4}(?!\d)"
        ),
    ),
]


def id_card_valid(number: str) -> bool:
    """GB 11643 checksum of an 18-character mainland-China resident ID number."""
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return "10X98765432"[total % 11] == number[17].upper()


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def find_pii(text: str) -> list[tuple[str, str]]:
    """(kind, matched text) of every PII found; ID and bank-card numbers only when their checksum holds."""
    found = []
    for kind, pattern in PII_PATTERNS:
        for m in pattern.finditer(text):
            value = m.group(0)
            if kind == "ID_CARD" and not id_card_valid(value):
                continue
            if kind == "BANK_CARD" and (not luhn_valid(re.sub(r"\D", "", value)) or id_like(value)):
                continue
            found.append((kind, value))
    return found


def id_like(value: str) -> bool:
    return len(value) == 18 and value[:17].isdigit() and id_card_valid(value)


def mask_pii(text: str, found: list[tuple[str, str]]) -> str:
    for kind, value in sorted(found, key=lambda x: -len(x[1])):
        text = text.replace(value, f"[{kind}]")
    return text


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


def scrub_row(row: Any, found: list[tuple[str, str]]) -> Any:
    if isinstance(row, str):
        return mask_pii(row, found)
    if isinstance(row, dict):
        return {k: scrub_row(v, found) for k, v in row.items()}
    if isinstance(row, list):
        return [scrub_row(v, found) for v in row]
    return row


def iter_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, row) of a JSON Lines file streamed line by line; a JSON list is read whole."""
    if not path.is_file():
        raise DataError(f"'{path}' is not a file", hint="give the dataset file to clean")
    with open(path, encoding="utf-8-sig") as fh:
        first = fh.read(1)
        while first and first.isspace():
            first = fh.read(1)
        if first == "[":
            fh.seek(0)
            for i, row in enumerate(json.load(fh), start=1):
                yield f"{path} row {i}", row
            return
        fh.seek(0)
        for number, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{number}: not valid JSON: {e.msg}", hint="fix the line") from None


def run(config: CleanConfig) -> CleanReport:
    from expertkit.core.runs import open_atomic, write_json_atomic

    datasketch = import_optional("datasketch", "datasketch", "train", needed_for="near-duplicate removal")
    exact_only = config.near_dup_threshold >= 1  # datasketch's LSH needs a threshold below 1
    lsh = None if exact_only else datasketch.MinHashLSH(threshold=config.near_dup_threshold, num_perm=config.num_perm)
    seen: set[str] = set()
    report = CleanReport()
    with open_atomic(config.output) as out:
        for where, row in iter_rows(Path(config.input)):
            report.read += 1
            text = row_text(row)
            reason = length_reason(text, config)
            if reason:
                report.note(reason, f"{where}: {text}")
                continue
            found = find_pii(text) if config.pii != "keep" else []
            if found and config.pii == "drop":
                report.note(f"PII ({', '.join(sorted({k for k, _ in found}))})", f"{where}: {text}")
                continue
            digest = hashlib.sha1(" ".join(text.split()).encode()).hexdigest()
            if digest in seen:
                report.note("exact duplicate", f"{where}: {text}")
                continue
            signature = None if lsh is None else minhash(datasketch, text, config)
            near = [] if lsh is None else lsh.query(signature)
            if near:
                report.note("near duplicate", f"{where} ~ {near[0]}: {text}")
                continue
            seen.add(digest)
            if lsh is not None:
                lsh.insert(where, signature)
            for kind, _ in found:
                report.pii_masked[kind] = report.pii_masked.get(kind, 0) + 1
            out.write(json.dumps(scrub_row(row, found), ensure_ascii=False) + "\n")
            report.kept += 1
        if report.read == 0:
            raise DataError(f"'{config.input}' has no rows", hint="check that the file is not empty")
    write_json_atomic(f"{config.output}.report.json", asdict(report))
    return report


def length_reason(text: str, config: CleanConfig) -> str | None:
    n = len(text.strip())
    if n < config.min_chars:
        return f"shorter than min_chars={config.min_chars}"
    if config.max_chars is not None and n > config.max_chars:
        return f"longer than max_chars={config.max_chars}"
    return None


def minhash(datasketch, text: str, config: CleanConfig):
    normal = " ".join(text.lower().split())
    grams = {normal[i : i + config.ngram] for i in range(max(len(normal) - config.ngram + 1, 1))}
    m = datasketch.MinHash(num_perm=config.num_perm)
    m.update_batch([g.encode("utf-8") for g in grams])
    return m
