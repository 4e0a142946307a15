"""A deterministic judge model behind our real OpenAI-compatible server, for the judge tests.

It grades from the prompt the way a simple, position-biased judge would:
- rubric: accuracy 10 when the answer contains the reference, else 2; expertise 7; usefulness 15 or 0 (out of
  range on purpose: the client clamps to 10 and 1); the JSON comes in a ```json fence after some prose.
- pairwise: the answer that contains the reference wins; when both or neither do, it picks "A" (position bias);
  the JSON follows a <think> block.
- hallucination: hallucinated when the answer is not found in the evidence.
A question containing "[garbage]" always gets a reply with no JSON; "[garbage-once]" only until the client retries.
Served by `build_app` + uvicorn on 127.0.0.1, so the judge reaches it through the real remote engine (SSE streaming).
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager

from live_server import ScriptedEngine

from expertkit.engine.base import Delta, Usage

MODEL = "judge"


def tag(prompt: str, name: str) -> str | None:
    found = re.search(rf"<{name}>\n(.*?)\n</{name}>", prompt, re.S)
    return found.group(1) if found else None


def has(text: str, part: str) -> bool:
    return part.strip().lower() in text.lower()


def judge_reply(messages: list[dict]) -> str:
    prompt = next(m["content"] for m in messages if m["role"] == "user")
    retried = any(m["role"] == "assistant" for m in messages)
    question = tag(prompt, "question") or ""
    if "[garbage]" in question or ("[garbage-once]" in question and not retried):
        return "I think the answer is pretty good, well done!"
    reference, evidence = tag(prompt, "reference"), tag(prompt, "evidence")
    if tag(prompt, "answer_a") is not None:
        a, b = has(tag(prompt, "answer_a"), reference), has(tag(prompt, "answer_b"), reference)
        winner = "B" if b and not a else "A"
        verdict = {"winner": winner, "reason": f"answer {winner} matches the reference"}
        return f"<think>Compare both answers with the reference.</think>{json.dumps(verdict)}"
    answer = tag(prompt, "answer") or ""
    if evidence is not None:
        verdict = {"hallucinated": not has(evidence, answer), "reason": "checked against the evidence"}
        return json.dumps(verdict)
    right = has(answer, reference)
    verdict = {"accuracy": 10 if right else 2, "expertise": 7, "usefulness": 15 if right else 0, "reason": "graded"}
    return f"Here is my grading:\n```json\n{json.dumps(verdict, indent=1)}\n```\nHope this helps."


class JudgeEngine(ScriptedEngine):
    """Answers with `judge_reply`, a few characters per delta; keeps every request for the tests to look at."""

    def __init__(self):
        self.requests: list[tuple[list[dict], object]] = []

    def model_names(self) -> list[str]:
        return [MODEL]

    async def stream(self, messages, params, model=None, tools=None):
        self.requests.append((messages, params))
        reply = judge_reply(messages)
        for i in range(0, len(reply), 7):
            yield Delta(text=reply[i : i + 7])
        yield Delta(finish_reason="stop", usage=Usage(10, len(reply)))



@contextmanager
def judge_server(api_key: str | None = None):
    """(engine, base_url) of a live server on 127.0.0.1 answering with `JudgeEngine`."""
    from live_server import serve_engine

    engine = JudgeEngine()
    with serve_engine(engine, served_model_name=MODEL, api_key=[api_key] if api_key else []) as url:
        yield engine, url + "/v1"
