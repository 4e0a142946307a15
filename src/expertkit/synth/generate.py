"""One chunk into scored question/answer pairs: questions -> an answer with its quote per question -> a judge score.

    pairs = await synthesize_chunk(job, teacher, prompts, config)
    # [{"question": ..., "answer": ..., "quote": "<exact text of the chunk>", "score": 8.0, "reason": ...}, ...]

Each reply is read leniently (the first JSON object, past `<think>`, code fences and prose). A reply that cannot be
read is asked again once, with the bad reply shown; if the second cannot be read either, the chunk fails with that
reply kept (`ChunkFailed`). An answer whose quote is not in the chunk is kept with `dropped` set, so the counts say
why it is not in the dataset; the quote kept is the chunk's own text (whitespace as in the chunk).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import TypeVar

from expertkit.core.errors import ExpertkitError
from expertkit.engine.text import parse_json_object
from expertkit.rag.chunk import split_text
from expertkit.synth.config import SynthConfig
from expertkit.synth.prompts import Prompts
from expertkit.synth.state import ChunkJob
from expertkit.synth.teacher import Teacher, TeacherError

T = TypeVar("T")
AGAIN = "That reply could not be read ({problem}). Reply with only the JSON object asked for."
MAX_SPLITS = 2  # a chunk too long for the teacher is tried in halves, then quarters, then fails
MIN_PIECE = 200  # characters: smaller pieces hold too little to ask about
QUOTE_MARKS = "\"'“”‘’「」『』«»` "


class ChunkFailed(ExpertkitError):
    """The teacher's replies for this chunk could not be used; `reply` is the last one, kept for inspection."""

    def __init__(self, message: str, reply: str = ""):
        super().__init__(message)
        self.reply = reply


async def synthesize_chunk(
    job: ChunkJob, teacher: Teacher, prompts: Prompts, config: SynthConfig, text: str | None = None, depth: int = 0
) -> list[dict]:
    """The chunk's pairs; a chunk too long for the teacher's context is split in halves (twice at most, never below
    MIN_PIECE characters) and its pieces asked one by one (their quotes are the chunk's text too)."""
    text = job.text if text is None else text
    try:
        return await pairs_of(text, job, teacher, prompts, config)
    except TeacherError as e:
        if not e.too_long or depth >= MAX_SPLITS or len(text) < 2 * MIN_PIECE:
            raise
    pairs = []
    for piece in split_text(text, size=len(text) // 2 + MIN_PIECE // 2, overlap=0):
        pairs += await synthesize_chunk(job, teacher, prompts, config, piece.text, depth + 1)
    return pairs


async def pairs_of(text: str, job: ChunkJob, teacher: Teacher, prompts: Prompts, config: SynthConfig) -> list[dict]:
    lang = job.language
    values = {"chunk": text, "title": job.title}
    questions = await ask_json(
        teacher, prompts, lang, prompts.render(lang, "questions", n=str(config.questions_per_chunk), **values),
        lambda obj: read_questions(obj, config.questions_per_chunk),
    )  # fmt: skip
    answers = await asyncio.gather(
        *(ask_json(teacher, prompts, lang, prompts.render(lang, "answer", question=q, **values), read_answer)
          for q in questions),
        return_exceptions=True,  # let every request end before a failure fails the chunk
    )  # fmt: skip
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    pairs = []
    for question, (answer, quote) in zip(questions, answers):
        found = locate_quote(quote, text)
        pair = {"question": question, "answer": answer, "quote": found or quote}
        if not answer:
            pair["dropped"] = "no answer"
        elif found is None:
            pair["dropped"] = "quote not in the chunk"
        pairs.append(pair)
    kept = [p for p in pairs if "dropped" not in p]
    if kept:
        listed = "\n\n".join(f"{i}. Q: {p['question']}\n   A: {p['answer']}" for i, p in enumerate(kept, 1))
        prompt = prompts.render(lang, "judge", pairs=listed, **values)
        scores = await ask_json(teacher, prompts, lang, prompt, read_scores, temperature=0.0)
        for i, pair in enumerate(kept, 1):
            pair["score"], pair["reason"] = scores.get(i, (0.0, "the judge gave no score"))
    return pairs


async def ask_json(
    teacher: Teacher, prompts: Prompts, lang: str, prompt: str, read: Callable[[dict], T], temperature=None
) -> T:
    """What `read` makes of the teacher's JSON reply; one retry with the bad reply shown, then ChunkFailed."""
    messages = [{"role": "system", "content": prompts.system(lang)}, {"role": "user", "content": prompt}]
    reply = ""
    for _ in range(2):
        reply = await teacher.ask(messages, temperature)
        try:
            return read(parse_json_object(reply))
        except ValueError as e:
            problem = str(e)
            messages = [*messages[:2], {"role": "assistant", "content": reply},
                        {"role": "user", "content": AGAIN.format(problem=problem)}]  # fmt: skip
    raise ChunkFailed(f"the teacher's reply could not be read twice ({problem})", reply=reply)


def read_questions(obj: dict, n: int) -> list[str]:
    value = obj.get("questions")
    if not isinstance(value, list):
        raise ValueError('no "questions" list')
    out = []
    for item in value:
        text = item.get("question") if isinstance(item, dict) else item
        if isinstance(text, str) and text.strip() and text.strip() not in out:
            out.append(text.strip())
    if not out:
        raise ValueError('"questions" holds no question')
    return out[:n]


def read_answer(obj: dict) -> tuple[str, str]:
    answer, quote = obj.get("answer"), obj.get("quote", "")
    if not isinstance(answer, str):
        raise ValueError('no "answer" text')
    if isinstance(quote, list):  # several quoted sentences
        quote = " ".join(str(q) for q in quote)
    return answer.strip(), str(quote or "")


def read_scores(obj: dict) -> dict[int, tuple[float, str]]:
    """{pair number: (score clamped to 1..10, reason)} from {"scores": [{"id": 1, "score": 8, "reason": ...}]}."""
    value = obj.get("scores")
    if not isinstance(value, list):
        raise ValueError('no "scores" list')
    out = {}
    for n, item in enumerate(value, 1):
        if not isinstance(item, dict):
            raise ValueError(f"score {n} is not an object")
        try:
            number = int(item.get("id", n))
            score = float(re.search(r"-?\d+(?:\.\d+)?", str(item.get("score"))).group())
        except (TypeError, ValueError, AttributeError):
            raise ValueError(f"score {n} has no number: {json.dumps(item, ensure_ascii=False)[:100]}") from None
        out[number] = (min(10.0, max(1.0, score)), str(item.get("reason", "")))
    if out and min(out) == 0:  # the teacher counted from 0
        out = {number + 1: value for number, value in out.items()}
    return out


def locate_quote(quote: str, chunk: str) -> str | None:
    """The chunk's own text that `quote` copies (whitespace may differ; quote marks and ellipses around it are
    ignored), or None when the chunk does not hold it."""
    quote = quote.strip().strip(QUOTE_MARKS).removesuffix("...").removesuffix("…").strip()
    if not quote:
        return None
    if quote in chunk:
        return quote
    words = quote.split()
    match = re.search(r"\s+".join(re.escape(w) for w in words), chunk)
    return match.group(0) if match else None
