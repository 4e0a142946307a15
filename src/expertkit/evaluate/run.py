"""`expertkit eval`: every candidate answers the eval set (and the forgetting probe); then metrics, judge, report.

    result = run(EvalConfig(eval_file="held_out.jsonl", model_name_or_path="saves/m", adapter_name_or_path="saves/run"))
    result.summary["candidates"]["tuned"]["metrics"]["rouge-l"]

Reads top to bottom: load the eval set -> answer it with each candidate (resumable) -> score -> judge -> report.
Candidates on the same local model share one engine (the adapters served beside the base by name), so the base
weights are loaded once; answers are generated concurrently, which the local engine batches.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from expertkit.core.config import save_config
from expertkit.core.errors import DataError, ExpertkitError, Problem
from expertkit.core.runs import TRAINER_LOG, append_jsonl, drop_torn_tail, write_json_atomic
from expertkit.evaluate.config import TEXT_METRICS, Candidate, EvalConfig

PREDICTIONS = "predictions"
METRICS = "metrics.json"
RESOLVED = "eval_config.yaml"


@dataclass
class EvalItem:
    id: str
    messages: list[dict]  # the conversation up to and including the question
    reference: str

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class EvalResult:
    output_dir: Path
    metrics_path: Path
    report_path: Path | None
    summary: dict


def run(config: EvalConfig, out=None) -> EvalResult:
    out = out or sys.stderr
    items = load_eval_set(config)
    output = config.resolved_output_dir()
    (output / PREDICTIONS).mkdir(parents=True, exist_ok=True)
    save_config(config, output / RESOLVED)
    candidates = config.resolved_candidates()
    probe = load_probe_items() if config.probe else []
    say(out, f"eval: {len(items)} questions, {len(candidates)} candidates ({', '.join(c.name for c in candidates)})")
    answers, probes, losses, timings = asyncio.run(answer_all(config, candidates, items, probe, output, out))
    summary = score(config, candidates, items, answers, probes, losses, probe)
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


def say(out, line: str) -> None:
    out.write(line + "\n")
    out.flush()


# -- the eval set -----------------------------------------------------------------------------------------------


def load_eval_set(config: EvalConfig) -> list[EvalItem]:
    """Question/reference pairs from eval_file (JSONL with question/reference) or any training-data format."""
    if config.eval_file and is_qa_jsonl(Path(config.eval_file)):
        items = read_qa_jsonl(Path(config.eval_file))
    else:
        items = from_training_data(config)
    if config.max_samples and len(items) > config.max_samples:
        import random

        keep = sorted(random.Random(config.seed).sample(range(len(items)), config.max_samples))
        items = [items[i] for i in keep]
    if not items:
        raise DataError("the eval set has no questions", hint="check eval_file / eval_dataset")
    return items


def is_qa_jsonl(path: Path) -> bool:
    if not path.is_file():
        raise DataError(f"eval_file '{path}' does not exist", hint="give a JSONL file of question/reference lines")
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for line in fh:
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    return False
                return isinstance(row, dict) and "question" in row
    return False


def read_qa_jsonl(path: Path) -> list[EvalItem]:
    items, problems = [], []
    with open(path, encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except ValueError as e:
                problems.append(Problem(f"not JSON ({e.msg})", where, hint="one JSON object per line"))
                continue
            question, reference = row.get("question"), row.get("reference", row.get("answer"))
            bad = [k for k, v in (("question", question), ("reference", reference)) if not isinstance(v, str) or not v]
            if bad:
                problems.append(Problem("missing or not text", where, ", ".join(bad), 'write {"question": "...", '
                                        '"reference": "..."}'))  # fmt: skip
                continue
            messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
            messages.append({"role": "user", "content": question})
            items.append(EvalItem(str(row.get("id", n)), messages, reference))
    if problems:
        raise DataError(f"{len(problems)} bad line(s) in {path}:", problems=problems)
    ids = [i.id for i in items]
    if len(set(ids)) < len(ids):
        raise DataError(f"{path}: two lines share an id", hint="give every line a unique id, or none")
    return items


def from_training_data(config: EvalConfig) -> list[EvalItem]:
    """The last assistant turn of each conversation is the reference; what comes before is the prompt."""
    from expertkit.data.config import DataConfig
    from expertkit.data.load import load_datasets, require_usable

    names = [config.eval_file] if config.eval_file else config.eval_dataset
    data = DataConfig.model_construct(
        dataset=names, dataset_dir=config.dataset_dir, max_samples=None, seed=config.seed, max_invalid_ratio=0.1
    )
    conversations = require_usable(load_datasets(data), 0.1)
    items = []
    for i, c in enumerate(conversations):
        messages = c.to_dicts()
        last = max(j for j, m in enumerate(messages) if m["role"] == "assistant")
        items.append(EvalItem(str(i), messages[:last], messages[last]["content"]))
    return items


def load_probe_items() -> list[EvalItem]:
    from expertkit.evaluate.probe import load_probe

    return [
        EvalItem(f"probe-{p['id']}", [{"role": "user", "content": p["question"]}], p["answer"]) for p in load_probe()
    ]


# -- answering --------------------------------------------------------------------------------------------------


def engine_groups(candidates: list[Candidate], config: EvalConfig) -> list[tuple[object, dict[str, str | None]]]:
    """(EngineConfig, {candidate: served model name}) per engine to start; candidates on one local model share one."""
    from expertkit.engine.config import EngineConfig

    groups: dict[tuple, list[Candidate]] = {}
    for c in candidates:
        key = ("local", c.model_name_or_path, c.template) if c.model_name_or_path else ("remote", c.name)
        groups.setdefault(key, []).append(c)
    out = []
    for key, members in groups.items():
        if key[0] == "remote":
            c = members[0]
            engine_config = EngineConfig(
                engine="openai", base_url=c.api_base, remote_api_key=c.api_key, served_model_name=c.model,
                max_new_tokens=config.max_new_tokens,
            )  # fmt: skip
            out.append((engine_config, {c.name: c.model}))
            continue
        adapters = {c.adapter_name_or_path for c in members if c.adapter_name_or_path}
        names = {path: f"adapter-{i}" for i, path in enumerate(sorted(adapters))}
        engine_config = EngineConfig(
            model_name_or_path=members[0].model_name_or_path,
            template=members[0].template,
            adapter_name_or_path=",".join(f"{n}={p}" for p, n in names.items()) or None,
            max_new_tokens=config.max_new_tokens,
            max_concurrency=config.max_concurrency,
            dtype=config.dtype,
        )
        base = engine_config.base_name()
        out.append((engine_config, {c.name: names.get(c.adapter_name_or_path, base) for c in members}))
    return out


async def answer_all(config, candidates, items, probe, output: Path, out):
    from expertkit.engine.base import load_engine

    answers: dict[str, dict[str, dict]] = {}
    probes: dict[str, dict[str, dict]] = {}
    losses: dict[str, tuple[float, int]] = {}
    timings: dict[str, float] = {}  # seconds each candidate spent answering the eval set (model load excluded)
    by_name = {c.name: c for c in candidates}
    for engine_config, served in engine_groups(candidates, config):
        engine = await asyncio.to_thread(load_engine, engine_config)
        try:
            for name, model in served.items():
                c = by_name[name]
                path = output / PREDICTIONS / f"{name}.jsonl"
                started = loop_time()
                answers[name] = await answer_set(config, c, engine, model, items, path, out)
                timings[name] = round(loop_time() - started, 3)
                if probe:
                    probes[name] = await answer_set(
                        config, c.model_copy(update={"kb_dir": None, "web": False}), engine, model, probe,
                        output / PREDICTIONS / f"{name}.probe.jsonl", out,
                    )  # fmt: skip
                if "eval_loss" in config.metrics and c.model_name_or_path:
                    losses[name] = await asyncio.to_thread(reference_loss, engine, model, items)
        finally:
            await engine.close()
    return answers, probes, losses, timings


def spec_hash(config: EvalConfig, c: Candidate, items: list[EvalItem]) -> str:
    """What an answer file was made with: a file made otherwise is started over, not mixed in."""
    spec = {
        "candidate": c.model_dump(mode="json", exclude={"api_key"}),
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "seed": config.seed,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def read_done(path: Path, spec: str) -> dict[str, dict]:
    """Answers already written by an earlier (interrupted) run with the same spec; a torn last line is ignored."""
    done: dict[str, dict] = {}
    if not path.is_file():
        return done
    drop_torn_tail(path)
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("spec") == spec:
                done[row["id"]] = row
    if not done:
        path.unlink()
    return done


async def answer_set(config, c: Candidate, engine, model, items, path: Path, out) -> dict[str, dict]:
    """Each item's answer, from the file when an earlier run wrote it, else generated and appended at once."""
    from expertkit.engine.base import SamplingParams, complete

    spec = spec_hash(config, c, items)
    done = read_done(path, spec)
    todo = [i for i in items if i.id not in done]
    label = f"{c.name}{' (probe)' if path.name.endswith('.probe.jsonl') else ''}"
    if not todo:
        say(out, f"{label}: {len(items)} answers already in {path}")
        return done
    if done:
        say(out, f"{label}: resuming, {len(done)} of {len(items)} answers already in {path}")
    kb = open_kb(c) if c.retrieval else None
    gate = asyncio.Semaphore(config.concurrency)
    started = loop_time()
    progress = {"n": 0}

    async def one(item: EvalItem) -> None:
        async with gate:
            messages, sources = item.messages, None
            if kb is not None:
                messages, sources = await ground(c, kb, item)
            seed = config.seed if config.temperature > 0 else None  # greedy needs none (and stays batched)
            params = SamplingParams(temperature=config.temperature, max_tokens=config.max_new_tokens, seed=seed)
            row = {"id": item.id, "spec": spec, "question": item.question, "reference": item.reference}
            try:
                delta = await complete(engine, messages, params, model)
                row.update(answer=delta.text, reasoning=delta.reasoning or None, finish_reason=delta.finish_reason)
            except ExpertkitError as e:
                row.update(answer="", error=str(e).splitlines()[0])
            if sources is not None:
                row["sources"] = [s.to_json() for s in sources]
                row["context"] = "\n\n".join(f"[{s.n}] " + "\n".join(h.text for h in s.chunks) for s in sources)
            append_jsonl(path, row)
            done[item.id] = row
            progress["n"] += 1
            n = progress["n"]
            if n == len(todo) or n % max(1, len(todo) // 10) == 0:
                rate = n / max(loop_time() - started, 1e-9)
                say(out, f"{label}: {len(done)}/{len(items)} answered ({rate:.2f} questions/s)")

    try:
        await asyncio.gather(*(one(i) for i in todo))
    finally:
        if kb is not None:
            kb.close()
    return done


def loop_time() -> float:
    return asyncio.get_running_loop().time()


def open_kb(c: Candidate):
    from expertkit.rag.config import KbConfig
    from expertkit.rag.kb import KnowledgeBase

    return KnowledgeBase.open(KbConfig(kb_dir=c.kb_dir, top_k=c.top_k), create=False)


async def ground(c: Candidate, kb, item: EvalItem):
    from expertkit.rag.answer import grounded_messages

    if c.web:
        from expertkit.rag.config import WebConfig
        from expertkit.rag.webread import search_web

        await search_web(item.question, WebConfig(web=True), kb)
    hits = await asyncio.to_thread(kb.search, item.question)
    system = next((m["content"] for m in item.messages if m["role"] == "system"), None)
    history = [m for m in item.messages[:-1] if m["role"] != "system"]
    return grounded_messages(item.question, hits, history=history, system=system)


def reference_loss(engine, model, items: list[EvalItem]) -> tuple[float, int]:
    """Summed NLL and token count of every reference answer (local models): eval loss and perplexity."""
    from expertkit.engine.score import answer_nll

    total, tokens = 0.0, 0
    for item in items:
        nll, n = answer_nll(engine, item.messages, item.reference, model)
        total, tokens = total + nll, tokens + n
    return total, tokens


# -- scoring ----------------------------------------------------------------------------------------------------


def score(config, candidates, items, answers, probes, losses, probe_items) -> dict:
    from expertkit.evaluate.metrics import score_all

    text_metrics = [m for m in config.metrics if m in TEXT_METRICS]
    summary: dict = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "eval_set": config.eval_file or ",".join(config.eval_dataset),
        "samples": len(items),
        "seed": config.seed,
        "metrics_asked": config.metrics,
        "candidates": {},
        "predictions": {},
    }
    for c in candidates:
        rows = [answers[c.name][i.id] for i in items]
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
        if c.name in probes:
            from expertkit.evaluate.probe import load_probe, score_probe

            probe_rows = [probes[c.name][p.id] for p in probe_items]
            entry["probe"] = score_probe([r.get("answer", "") for r in probe_rows], load_probe())
        summary["candidates"][c.name] = entry
        summary["predictions"][c.name] = [
            {k: v for k, v in {**row, "scores": {m: round(s, 2) for m, s in scores.items()}}.items() if k != "spec"}
            for row, scores in zip(rows, per)
        ]
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
