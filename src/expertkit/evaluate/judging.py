"""The judge's part of an eval: rubric scores, pairwise A/B against the first candidate, hallucination checks.

Verdicts are appended to output_dir/judge/*.jsonl as they come, keyed by question and answer, so an interrupted
eval asks the judge only what it has not answered yet.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from expertkit.core.errors import ExpertkitError
from expertkit.core.runs import append_jsonl, drop_torn_tail
from expertkit.evaluate.config import DEFAULT_CONCURRENCY

JUDGE_DIR = "judge"


def key(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:20]


def read_cache(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.is_file():
        drop_torn_tail(path)
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                    done[row["key"]] = row
                except (ValueError, KeyError):
                    continue
    return done


async def verdicts(path: Path, jobs: list[tuple[str, object]], gate: asyncio.Semaphore) -> list[dict]:
    """Each job's verdict: (key, a coroutine factory); cached ones from `path`, the rest asked and appended."""
    cache = read_cache(path)

    async def one(k: str, ask) -> dict:
        if k in cache:
            return cache[k]
        async with gate:
            try:
                row = {"key": k, **asdict(await ask())}
            except ExpertkitError as e:
                return {"error": str(e).splitlines()[0]}
        append_jsonl(path, row)
        cache[k] = row
        return row

    return list(await asyncio.gather(*(one(k, ask) for k, ask in jobs)))


async def judge_all(config, candidates, items, answers, summary: dict, output: Path, out) -> None:
    """Add judge metrics to `summary` (judge_* and hallucination_rate per candidate, `pairwise` win/tie/loss)."""
    from expertkit.evaluate.judge import Judge

    folder = output / JUDGE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    judge = Judge.from_url(config.judge_base_url, config.judge_model, config.judge_api_key)
    gate = asyncio.Semaphore(config.concurrency or DEFAULT_CONCURRENCY)
    errors = 0
    try:
        for c in candidates:
            rows = summary["predictions"][c.name]
            metrics = summary["candidates"][c.name]["metrics"]
            if "judge" in config.metrics:
                jobs = [(key(r["question"], r["reference"], answer(r)), rubric_job(judge, r)) for r in rows]
                found = await verdicts(folder / f"{c.name}.rubric.jsonl", jobs, gate)
                ok = [v for v in found if "error" not in v]
                errors += len(found) - len(ok)
                for r, v in zip(rows, found):
                    r["judge"] = v
                if ok:
                    for field in ("accuracy", "expertise", "usefulness"):
                        metrics[f"judge_{field}"] = round(sum(v[field] for v in ok) / len(ok), 2)
                    overall = [(v["accuracy"] + v["expertise"] + v["usefulness"]) / 3 for v in ok]
                    metrics["judge_overall"] = round(sum(overall) / len(overall), 2)
                out.write(f"judge: {c.name}: {len(ok)}/{len(rows)} answers scored\n")
            if "hallucination" in config.metrics:
                jobs = [(key(r["question"], answer(r), evidence(r)), hallucination_job(judge, r)) for r in rows]
                found = await verdicts(folder / f"{c.name}.hallucination.jsonl", jobs, gate)
                ok = [v for v in found if "error" not in v]
                errors += len(found) - len(ok)
                for r, v in zip(rows, found):
                    r["hallucination"] = v
                if ok:
                    metrics["hallucination_rate"] = round(100 * sum(v["hallucinated"] for v in ok) / len(ok), 2)
        if "pairwise" in config.metrics and len(candidates) > 1:
            first = candidates[0].name
            base = {r["id"]: r for r in summary["predictions"][first]}
            summary["pairwise"] = []
            for c in candidates[1:]:
                rows = summary["predictions"][c.name]
                jobs = [
                    (
                        key(r["question"], r["reference"], answer(r), answer(base[r["id"]])),
                        pair_job(judge, r, base[r["id"]]),
                    )
                    for r in rows
                ]
                found = await verdicts(folder / f"pairwise.{c.name}.vs.{first}.jsonl", jobs, gate)
                ok = [v for v in found if "error" not in v]
                errors += len(found) - len(ok)
                for r, v in zip(rows, found):
                    r[f"vs_{first}"] = v
                wins = {w: sum(v["winner"] == w for v in ok) for w in ("a", "tie", "b")}
                summary["pairwise"].append(
                    {"a": c.name, "b": first, "win": wins["a"], "tie": wins["tie"], "loss": wins["b"]}
                )
        summary["judge"] = {"base_url": config.judge_base_url, "model": config.judge_model, "errors": errors}
    finally:
        await judge.aclose()


def answer(row: dict) -> str:
    return row.get("answer") or ""


def evidence(row: dict) -> str:
    """What an answer may state: the eval row's source passage and the retrieved context when there are any (the
    reference answer is a summary of the passage), else the reference."""
    found = [text for text in (row.get("source_context"), row.get("context")) if text]
    return "\n\n".join(found) or row["reference"]


def rubric_job(judge, r: dict):
    return lambda: judge.rubric(r["question"], r["reference"], answer(r))


def hallucination_job(judge, r: dict):
    return lambda: judge.hallucination(r["question"], answer(r), evidence(r))


def pair_job(judge, r: dict, base: dict):
    return lambda: judge.pairwise(r["question"], r["reference"], answer(r), answer(base))
