"""Batch prediction (`expertkit eval do_predict=true`, LLaMA-Factory's `do_predict`): each candidate answers the eval
set, whose rows need no reference, into generated_predictions.jsonl, one line per question in eval-set order:

    {"prompt": "Who are you?", "predict": "I am Sail, ...", "label": "I am Sail, the Yunfan Tech assistant."}

`label` is the row's reference answer, '' when it has none. `prompt` is the question as asked (the last user turn),
not the chat-template text LLaMA-Factory decodes: the same on every engine, a server's included. The answers are
generated and kept exactly as an eval's (answering.py: predictions/<candidate>.jsonl, resumable); no metrics.

    result = run_predict(load_config(EvalConfig, "predict.yaml"))
    result.paths["tuned"]  # output_dir/generated_predictions.jsonl
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from expertkit.core.config import save_config
from expertkit.core.errors import DataError
from expertkit.core.runs import write_text_atomic
from expertkit.evaluate.answering import PREDICTIONS, answer_all, say
from expertkit.evaluate.config import EvalConfig
from expertkit.evaluate.evalset import EvalItem, load_eval_set, load_pair_set

GENERATED = "generated_predictions.jsonl"
RESOLVED = "predict_config.yaml"


@dataclass
class PredictResult:
    output_dir: Path
    paths: dict[str, Path]  # candidate -> its generated_predictions.jsonl
    errors: int  # questions whose answer failed (an endpoint's error): their `predict` is ''


def run_predict(config: EvalConfig, out=None) -> PredictResult:
    """Load the questions -> answer them with each candidate (resumable) -> write generated_predictions.jsonl."""
    out = out or sys.stderr
    config = config.model_copy(update={"metrics": [], "probe": False})  # prediction scores nothing
    if load_pair_set(config) is not None:
        raise DataError(
            "do_predict answers questions, but this eval set is chosen/rejected pairs",
            hint='give questions (a JSONL of {"question": ...}, or alpaca/sharegpt rows), or evaluate the pairs '
            "with `expertkit eval` (metrics=preference)",
        )
    items = load_eval_set(config)
    output = config.resolved_output_dir()
    (output / PREDICTIONS).mkdir(parents=True, exist_ok=True)
    save_config(config, output / RESOLVED)
    candidates = config.resolved_candidates()
    labelled = sum(1 for i in items if i.reference)
    say(out, f"predict: {len(items)} questions ({labelled} with a label), {', '.join(c.name for c in candidates)}")
    answers, *_ = asyncio.run(answer_all(config, candidates, items, [], output, out))
    paths, errors = {}, 0
    for c in candidates:
        # one candidate writes where LLaMA-Factory does; several each write in their own folder
        path = output / GENERATED if len(candidates) == 1 else output / c.name / GENERATED
        rows = [answers[c.name][i.id] for i in items]
        write_text_atomic(path, "".join(prediction_line(i, r) for i, r in zip(items, rows)))
        errors += sum(1 for r in rows if r.get("error"))
        paths[c.name] = path
        say(out, f"{c.name}: {len(rows)} predictions in {path}")
    return PredictResult(output, paths, errors)


def prediction_line(item: EvalItem, row: dict) -> str:
    """One line of generated_predictions.jsonl with LLaMA-Factory's keys (and the question's id)."""
    line = {"prompt": item.question, "predict": row.get("answer", ""), "label": item.reference, "id": item.id}
    return json.dumps(line, ensure_ascii=False) + "\n"
