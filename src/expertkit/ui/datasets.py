"""The dataset picker: names from dataset_dir/dataset_info.json, a preview of a dataset's first rows, and its token
lengths against cutoff_len as `expertkit data check` measures them (the UI runs that command: it may not import
the data stage, and the check reads every format with the model's chat template)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATASET_INFO = "dataset_info.json"
PREVIEW_ROWS = 5


def dataset_names(dataset_dir: str | os.PathLike) -> list[str]:
    """The datasets registered in dataset_dir/dataset_info.json (none when it is missing or unreadable)."""
    info = _read_info(Path(dataset_dir))
    return list(info)


def _read_info(dataset_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((dataset_dir / DATASET_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def preview_rows(dataset_dir: str | os.PathLike, name: str, n: int = PREVIEW_ROWS) -> tuple[list[dict], str]:
    """(the first n rows, a note): from the file dataset_info.json names, or the file `name` itself.

    JSON and JSONL files are previewed; other files (CSV, parquet, hub datasets) get a note saying to run
    `expertkit data check`, which reads every format.
    """
    folder = Path(dataset_dir)
    entry = _read_info(folder).get(name)
    if isinstance(entry, dict) and entry.get("file_name"):
        path = folder / str(entry["file_name"])
    elif isinstance(entry, dict):
        return [], f"{name}: not a local file ({', '.join(k for k in entry if k.endswith('url')) or 'hub'})"
    else:
        path = Path(name) if Path(name).is_file() else folder / name
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
        if not files:
            return [], f"{path}: a folder without .json/.jsonl files to preview"
        path = files[0]
    if not path.is_file():
        return [], f"{path}: no such file"
    if path.suffix not in (".json", ".jsonl"):
        return [], f"{path}: preview shows JSON and JSONL; `Check data` reads every format"
    rows = _first_rows(path, n)
    return rows, f"{path}: first {len(rows)} row(s)"


def _first_rows(path: Path, n: int) -> list[dict]:
    with open(path, encoding="utf-8-sig") as fh:
        head = fh.read(1)
        fh.seek(0)
        if head == "[" and path.suffix == ".json":
            try:
                data = json.load(fh)
            except ValueError:
                return []
            return [r for r in data[:n] if isinstance(r, dict)] if isinstance(data, list) else []
        rows = []
        for line in fh:
            if len(rows) >= n:
                break
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows


def rows_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(headers, cells) for a table: nested values (histories, conversations) as compact JSON."""
    headers: list[str] = []
    for row in rows:
        headers += [k for k in row if k not in headers]
    cells = [
        [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in (row.get(h, "") for h in headers)]
        for row in rows
    ]
    return headers, cells


@dataclass
class LengthSummary:
    """The token-length lines of `expertkit data check`'s report."""

    valid: int
    percentiles: dict[str, int]  # p50, p90, p99, max of whole examples, in tokens under the chat template
    cutoff_len: int
    cut: int  # examples longer than cutoff_len
    no_answer_left: int  # of those, the ones left without an answer token (training skips them)


_TOKENS = re.compile(r"^tokens per example: (?P<stats>.*) \(cutoff_len (?P<cutoff>\d+)\)$", re.M)
_CUT = re.compile(
    r"^cut by cutoff_len: (?P<cut>\d+) example\(s\); left with no answer token \(skipped\): (?P<lost>\d+)$", re.M
)
_VALID = re.compile(r"^total: (?P<valid>\d+) valid conversations$", re.M)


def parse_lengths(report: str) -> LengthSummary | None:
    """The token lengths in a `data check` report, or None when it has none (no model, unreadable data)."""
    tokens, cut, valid = _TOKENS.search(report), _CUT.search(report), _VALID.search(report)
    if not (tokens and cut and valid):
        return None
    pairs = tokens["stats"].split()
    stats = {k: int(v) for k, v in zip(pairs[::2], pairs[1::2]) if v.isdigit()}
    return LengthSummary(int(valid["valid"]), stats, int(tokens["cutoff"]), int(cut["cut"]), int(cut["lost"]))


def check_failure(report: str) -> str:
    """Why a `data check` gave no lengths: its `token lengths: not computed (...)` line or its error, in one line."""
    for line in report.splitlines():
        if line.startswith(("token lengths:", "error:")):
            return line.removeprefix("error:").removeprefix("token lengths:").strip()
    lines = [line for line in report.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "`expertkit data check` printed nothing"
