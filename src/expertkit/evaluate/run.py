"""`expertkit eval`: every candidate answers the eval set (and the forgetting probe); then metrics, judge, report.

    result = run(EvalConfig(eval_file="held_out.jsonl", model_name_or_path="saves/m", adapter_name_or_path="saves/run"))
    result.summary["candidates"]["tuned"]["metrics"]["rouge-l"]

Reads top to bottom: load the eval set (evalset.py) -> answer it with each candidate, resumable (answering.py)
-> score -> judge (judging.py) -> report (report.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from expertkit.core.config import save_config
from expertkit.core.errors import DataError
from expertkit.core.runs import TRAINER_LOG, write_json_atomic
from expertkit.evaluate.answering import PREDICTIONS, answer_all, no_likelihoods, say
from expertkit.evaluate.config import TEXT_METRICS, Candidate, EvalConfig
from expertkit.evaluate.evalset import EvalItem, load_eval_set, load_pair_set, load_probe_items, pair_metrics
from expertkit.evaluate.predict import PredictResult, run_predict

METRICS = "metrics.json"
RESOLVED = "eval_config.yaml"


@dataclass
class EvalResult:
    output_dir: Path
    metrics_path: Path
    report_path: Path | None
    summary: dict


def run(config: EvalConfig, out=None) -> EvalResult | PredictResult:
    """Answer the eval set with every candidate, score, judge and report; with do_predict, batch prediction instead
    (predict.py: generated_predictions.jsonl, no metrics), as `expertkit eval` does."""
    out = out or sys.stderr
    if config.do_predict:
        return run_predict(config, out)
    pairs = load_pair_set(config)
    if pairs is not None:
        config = pair_metrics(config)
        items: list[EvalItem] = []
    elif "preference" in config.metrics:
        raise DataError(
            "metrics=preference needs a ranking eval set (chosen/rejected pairs), but this one is question/reference",
            hint='give eval_file rows {"question": ..., "chosen": ..., "rejected": ...}, or an eval_dataset with '
            "ranking: true in dataset_info.json",
        )
    else:
        items = load_eval_set(config)
    output = config.resolved_output_dir()
    (output / PREDICTIONS).mkdir(parents=True, exist_ok=True)
    save_config(config, output / RESOLVED)
    candidates = config.resolved_candidates()
    probe = load_probe_items() if config.probe else []
    what = f"{len(pairs)} chosen/rejected pairs" if pairs is not None else f"{len(items)} questions"
    say(out, f"eval: {what}, {len(candidates)} candidates ({', '.join(c.name for c in candidates)})")
    answers, probes, losses, timings, prefs = asyncio.run(
        answer_all(config, candidates, items, probe, output, out, pairs=pairs or [])
    )
    summary = score(config, candidates, items, answers, probes, losses, probe, prefs=prefs, pairs=pairs)
    for name, seconds in timings.items():
        summary["candidates"][name]["answer_seconds"] = seconds
    if any(m in config.metrics for m in ("judge", "pairwise", "hallucination")):
        from expertkit.evaluate.judging import judge_all

        asyncio.run(judge_all(config, candidates, items, answers, summary, output, out))
    write_json_atomic(output / METRICS, summary)
    from expertkit.evaluate.report import write_report

    report = write_report(output, summary)  # without matplotlib (absent or broken) it has no charts, and says why
    say(out, format_table(summary))
    return EvalResult(output, output / METRICS, report, summary)


def preference_summary(rows: list[dict]) -> dict[str, float]:
    """preference_accuracy: % of pairs where the chosen answer is the likelier (a tie is not); preference_margin:
    the mean log p(chosen) - log p(rejected), in nats."""
    if not rows:
        return {}
    accuracy = 100.0 * sum(1 for r in rows if r["prefers_chosen"]) / len(rows)
    return {
        "preference_accuracy": round(accuracy, 2),
        "preference_margin": round(sum(r["margin"] for r in rows) / len(rows), 4),
    }


def pair_prediction(row: dict) -> dict:
    """A pair as the report's question table shows it: both answers as the reference, the pick as the answer."""
    pick = "chosen" if row["prefers_chosen"] else "rejected"
    return {
        **row,
        "reference": f"chosen: {row['chosen']}\nrejected: {row['rejected']}",
        "answer": f"prefers the {pick} answer ({row['chosen_logp']:.2f} vs {row['rejected_logp']:.2f} nats)",
        "scores": {"margin": row["margin"]},
    }


# -- scoring ----------------------------------------------------------------------------------------------------


def score(config, candidates, items, answers, probes, losses, probe_items, prefs=None, pairs=None) -> dict:
    """The summary metrics.json holds; with `pairs` (a ranking eval set), `prefs` holds each local candidate's rows."""
    from expertkit.evaluate.metrics import score_all

    prefs = prefs or {}
    text_metrics = [m for m in config.metrics if m in TEXT_METRICS]
    summary: dict = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "eval_set": config.eval_file or ",".join(config.eval_dataset),
        "eval_kind": "pairs" if pairs is not None else "questions",
        "samples": len(pairs) if pairs is not None else len(items),
        "seed": config.seed,
        "metrics_asked": config.metrics,
        "candidates": {},
        "predictions": {},
    }
    for c in candidates:
        rows = [answers.get(c.name, {})[i.id] for i in items]
        per, means = score_all([r.get("answer", "") for r in rows], [i.reference for i in items], text_metrics)
        metrics = {k: round(v, 2) for k, v in means.items()}
        if c.name in losses and losses[c.name][1]:
            nll, n = losses[c.name]
            metrics["eval_loss"] = round(nll / n, 4)
            metrics["perplexity"] = round(math.exp(min(nll / n, 50)), 3)
        entry = {
            "spec": candidate_spec(c),
            "metrics": metrics,
            "errors": sum(1 for r in rows if r.get("error")),
            **training_curves(c),
        }
        why = no_likelihoods(config, c)
        if pairs is not None:
            metrics.update(preference_summary(prefs.get(c.name, [])))
            if c.name not in prefs:
                entry["notes"] = [f"preference skipped: {why}"]
        elif why and "eval_loss" in config.metrics:
            entry["notes"] = [f"eval_loss skipped: {why}"]
        if c.name in probes:
            from expertkit.evaluate.probe import load_probe, score_probe

            probe_rows = [probes[c.name][p.id] for p in probe_items]
            entry["probe"] = score_probe([r.get("answer", "") for r in probe_rows], load_probe())
        summary["candidates"][c.name] = entry
        summary["predictions"][c.name] = [
            {k: v for k, v in {**row, "scores": {m: round(s, 2) for m, s in scores.items()}}.items() if k != "spec"}
            for row, scores in zip(rows, per)
        ] + [pair_prediction(r) for r in prefs.get(c.name, [])]
    return summary


def candidate_spec(c: Candidate) -> dict:
    """What the report shows of a candidate: the keys set (retrieval keys only with a knowledge base), no key."""
    skip = {"api_key"} | (set() if c.kb_dir else {"top_k", "web"})
    return {k: v for k, v in c.model_dump(mode="json", exclude=skip).items() if v not in (None, False)}


def training_curves(c: Candidate) -> dict:
    """The training (and eval) loss of the run a candidate's adapter came from, when it has a trainer log."""
    folder = Path(c.adapter_name_or_path or c.model_name_or_path or "")
    log = next((p / TRAINER_LOG for p in (folder, folder.parent) if (p / TRAINER_LOG).is_file()), None)
    if log is None:
        return {"loss_curve": None, "eval_loss_curve": None}
    train, evals = [], []
    with open(log, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            step = row.get("step", row.get("current_steps"))
            if step is None:
                continue
            if "loss" in row:
                train.append([step, row["loss"]])
            if "eval_loss" in row:
                evals.append([step, row["eval_loss"]])
    return {"loss_curve": train or None, "eval_loss_curve": evals or None}


def format_table(summary: dict) -> str:
    """The metrics of each candidate side by side, as the terminal shows them at the end."""
    names = list(summary["candidates"])
    keys: list[str] = []
    for entry in summary["candidates"].values():
        keys += [k for k in entry["metrics"] if k not in keys]
    rows = [["metric", *names]]
    for k in keys:
        rows.append([k, *(fmt(summary["candidates"][n]["metrics"].get(k)) for n in names)])
    if any("probe" in summary["candidates"][n] for n in names):
        rows.append(
            ["probe (general)", *(fmt((summary["candidates"][n].get("probe") or {}).get("overall")) for n in names)]
        )
    for p in summary.get("pairwise") or []:
        rows.append([f"{p['a']} vs {p['b']} (judge)", f"win {p['win']} / tie {p['tie']} / loss {p['loss']}"])
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows)


def fmt(v) -> str:
    return "–" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))
