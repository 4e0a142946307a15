"""The eval report: one self-contained report.html (inline CSS, charts as data URIs) plus charts/*.png.

It renders the `metrics.json` summary that the eval runner writes; every section is optional, and every
string from the summary (answers above all, which are untrusted model output) is HTML-escaped. The same
summary always gives the same bytes, except the one "Report written" line.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from expertkit.core.errors import ExpertkitError
from expertkit.core.optional import import_optional
from expertkit.core.runs import write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
CHARTS_DIR = "charts"
CHART_FILES = ("metrics.png", "pairwise.png", "loss.png")
MAIN_METRICS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4", "exact", "contains")  # all on a 0-100 scale
PREFERENCE_METRICS = ("preference_accuracy", "preference_margin")  # % of pairs; mean nats chosen - rejected
METRIC_ORDER = (*MAIN_METRICS, "eval_loss", "perplexity", *PREFERENCE_METRICS, "judge_overall", "hallucination_rate")
LOWER_IS_BETTER = frozenset({"eval_loss", "perplexity", "hallucination_rate"})
SPEC_COLUMNS = ("model_name_or_path", "adapter_name_or_path", "kb_dir")
SPEC_SHOWN = frozenset({*SPEC_COLUMNS, "name", "model", "api_base"})  # not repeated under "other settings"
SECRET_WORDS = ("key", "token", "secret", "password")
LINK_SCHEMES = frozenset({"http", "https", "file"})
MISSING = "–"
FOLD_CHARS = 400  # answers longer than this are folded in <details>
FOLD_LINES = 12
MAX_QUESTION_ROWS = 2000
COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d", "#bab0ac")


def write_report(output_dir: Path, summary: dict) -> Path:
    """Write output_dir/report.html and output_dir/charts/*.png from an eval summary; return the html path."""
    output_dir = Path(output_dir)
    charts = render_charts(summary)
    for name in CHART_FILES:  # a chart that has no data this time must not survive from an earlier report
        if name not in charts:
            (output_dir / CHARTS_DIR / name).unlink(missing_ok=True)
    for name, png in charts.items():
        write_bytes_atomic(output_dir / CHARTS_DIR / name, png)
    path = output_dir / REPORT_FILE
    write_text_atomic(path, build_html(summary, charts))
    log.info("eval report written to %s", path)
    return path


def build_html(summary: dict, charts: dict[str, bytes]) -> str:
    """The report page; `charts` maps a file name of CHART_FILES to its PNG bytes."""
    candidates, predictions = _candidates(summary), summary.get("predictions")
    parts = [
        _header(summary, candidates),
        _metrics_section(candidates),
        _probe_section(candidates),
        _pairwise_section(summary.get("pairwise") or [], charts.get("pairwise.png")),
        _charts_section(charts),
        _questions_section(predictions if isinstance(predictions, dict) else {}, list(candidates)),
    ]
    title = f"expertkit eval report: {summary.get('eval_set') or 'eval'}"
    return _page(title, "\n".join(p for p in parts if p), script=FILTER_JS)


# ---- sections -------------------------------------------------------------------------------------------


def _candidates(summary: dict) -> dict[str, dict]:
    cands = summary.get("candidates") or {}
    return {str(k): v if isinstance(v, dict) else {} for k, v in cands.items()}


def _header(summary: dict, candidates: dict[str, dict]) -> str:
    facts = [
        ("Eval set", summary.get("eval_set")),
        ("Samples", summary.get("samples")),
        ("Date", summary.get("created_at")),
        ("Seed", summary.get("seed")),
    ]
    dl = "".join(f"<dt>{k}</dt><dd>{_esc(v)}</dd>" for k, v in facts if v is not None)
    out = [
        f'<h1>Evaluation report</h1>\n<dl class="facts">{dl}</dl>',
        f'<p class="stamp">Report written {datetime.now(timezone.utc).isoformat(timespec="seconds")}</p>',
    ]
    if candidates:
        head = ["candidate", "model", "adapter", "knowledge base", "other settings", "errors"]
        body = []
        for name, cand in candidates.items():
            spec = cand.get("spec") if isinstance(cand.get("spec"), dict) else {}
            model = spec.get("model_name_or_path") or " @ ".join(
                str(spec[k]) for k in ("model", "api_base") if spec.get(k)
            )
            cells = [_esc(name), _esc(model) or MISSING]
            cells += [_esc(spec.get(k)) if spec.get(k) is not None else MISSING for k in SPEC_COLUMNS[1:]]
            other = [f"{k}={_redact(k, v)}" for k, v in spec.items() if k not in SPEC_SHOWN and v is not None]
            cells += [_esc(", ".join(other)) or MISSING, _esc(cand.get("errors", MISSING))]
            body.append(cells)
        out.append("<h2>Candidates</h2>\n" + _table(head, body))
    return "\n".join(out)


def _redact(key: str, value: Any) -> Any:
    return "***" if any(w in key.lower() for w in SECRET_WORDS) else value


def _metrics_section(candidates: dict[str, dict]) -> str:
    rows = _metric_rows(list(candidates.values()))
    if not rows:
        return ""
    note = "Best value per row in bold; lower is better for " + ", ".join(sorted(LOWER_IS_BETTER))
    note += f", higher for the rest. Changes are against <b>{_esc(next(iter(candidates)))}</b>."
    if any(m in PREFERENCE_METRICS for m, _ in rows):
        note += (
            " preference_accuracy: % of chosen/rejected pairs where the chosen answer is the likelier;"
            " preference_margin: mean log p(chosen) - log p(rejected), in nats."
        )
    notes = [
        f"<li><b>{_esc(name)}</b>: {_esc(n)}</li>"
        for name, cand in candidates.items()
        for n in (cand.get("notes") if isinstance(cand.get("notes"), list) else [])
    ]
    table = _value_table(["metric", *candidates], rows, True)
    return (
        f'<h2>Metrics</h2>\n<p class="note">{note}</p>\n'
        + table
        + (f'\n<ul class="note">{"".join(notes)}</ul>' if notes else "")
    )


def _metric_rows(cands: list[dict]) -> list[tuple[str, list[Any]]]:
    """(metric, value per candidate) for every metric any candidate has, in METRIC_ORDER, then the rest."""
    tables = [c.get("metrics") if isinstance(c.get("metrics"), dict) else {} for c in cands]
    names = [m for m in METRIC_ORDER if any(m in t for t in tables)]
    names += [m for t in tables for m in t if m not in METRIC_ORDER]
    return [(m, [t.get(m) for t in tables]) for m in dict.fromkeys(names)]


def _probe_section(candidates: dict[str, dict]) -> str:
    rows = _probe_rows(list(candidates.values()))
    if not rows:
        return ""
    return (
        '<h2>Did it forget?</h2>\n<p class="note">Score (%) on the bundled general-knowledge probe, '
        "English and Chinese; the change is against the first candidate.</p>\n"
        + _value_table(["probe", *candidates], rows, True)
    )


def _probe_rows(cands: list[dict], prefix: str = "") -> list[tuple[str, list[Any]]]:
    """(probe score name, value per candidate), 'overall' first."""
    probes = [c.get("probe") if isinstance(c.get("probe"), dict) else {} for c in cands]
    keys = sorted(dict.fromkeys(k for p in probes for k in p), key=lambda k: k != "overall")
    return [(f"{prefix}{k}", [p.get(k) for p in probes]) for k in keys]


def _pairwise_section(pairwise: list, chart: bytes | None) -> str:
    rows = []
    for p in pairwise:
        if not isinstance(p, dict):
            continue
        counts = [_number(p.get(k)) for k in ("win", "tie", "loss")]
        total = sum(c or 0 for c in counts)
        rate = f"{100 * (counts[0] or 0) / total:.1f}%" if total else MISSING
        cells = [MISSING if c is None else f"{c:g}" for c in counts]
        rows.append([f"<b>{_esc(p.get('a'))}</b> vs {_esc(p.get('b'))}", *cells, rate])
    if not rows:
        return ""
    img = _img(chart, "win, tie and loss per pair") if chart else ""
    return (
        '<h2>Judge: win / tie / loss</h2>\n<p class="note">The judge saw both answers, twice with the order '
        "swapped; counts are from the first candidate's side.</p>\n"
        + _table(["pair", "win", "tie", "loss", "win rate"], rows)
        + img
    )


def _charts_section(charts: dict[str, bytes]) -> str:
    out = []
    if "metrics.png" in charts:
        out.append("<h2>Main metrics</h2>\n" + _img(charts["metrics.png"], "main metrics per candidate"))
    if "loss.png" in charts:
        out.append("<h2>Training loss</h2>\n" + _img(charts["loss.png"], "training loss per candidate"))
    return "\n".join(out)


def _questions_section(predictions: dict, names: list[str]) -> str:
    names = [n for n in names if n in predictions] + [str(n) for n in predictions if n not in names]
    merged: dict[str, dict] = {}  # id -> question, reference and each candidate's row
    for name in names:
        for i, row in enumerate(r for r in predictions.get(name) or [] if isinstance(r, dict)):
            entry = merged.setdefault(str(row.get("id", i)), {"rows": {}})
            for key in ("question", "reference"):
                entry.setdefault(key, row.get(key))
            entry["rows"][name] = row
    if not merged:
        return ""
    shown = list(merged.items())[:MAX_QUESTION_ROWS]
    body = [
        [_esc(qid), _text(e.get("question")), _text(e.get("reference"))]
        + [_answer_cell(e["rows"].get(n)) for n in names]
        for qid, e in shown
    ]
    more = f" Showing the first {len(shown)} of {len(merged)}." if len(merged) > len(shown) else ""
    return (
        f'<h2>Questions and answers</h2>\n<p class="note">{len(merged)} questions.{more} '
        'Filter: <input id="qfilter" type="search" placeholder="any text"></p>\n'
        + _table(["id", "question", "reference", *(_esc(n) for n in names)], body, table_id="questions")
    )


def _answer_cell(row: dict | None) -> str:
    if row is None:
        return MISSING
    out = [_text(row.get("answer"))]
    if row.get("error"):
        out.append(f'<div class="err">error: {_esc(row["error"])}</div>')
    scores = row.get("scores") if isinstance(row.get("scores"), dict) else {}
    if scores:
        out.append('<div class="scores">' + " · ".join(f"{_esc(k)} {_fmt(v)}" for k, v in scores.items()) + "</div>")
    sources = [s for s in row.get("sources") or [] if isinstance(s, dict | str)]
    if sources:
        out.append('<ol class="sources">' + "".join(f"<li>{_source(s)}</li>" for s in sources) + "</ol>")
    return "".join(out)


def _source(source: dict | str) -> str:
    """A cited source; only http, https and file URLs become links, anything else (javascript:, data:) is text."""
    if isinstance(source, str):
        source = {"url": source}
    url, title = str(source.get("url") or ""), source.get("title")
    label = f"[{_esc(source['n'])}] " if source.get("n") is not None else ""
    shown = _esc(title) if title else _esc(url)
    if _is_link(url):
        return f'{label}<a class="source" href="{_esc(url)}" rel="noopener noreferrer">{shown}</a>'
    return f"{label}{shown}{f' <code>{_esc(url)}</code>' if title and url else ''}"


def _is_link(url: str) -> bool:
    if not url or any(ord(ch) < 0x21 or ch == "\x7f" for ch in url):
        return False
    return urlsplit(url).scheme.lower() in LINK_SCHEMES


# ---- HTML pieces ----------------------------------------------------------------------------------------


def _value_table(head: list[str], rows: list[tuple[str, list[Any]]], deltas: bool = False) -> str:
    """Numbers per column with the best of each row in bold; with `deltas`, each column's change vs the first."""
    body = []
    for metric, values in rows:
        nums = [_number(v) for v in values]
        present = [n for n in nums if n is not None]
        best = (min if metric in LOWER_IS_BETTER else max)(present) if len(present) > 1 else None
        cells = [_esc(metric)]
        for i, (value, num) in enumerate(zip(values, nums)):
            cell = _fmt(value)
            if deltas and i and num is not None and nums[0] is not None:
                change = num - nums[0]
                good = change < 0 if metric in LOWER_IS_BETTER else change > 0
                kind = "same" if change == 0 else "good" if good else "bad"
                cell += f' <span class="delta {kind}">{change:+.2f}</span>'
            cells.append(f'<td class="best"><b>{cell}</b></td>' if num is not None and num == best else cell)
        body.append(cells)
    return _table([_esc(h) for h in head], body)


def _table(head: list[str], body: list[list[str]], table_id: str = "") -> str:
    """Cells are HTML already; a cell that starts with '<td' is used as it is."""
    ident = f' id="{table_id}"' if table_id else ""
    rows = ["<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>" for row in body]
    thead = "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
    return f"<table{ident}>\n<thead>{thead}</thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


def _text(value: Any) -> str:
    """Untrusted text, escaped; long text folded."""
    if value is None:
        return MISSING
    text = str(value)
    if len(text) <= FOLD_CHARS and text.count("\n") < FOLD_LINES:
        return f'<div class="text">{_esc(text)}</div>'
    return (
        f'<details><summary class="text">{_esc(text[: FOLD_CHARS // 2])}… ({len(text)} characters)</summary>'
        f'<div class="text">{_esc(text)}</div></details>'
    )


def _img(png: bytes, alt: str) -> str:
    return f'<p><img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"></p>'


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _fmt(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.2f}" if _number(value) is not None else _esc(value)


def _page(title: str, body: str, script: str = "") -> str:
    tail = f"<script>\n{script}</script>\n" if script else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_esc(title)}</title>\n'
        f"<style>\n{CSS}</style>\n</head>\n<body>\n{body}\n{tail}</body>\n</html>\n"
    )


CSS = """body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"PingFang SC","Microsoft YaHei",
"Noto Sans CJK SC",sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}dd{margin:0}
.stamp,.note{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.3em .6em;vertical-align:top;text-align:left}th{background:#f4f4f4}
td.best{background:#e3f4e1}.delta{font-size:.85em}.good{color:#1a7f37}.bad{color:#c62828}.same{color:#888}
#questions td{max-width:28em}.text{white-space:pre-wrap;overflow-wrap:anywhere}
.scores{color:#666;font-size:.8em;margin-top:.3em}.err{color:#c62828;font-size:.85em}
ol.sources{font-size:.8em;margin:.3em 0 0 1.2em;padding:0}summary{cursor:pointer}img{max-width:100%}
"""

FILTER_JS = """document.getElementById("qfilter")?.addEventListener("input", function (e) {
  const q = e.target.value.toLowerCase();
  for (const tr of document.querySelectorAll("#questions tbody tr"))
    tr.style.display = tr.textContent.toLowerCase().includes(q) ? "" : "none";
});
"""


# ---- charts ---------------------------------------------------------------------------------------------


def render_charts(summary: dict) -> dict[str, bytes]:
    """PNG bytes per chart file name, for the charts the summary has data for."""
    candidates = _candidates(summary)
    pairwise = [p for p in summary.get("pairwise") or [] if isinstance(p, dict) and _pair_total(p)]
    curves = {n: _curve(c.get("loss_curve")) for n, c in candidates.items()}
    evals = {n: _curve(c.get("eval_loss_curve")) for n, c in candidates.items()}
    metric_rows = [(m, v) for m, v in _metric_rows(list(candidates.values())) if m in MAIN_METRICS]
    jobs = {  # file name: (draw, its arguments, figure height in inches)
        "metrics.png": (_metrics_chart, (list(candidates), metric_rows), 4) if metric_rows else None,
        "pairwise.png": (_pairwise_chart, (pairwise,), 1.6 + 0.5 * len(pairwise)) if pairwise else None,
        "loss.png": (_loss_chart, (curves, evals), 4) if any(curves.values()) or any(evals.values()) else None,
    }
    jobs = {k: v for k, v in jobs.items() if v}
    if not jobs:
        return {}
    try:
        mpl_figure = import_optional("matplotlib.figure", "matplotlib", "eval")
    except ExpertkitError as e:  # absent or broken: the report is still worth having, the tables carry the numbers
        log.warning("report without charts: %s (%s)", e.message, e.hint)
        return {}
    out = {}
    for name, (draw, args, height) in jobs.items():
        fig = mpl_figure.Figure(figsize=(8, height), dpi=100)
        draw(fig.add_subplot(), *args)
        buf = io.BytesIO()
        fig.savefig(
            buf, format="png", bbox_inches="tight", metadata={"Software": None}
        )  # no version stamp: same summary, same bytes
        out[name] = buf.getvalue()
    return out


def _pair_total(pair: dict) -> float:
    return sum(_number(pair.get(k)) or 0.0 for k in ("win", "tie", "loss"))


def _curve(points: Any) -> list[tuple[float, float]]:
    out = []
    for p in points or []:
        if isinstance(p, list | tuple) and len(p) >= 2 and _number(p[0]) is not None and _number(p[1]) is not None:
            out.append((float(p[0]), float(p[1])))
    return out


def _metrics_chart(ax, names: list[str], rows: list[tuple[str, list[Any]]]) -> None:
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(xs, [_number(v[i]) or 0.0 for _, v in rows], width, label=name, color=COLORS[i % len(COLORS)])
    ax.set_xticks(range(len(rows)), [m for m, _ in rows])
    ax.set_ylabel("score (0-100)")
    ax.set_title("main metrics per candidate")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)


def _pairwise_chart(ax, pairwise: list[dict]) -> None:
    counts = [[_number(p.get(k)) or 0.0 for k in ("win", "tie", "loss")] for p in pairwise]
    left = [0.0] * len(pairwise)
    for k, (kind, color) in enumerate(zip(("win", "tie", "loss"), ("#54a24b", "#bab0ac", "#e45756"))):
        shares = [100 * row[k] / sum(row) for row in counts]
        bars = ax.barh(range(len(pairwise)), shares, left=left, color=color, label=kind)
        ax.bar_label(bars, [f"{row[k]:g}" if row[k] else "" for row in counts], label_type="center")
        left = [a + b for a, b in zip(left, shares)]
    ax.set_yticks(range(len(pairwise)), [f"{p.get('a')} vs {p.get('b')}" for p in pairwise])
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of questions (bar labels: counts)")
    ax.set_title("judge: win / tie / loss")
    ax.invert_yaxis()
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3)


def _loss_chart(ax, curves: dict[str, list], evals: dict[str, list]) -> None:
    drawn: dict[tuple, str] = {}  # candidates sharing one run (tuned, tuned+rag) get one line
    for i, name in enumerate(curves):
        key = (tuple(curves[name]), tuple(evals[name]))
        if key in drawn or not (curves[name] or evals[name]):
            continue
        drawn[key] = ", ".join(n for n in curves if (tuple(curves[n]), tuple(evals[n])) == key)
        color = COLORS[i % len(COLORS)]
        if curves[name]:
            ax.plot(*zip(*curves[name]), color=color, label=f"{drawn[key]} (train)")
        if evals[name]:
            ax.plot(*zip(*evals[name]), "o--", color=color, label=f"{drawn[key]} (eval)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ax.legend()
    ax.grid(alpha=0.3)
