"""The state file's pairs into the dataset: filtered, deduplicated, split, in alpaca or sharegpt, with sources.

An alpaca row of train.json (`format=sharegpt`: the same pair as `conversations`)::

    {"instruction": "How often is the pump's seal replaced?", "input": "",
     "output": "Every 2,000 operating hours, or sooner when it leaks.",
     "source": {"file": "/data/docs/pump.md", "section": "Maintenance", "chunk_id": "3f2a...-00004",
                "quote": "The seal is replaced every 2,000 operating hours", "score": 9.0}}

A PDF's rows name the page (`"page": "3"`, or `"3-4"` for a chunk across two) instead of the section. A row of
eval.jsonl (what `expertkit eval eval_file=...` reads; `context` is the whole source chunk, for checking
answers against it)::

    {"id": "3f2a...-00004-1", "question": "...", "reference": "...", "context": "<the chunk>", "source": {...}}

Everything is rebuilt from the state file on every run, so the files always match it, and changing `min_score`,
`format` or `raft` needs no teacher calls.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from expertkit.core.runs import open_atomic, write_json_atomic
from expertkit.synth.config import SynthConfig
from expertkit.synth.state import ChunkJob, State

TRAIN_FILE, EVAL_FILE, FAILED_FILE, INFO_FILE = "train.json", "eval.jsonl", "failed.jsonl", "dataset_info.json"
DISTRACTOR_POOL = 512  # chunks sampled (seeded) as the pool RAFT distractors are drawn from
BEGIN_QUOTE, END_QUOTE = "##begin_quote##", "##end_quote##"  # the RAFT paper's citation markers


@dataclass
class Counts:
    """What became of the pairs: kept in train / eval, or why not."""

    chunks: int = 0
    chunks_done: int = 0
    chunks_failed: int = 0
    pairs: int = 0
    train_rows: int = 0
    eval_rows: int = 0
    removed: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.removed[reason] = self.removed.get(reason, 0) + 1


def write_dataset(state: State, config: SynthConfig, out: Path) -> Counts:
    """Write train.json, eval.jsonl, failed.jsonl and the dataset_info.json entry for the current inputs' chunks."""
    dedup = Dedup(config.near_dup_threshold)
    counts = Counts(chunks=state.count_current())
    pool = distractor_pool(state, config.seed) if config.raft else []
    rng = random.Random(config.seed)
    with (
        open_atomic(out / TRAIN_FILE) as train,
        open_atomic(out / EVAL_FILE) as held,
        open_atomic(out / FAILED_FILE) as failed,
    ):
        array = JsonArray(train)
        for job in state.jobs(state.current_keys()):
            if job.status == "failed":
                counts.chunks_failed += 1
                failed.write(json.dumps(failure_row(job), ensure_ascii=False) + "\n")
            if job.status != "done":
                continue
            counts.chunks_done += 1
            to_eval = in_eval(job.text, config)
            for n, pair in enumerate(job.pairs, 1):
                counts.pairs += 1
                reason = drop_reason(pair, config) or dedup.reason(pair["question"], f"{job.key}-{n}")
                if reason:
                    counts.drop(reason)
                elif to_eval:
                    held.write(json.dumps(eval_row(job, pair, n), ensure_ascii=False) + "\n")
                    counts.eval_rows += 1
                else:
                    array.add(train_row(job, pair, config, pool, state, rng))
                    counts.train_rows += 1
        array.close()
    write_info(out, config)
    return counts


class Dedup:
    """Exact and near-duplicate questions, with `data clean`'s index (MinHash of character n-grams: Chinese needs no
    segmentation); the first one kept wins."""

    def __init__(self, threshold: float):
        from expertkit.data.dedup import DuplicateIndex

        self.index = DuplicateIndex(threshold)

    def reason(self, text: str, name: str) -> str | None:
        """Why `text` is a duplicate of one kept before, or None (and it is kept)."""
        found = self.index.first_copy(name, " ".join(text.lower().split()))
        if found is None:
            return None
        return "duplicate question" if found[0] == "exact duplicate" else "near-duplicate question"


def drop_reason(pair: dict, config: SynthConfig) -> str | None:
    if pair.get("dropped"):
        return pair["dropped"]
    if pair.get("score", 0.0) < config.min_score:
        return f"judge score below min_score={config.min_score:g}"
    return None


def in_eval(text: str, config: SynthConfig) -> bool:
    """Whether a chunk's rows are held out: a seeded hash of its text, so the split is the same on every run and
    with every teacher and prompt. Not of its state key: that names the teacher (for a URL, its port too), so another
    teacher would move chunks a model trained on into the eval rows."""
    digest = hashlib.sha256(f"{config.seed}/{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < config.eval_size


def source_of(job: ChunkJob, pair: dict) -> dict:
    place = {"page": job.page} if job.page else {"section": job.section}
    return {"file": job.source, **place, "chunk_id": job.chunk_id, "quote": pair["quote"],
            "score": pair.get("score")}  # fmt: skip


def eval_row(job: ChunkJob, pair: dict, n: int) -> dict:
    return {"id": f"{job.chunk_id}-{n}", "question": pair["question"], "reference": pair["answer"],
            "context": job.text, "source": source_of(job, pair)}  # fmt: skip


def train_row(job: ChunkJob, pair: dict, config: SynthConfig, pool: list[str], state: State, rng: random.Random):
    question, answer = pair["question"], pair["answer"]
    source = source_of(job, pair)
    if config.raft:
        question, answer, source["oracle"] = raft_pair(job, pair, config, pool, state, rng)
    if config.format == "sharegpt":
        turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        return {"conversations": turns, "source": source}
    return {"instruction": question, "input": "", "output": answer, "source": source}


def raft_pair(job: ChunkJob, pair: dict, config: SynthConfig, pool: list[str], state: State, rng: random.Random):
    """RAFT (Zhang et al. 2024, arXiv:2403.10131): the question after `raft_distractors` other chunks, with the
    source (oracle) chunk among them in a share `raft_p` of rows (the paper's P); the answer cites the quote."""
    others = [k for k in pool if k != job.key]
    picked = rng.sample(others, min(config.raft_distractors, len(others)))
    texts = [d.text for d in state.jobs(picked)]
    oracle = rng.random() < config.raft_p
    if oracle:
        texts.insert(rng.randrange(len(texts) + 1), job.text)
    documents = "\n\n".join(f"<DOCUMENT>{t}</DOCUMENT>" for t in texts)
    question = f"{documents}\n\n{pair['question']}"
    answer = f"{BEGIN_QUOTE}{pair['quote']}{END_QUOTE}\n\n{pair['answer']}"
    return question, answer, oracle


def distractor_pool(state: State, seed: int) -> list[str]:
    """Up to DISTRACTOR_POOL keys of the current chunks, a seeded uniform sample (reservoir sampling: one pass)."""
    rng, pool = random.Random(seed), []
    for n, key in enumerate(state.current_keys(("done",))):
        if n < DISTRACTOR_POOL:
            pool.append(key)
        elif (j := rng.randrange(n + 1)) < DISTRACTOR_POOL:
            pool[j] = key
    return pool


def failure_row(job: ChunkJob) -> dict:
    return {"chunk_id": job.chunk_id, "file": job.source, "section": job.section, "page": job.page, "error": job.error,
            "reply": job.reply, "chunk": job.text}  # fmt: skip


def write_info(out: Path, config: SynthConfig) -> None:
    """dataset_info.json in LLaMA-Factory's format, with this dataset's entry added (other entries kept)."""
    path = out / INFO_FILE
    info = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    name = config.dataset_name or out.resolve().name
    if config.format == "sharegpt":
        entry = {"file_name": TRAIN_FILE, "formatting": "sharegpt", "columns": {"messages": "conversations"}}
    else:
        columns = {"prompt": "instruction", "query": "input", "response": "output"}
        entry = {"file_name": TRAIN_FILE, "formatting": "alpaca", "columns": columns}
    info[name] = entry
    write_json_atomic(path, info)


class JsonArray:
    """A JSON list written one element at a time (train.json streams; it is never held whole)."""

    def __init__(self, fh: IO[str]):
        self.fh = fh
        self.n = 0
        fh.write("[")

    def add(self, row: dict) -> None:
        self.fh.write(("\n" if self.n == 0 else ",\n") + json.dumps(row, ensure_ascii=False))
        self.n += 1

    def close(self) -> None:
        self.fh.write("\n]\n" if self.n else "]\n")
