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
class PairItem:
    """One row of a ranking eval set: a prompt with a preferred and a rejected answer."""

    id: str
    messages: list[dict]  # the prompt: everything before the answer
    chosen: str
    rejected: str

    @property
    def question(self) -> str:
        return self.messages[-1]["content"] if self.messages else ""


@dataclass
class EvalResult:
    output_dir: Path
    metrics_path: Path
    report_path: Path | None
    summary: dict


def run(config: EvalConfig, out=None) -> EvalResult:
    out = out or sys.stderr
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


def first_row(path: Path) -> object:
    """The first non-blank line of a JSONL file, parsed (None when it is not JSON)."""
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for line in fh:
            if line.strip():
                try:
                    return json.loads(line)
                except ValueError:
                    return None
    return None


def load_pair_set(config: EvalConfig) -> list[PairItem] | None:
    """The chosen/rejected pairs of a ranking eval set; None when the eval set is question/reference."""
    if config.eval_file:
        path = Path(config.eval_file)
        if not path.is_file():
            return None  # load_eval_set says it does not exist
        row = first_row(path)
        if not (isinstance(row, dict) and "chosen" in row and "rejected" in row):
            return None
        pairs = read_pair_jsonl(path) if "question" in row else pairs_from_preference_data(config, [str(path)])
    else:
        from expertkit.data.registry import resolve_dataset

        ranking = [n for n in config.eval_dataset if resolve_dataset(n, config.dataset_dir).ranking]
        if not ranking:
            return None
        if len(ranking) < len(config.eval_dataset):
            others = [n for n in config.eval_dataset if n not in ranking]
            raise DataError(
                f"eval_dataset mixes ranking datasets ({', '.join(ranking)}) with question/reference ones "
                f"({', '.join(others)})",
                hint="evaluate the pairs (metrics=preference) and the questions in two evals",
            )
        pairs = pairs_from_preference_data(config, config.eval_dataset)
    if config.max_samples and len(pairs) > config.max_samples:
        import random

        keep = sorted(random.Random(config.seed).sample(range(len(pairs)), config.max_samples))
        pairs = [pairs[i] for i in keep]
    if not pairs:
        raise DataError("the eval set has no chosen/rejected pairs", hint="check eval_file / eval_dataset")
    return pairs


def read_pair_jsonl(path: Path) -> list[PairItem]:
    """Rows of {"question", "chosen", "rejected"} text (`system`, `id` optional); every bad line is located."""

    def make(row: dict, where: str, n: int) -> PairItem | Problem:
        question = row.get("question", row.get("prompt"))
        fields = (("question", question), ("chosen", row.get("chosen")), ("rejected", row.get("rejected")))
        bad = [k for k, v in fields if not isinstance(v, str) or not v]
        if bad:
            return Problem("missing or not text", where, ", ".join(bad),
                           'write {"question": "...", "chosen": "...", "rejected": "..."}')  # fmt: skip
        return PairItem(str(row.get("id", n)), prompt_messages(row, question), row["chosen"], row["rejected"])

    return read_jsonl_items(path, make)


def read_jsonl_items(path: Path, make) -> list:
    """One item per JSON line (`make(row, where, line_number)` builds it or returns the Problem); every bad line is
    reported at once, and ids must be unique."""
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
            item = make(row, where, n) if isinstance(row, dict) else Problem(
                "not a JSON object", where, hint='write {"question": ..., ...}'
            )  # fmt: skip
            (problems if isinstance(item, Problem) else items).append(item)
    if problems:
        raise DataError(f"{len(problems)} bad line(s) in {path}:", problems=problems)
    ids = [i.id for i in items]
    if len(set(ids)) < len(ids):
        raise DataError(f"{path}: two lines share an id", hint="give every line a unique id, or none")
    return items


def prompt_messages(row: dict, question: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return [*messages, {"role": "user", "content": question}]


def pairs_from_preference_data(config: EvalConfig, names: list[str]) -> list[PairItem]:
    """Pairs from any format DPO reads (TRL prompt/chosen/rejected, alpaca or sharegpt ranking); no bad row passes."""
    from expertkit.data.config import DataConfig
    from expertkit.data.load import load_preference_datasets

    data = DataConfig.model_construct(
        dataset=names, dataset_dir=config.dataset_dir, max_samples=None, seed=config.seed, max_invalid_ratio=0.0
    )
    loaded = load_preference_datasets(data, "pairs")
    problems = [p for d in loaded for p in d.problems]
    if problems:
        raise DataError(f"{len(problems)} bad row(s) in the ranking eval set:", problems=problems)
    items = []
    for d in loaded:
        for p in d.items:
            messages = [{"role": m.role, "content": m.content} for m in p.prompt]
            items.append(PairItem(p.source or str(len(items)), messages, p.chosen.content, p.rejected.content))
    return items


def pair_metrics(config: EvalConfig) -> EvalConfig:
    """A ranking eval set has no reference answers: only preference applies (the default when metrics is unset)."""
    if "metrics" not in config.model_fields_set:
        return config.model_copy(update={"metrics": ["preference"]})
    others = [m for m in config.metrics if m != "preference"]
    if others:
        raise DataError(
            f"the eval set is chosen/rejected pairs, which has no reference answers for metrics {', '.join(others)}",
            hint="use metrics=preference with a ranking eval set, and a question/reference set for the others",
        )
    return config


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
    def make(row: dict, where: str, n: int) -> EvalItem | Problem:
        question, reference = row.get("question"), row.get("reference", row.get("answer"))
        bad = [k for k, v in (("question", question), ("reference", reference)) if not isinstance(v, str) or not v]
        if bad:
            return Problem("missing or not text", where, ", ".join(bad),
                           'write {"question": "...", "reference": "..."}')  # fmt: skip
        return EvalItem(str(row.get("id", n)), prompt_messages(row, question), reference)

    return read_jsonl_items(path, make)


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
            quantization_bit=config.quantization_bit,  # local candidates load their base quantised when asked
            quantization_type=config.quantization_type,
            double_quantization=config.double_quantization,
        )
        base = engine_config.base_name()
        out.append((engine_config, {c.name: names.get(c.adapter_name_or_path, base) for c in members}))
    return out


async def answer_all(config, candidates, items, probe, output: Path, out, pairs: list[PairItem] | None = None):
    from expertkit.engine.base import load_engine

    answers: dict[str, dict[str, dict]] = {}
    probes: dict[str, dict[str, dict]] = {}
    losses: dict[str, tuple[float, int]] = {}
    timings: dict[str, float] = {}  # seconds each candidate spent answering the eval set (model load excluded)
    prefs: dict[str, list[dict]] = {}  # candidate: a row per pair (local models)
    by_name = {c.name: c for c in candidates}
    for engine_config, served in engine_groups(candidates, config):
        local = any(by_name[n].model_name_or_path for n in served)
        if not (items or probe or (pairs and local)):
            for name in served:  # a ranking eval set on an endpoint: nothing to ask it
                answers[name], timings[name] = {}, 0.0
            continue
        engine = await asyncio.to_thread(load_engine, engine_config)
        try:
            for name, model in served.items():
                c = by_name[name]
                path = output / PREDICTIONS / f"{name}.jsonl"
                started = loop_time()
                answers[name] = await answer_set(config, c, engine, model, items, path, out) if items else {}
                timings[name] = round(loop_time() - started, 3)
                if pairs and c.model_name_or_path:
                    started = loop_time()
                    prefs[name] = await asyncio.to_thread(pair_scores, engine, model, pairs)
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
    for c in candidates:
        if pairs and not c.model_name_or_path:
            say(out, f"{c.name}: preference skipped: an endpoint gives no likelihoods (needs model_name_or_path)")
    return answers, probes, losses, timings, prefs


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


def pair_scores(engine, model, pairs: list[PairItem]) -> list[dict]:
    """Per pair: the summed log-probability (nats) of the chosen and of the rejected answer after the prompt."""
    from expertkit.engine.score import answer_nll

    rows = []
    for pair in pairs:
        chosen_nll, chosen_tokens = answer_nll(engine, pair.messages, pair.chosen, model)
        rejected_nll, rejected_tokens = answer_nll(engine, pair.messages, pair.rejected, model)
        margin = rejected_nll - chosen_nll  # log p(chosen) - log p(rejected)
        rows.append({
            "id": pair.id, "question": pair.question, "chosen": pair.chosen, "rejected": pair.rejected,
            "chosen_logp": round(-chosen_nll, 4), "rejected_logp": round(-rejected_nll, 4),
            "chosen_tokens": chosen_tokens, "rejected_tokens": rejected_tokens,
            "margin": round(margin, 4), "prefers_chosen": margin > 0,
        })  # fmt: skip
    return rows


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
        if pairs is not None:
            metrics.update(preference_summary(prefs.get(c.name, [])))
            if c.name not in prefs:
                entry["notes"] = ["preference skipped: an endpoint gives no likelihoods (needs model_name_or_path)"]
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
