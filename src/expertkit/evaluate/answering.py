"""Each candidate answers the eval set (and the probe) through an `Engine`: the answers appended to
predictions/<candidate>.jsonl as they come (an interrupted eval resumes), plus the likelihood metrics of local models.

Candidates on the same local model share one engine (the adapters served beside the base by name), so the base
weights are loaded once; answers are generated concurrently, which the local engine batches.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

from expertkit.core.errors import ExpertkitError
from expertkit.core.runs import append_jsonl, drop_torn_tail
from expertkit.evaluate.config import DEFAULT_CONCURRENCY, Candidate, EvalConfig
from expertkit.evaluate.evalset import EvalItem, PairItem

PREDICTIONS = "predictions"


def say(out, line: str) -> None:
    out.write(line + "\n")
    out.flush()


def engine_groups(candidates: list[Candidate], config: EvalConfig) -> list[tuple[object, dict[str, str | None]]]:
    """(EngineConfig, {candidate: served model name}) per engine to start; candidates on one local model (and engine)
    share one, the adapters served beside the base by name."""
    from expertkit.engine.config import EngineConfig

    groups: dict[tuple, list[Candidate]] = {}
    for c in candidates:
        engine = config.engine_of(c)
        key = ("openai", c.name) if engine == "openai" else (engine, c.model_name_or_path, c.template)
        groups.setdefault(key, []).append(c)
    out = []
    for key, members in groups.items():
        if key[0] == "openai":
            c = members[0]
            engine_config = EngineConfig(
                engine="openai", base_url=c.api_base, remote_api_key=c.api_key, served_model_name=c.model,
                max_new_tokens=config.max_new_tokens,
            )  # fmt: skip
            out.append((engine_config, {c.name: c.model}))
            continue
        adapters = {c.adapter_name_or_path for c in members if c.adapter_name_or_path}
        names = {path: f"adapter-{i}" for i, path in enumerate(sorted(adapters))}
        vllm = key[0] == "vllm"
        engine_config = EngineConfig(
            engine=key[0],
            model_name_or_path=members[0].model_name_or_path,
            template=members[0].template,
            adapter_name_or_path=",".join(f"{n}={p}" for p, n in names.items()) or None,
            max_new_tokens=config.max_new_tokens,
            max_concurrency=config.max_concurrency or (VLLM_MAX_NUM_SEQS if vllm else 16),
            dtype=config.dtype,
            quantization_bit=config.quantization_bit,  # local candidates load their base quantised when asked
            quantization_type=config.quantization_type,
            double_quantization=config.double_quantization,
            **(vllm_keys(config) if vllm else {}),
        )
        base = engine_config.base_name()
        out.append((engine_config, {c.name: names.get(c.adapter_name_or_path, base) for c in members}))
    return out


VLLM_MAX_NUM_SEQS = 256  # vLLM's own default max_num_seqs on a GPU


def vllm_keys(config: EvalConfig) -> dict:
    keys = ("gpu_memory_utilization", "tensor_parallel_size", "max_model_len", "vllm_config")
    return {k: getattr(config, k) for k in keys}


def no_likelihoods(config: EvalConfig, c: Candidate) -> str | None:
    """Why a candidate gives no eval_loss or preference (None: it does; only the transformers engine scores text)."""
    engine = config.engine_of(c)
    if engine == "openai":
        return "an endpoint gives no likelihoods (needs model_name_or_path)"
    if engine == "vllm":
        return "engine=vllm scores no given answers here (run it with engine=transformers)"
    return None


async def answer_all(config, candidates, items, probe, output: Path, out, pairs: list[PairItem] | None = None):
    """Every candidate's answers (and probe answers, reference losses, pair scores), one engine at a time."""
    from expertkit.engine.factory import load_engine

    answers: dict[str, dict[str, dict]] = {}
    probes: dict[str, dict[str, dict]] = {}
    losses: dict[str, tuple[float, int]] = {}
    timings: dict[str, float] = {}  # seconds each candidate spent answering the eval set (model load excluded)
    prefs: dict[str, list[dict]] = {}  # candidate: a row per pair (transformers models)
    by_name = {c.name: c for c in candidates}
    groups = engine_groups(candidates, config)
    for engine_config, _ in groups:  # every endpoint answers before any model loads: a wrong URL fails at once
        if engine_config.engine == "openai" and (items or probe):
            await check_reachable(engine_config)
    for engine_config, served in groups:
        scored = [n for n in served if not no_likelihoods(config, by_name[n])]
        if not (items or probe or (pairs and scored)):
            for name in served:  # a ranking eval set and no likelihoods: nothing to ask
                answers[name], timings[name] = {}, 0.0
            continue
        engine = await asyncio.to_thread(load_engine, engine_config)
        try:
            for name, model in served.items():
                c = by_name[name]
                started = loop_time()
                path = output / PREDICTIONS / f"{name}.jsonl"
                answers[name] = await answer_set(config, c, engine, model, items, path, out) if items else {}
                timings[name] = round(loop_time() - started, 3)
                if pairs and name in scored:
                    started = loop_time()
                    prefs[name] = await asyncio.to_thread(pair_scores, engine, model, pairs)
                    timings[name] = round(loop_time() - started, 3)
                if probe:
                    probes[name] = await answer_set(
                        config, c.model_copy(update={"kb_dir": None, "web": False}), engine, model, probe,
                        output / PREDICTIONS / f"{name}.probe.jsonl", out,
                    )  # fmt: skip
                if "eval_loss" in config.metrics and items and name in scored:
                    losses[name] = await asyncio.to_thread(reference_loss, engine, model, items)
        finally:
            await engine.close()
    for c in candidates:
        why = no_likelihoods(config, c)
        if why and (pairs or "eval_loss" in config.metrics):
            say(out, f"{c.name}: {'preference' if pairs else 'eval_loss'} skipped: {why}")
    return answers, probes, losses, timings, prefs


async def check_reachable(engine_config) -> None:
    """An ExpertkitError naming base_url when the server does not answer (or refuses the key), before any answer."""
    import httpx

    url = engine_config.base_url.rstrip("/")
    key = engine_config.remote_api_key or os.environ.get("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30, connect=10)) as client:
            response = await client.get(url + "/models", headers=headers)
    except httpx.TransportError as e:
        raise ExpertkitError(
            f"cannot reach the OpenAI-compatible server at {url} ({type(e).__name__}: {e or 'no answer'})",
            hint="start it (e.g. expertkit serve model_name_or_path=... port=8000, then base_url="
            "http://127.0.0.1:8000/v1), or fix base_url / the candidate's api_base",
        ) from None
    if response.status_code in (401, 403):
        raise ExpertkitError(
            f"{url} refused the key ({response.status_code})", hint="give api_key=... (or set OPENAI_API_KEY)"
        )


def spec_hash(config: EvalConfig, c: Candidate, items: list[EvalItem]) -> str:
    """What an answer file was made with: a file made otherwise is started over, not mixed in."""
    spec = {
        # a candidate run on transformers hashes as before engines were a key: its earlier answers still count
        "candidate": c.model_dump(
            mode="json", exclude={"api_key"} | ({"engine"} if c.engine in (None, "transformers") else set())
        ),
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "seed": config.seed,
        **({"top_p": config.top_p} if config.top_p < 1.0 else {}),  # unset: the hash answers had before top_p
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
    from expertkit.engine.base import SamplingParams

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
    gate = asyncio.Semaphore(in_flight(config, c, len(todo)))
    started = loop_time()
    progress = {"n": 0}

    async def one(item: EvalItem) -> None:
        async with gate:
            messages, sources = item.messages, None
            if kb is not None:
                messages, sources = await ground(c, kb, item)
            seed = config.seed if config.temperature > 0 else None  # greedy needs none (and stays batched)
            params = SamplingParams(
                temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_new_tokens, seed=seed
            )
            row = {"id": item.id, "spec": spec, "question": item.question, "reference": item.reference}
            if item.source:
                row["source_context"] = item.source  # the eval row's passage (data synth's eval.jsonl `context`)
            try:
                delta = await generate(c, engine, messages, params, model)
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


def in_flight(config: EvalConfig, c: Candidate, todo: int) -> int:
    """Questions a candidate has in flight at once: `concurrency`, else all of them on vLLM (its scheduler batches
    what fits) and 16 elsewhere."""
    if config.concurrency:
        return config.concurrency
    return max(1, todo) if config.engine_of(c) == "vllm" else DEFAULT_CONCURRENCY


async def generate(c: Candidate, engine, messages: list[dict], params, model: str | None):
    """The whole answer; a server that goes away mid-eval stops the eval with its URL (what is answered is kept)."""
    from expertkit.engine.base import complete

    if c.local:
        return await complete(engine, messages, params, model)
    import httpx

    try:
        return await complete(engine, messages, params, model)
    except httpx.TransportError as e:
        raise ExpertkitError(
            f"{c.name}: lost the server at {c.api_base} ({type(e).__name__}: {e or 'no answer'})",
            hint="the answers so far are in predictions/: start the server again and rerun the same command to resume",
        ) from None


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
