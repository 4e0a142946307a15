"""`expertkit eval --compare`: earlier eval output folders read back and their metrics side by side.

    text, html_path = compare_reports([Path("runs/a/eval"), Path("runs/b/eval")], out=Path("compare.html"))

`load_summary` reads a folder's metrics.json (and, when it holds no answers, predictions/<candidate>.jsonl);
`compare_reports` puts every candidate of every folder in one table (here columns 'a/eval/base', 'a/eval/tuned', ...:
the folder, with parents added until the names differ, then the candidate), as text for the terminal and, with `out`,
as an HTML page drawn with the eval report's tables (report.py).
"""

from __future__ import annotations

import json
import logging
import unicodedata
from pathlib import Path

from expertkit.core.errors import ExpertkitError
from expertkit.core.runs import write_text_atomic
from expertkit.evaluate.report import _candidates, _esc, _fmt, _metric_rows, _page, _probe_rows, _value_table

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PREDICTIONS_DIR = "predictions"


def load_summary(output_dir: Path) -> dict:
    """Read output_dir/metrics.json and, when it holds no predictions, output_dir/predictions/*.jsonl."""
    output_dir = Path(output_dir)
    path = output_dir / METRICS_FILE
    if not output_dir.is_dir():
        raise ExpertkitError(f"'{output_dir}' is not a folder", hint="pass the output_dir of an `expertkit eval` run")
    if not path.is_file():
        found = sorted(str(p.parent) for p in output_dir.glob(f"*/{METRICS_FILE}"))
        hint = f"eval outputs inside it: {', '.join(found)}" if found else "run `expertkit eval CONFIG` first"
        raise ExpertkitError(f"'{output_dir}' is not an eval output (no {METRICS_FILE})", hint=hint)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExpertkitError(f"cannot read {path}: {e}", hint="re-run `expertkit eval` to write it again") from e
    if not isinstance(summary, dict) or not isinstance(summary.get("candidates"), dict):
        raise ExpertkitError(
            f"'{output_dir}' is not an eval output ({path} has no 'candidates')",
            hint="pass the output_dir of an `expertkit eval` run",
        )
    if not summary.get("predictions"):
        summary["predictions"] = _load_predictions(output_dir / PREDICTIONS_DIR, list(summary["candidates"]))
    return summary


def _load_predictions(folder: Path, names: list[str]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for name in names:  # <name>.jsonl; not <name>.probe.jsonl, the forgetting probe's answers
        path = folder / f"{name}.jsonl"
        if not path.is_file():
            continue
        rows = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # an interrupted eval can leave a half-written last line
                if line.strip():
                    log.warning("%s:%d is not JSON; skipped", path, lineno)
        out[name] = [r for r in rows if isinstance(r, dict)]
    return out


def compare_reports(dirs: list[Path], out: Path | None = None) -> tuple[str, Path | None]:
    """Put the metrics of earlier eval outputs side by side (columns 'run1/tuned', ...); write HTML to `out`."""
    if len(dirs) < 2:
        raise ExpertkitError(
            "comparing needs two or more eval output folders", hint="expertkit eval --compare runs/a/eval runs/b/eval"
        )
    summaries = [load_summary(Path(d)) for d in dirs]
    labels = _unique_labels([Path(d) for d in dirs])
    columns: list[tuple[str, dict]] = []  # (label/candidate, candidate)
    for label, summary in zip(labels, summaries):
        columns += [(f"{label}/{name}", cand) for name, cand in _candidates(summary).items()]
    rows = _metric_rows([c for _, c in columns]) + _probe_rows([c for _, c in columns], prefix="probe ")
    header = ["metric"] + [name for name, _ in columns]
    table = [header] + [[row] + [_fmt(v) for v in values] for row, values in rows]
    lines = [f"{label}: {_describe(s)}" for label, s in zip(labels, summaries)]
    text = "\n".join(lines + [""] + _text_table(table))
    if out is None:
        return text, None
    out = Path(out)
    if out.is_dir():
        out = out / "compare.html"
    items = "".join(f"<li><b>{_esc(label)}</b>: {_esc(_describe(s))}</li>" for label, s in zip(labels, summaries))
    body = f"<h1>Eval reports compared</h1>\n<ul>{items}</ul>\n" + _value_table(header, rows)
    write_text_atomic(out, _page("expertkit eval comparison", body))
    return text, out


def _unique_labels(dirs: list[Path]) -> list[str]:
    """Folder names, with parents added until they differ ('run1/eval', 'run2/eval'), else numbered."""
    parts = [d.resolve().parts for d in dirs]
    for depth in (1, 2, 3):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{i}:{d.name}" for i, d in enumerate(dirs, 1)]


def _describe(summary: dict) -> str:
    bits = [str(summary.get("eval_set") or "?"), f"{summary.get('samples', '?')} samples"]
    return ", ".join(bits + [str(summary[k]) for k in ("created_at",) if summary.get(k)])


def _text_table(table: list[list[str]]) -> list[str]:
    widths = [max(_width(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(cell + " " * (w - _width(cell)) for cell, w in zip(row, widths)).rstrip() for row in table]


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
