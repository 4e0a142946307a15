"""Turning a growing list of generated tokens into clean text deltas: stop strings and `<think>` reasoning; reading
the JSON object out of a whole reply (the judge's verdicts, synth's questions and answers)."""

from __future__ import annotations

import json
import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class StopStrings:
    """Cut the output at the first stop string; hold back text that could be the start of one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """New text in, text safe to emit out (never a stop string or a prefix of one still being written)."""
        if not self.stops:  # most requests: nothing to look for, every token
            return text
        if self.stopped:
            return ""
        buf = self.pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self.pending = ""
            return buf[: min(hits)]
        hold = max((k for s in self.stops for k in range(1, len(s)) if buf.endswith(s[:k])), default=0)
        self.pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


class ReasoningSplitter:
    """Route a leading `<think>...</think>` block to reasoning and the rest to the answer, across any deltas.

    `started_in_reasoning`: the prompt already opened `<think>` (some templates end the generation prompt with it).
    """

    def __init__(self, started_in_reasoning: bool = False):
        self.state = "reasoning" if started_in_reasoning else "start"
        self.buf = ""

    def feed(self, text: str) -> tuple[str, str]:
        """(answer, reasoning) safe to emit for this new text."""
        self.buf += text
        answer = reasoning = ""
        while True:
            if self.state == "start":
                head = self.buf.lstrip()
                if head.startswith(THINK_OPEN):
                    self.state, self.buf = "reasoning", head[len(THINK_OPEN) :]
                elif head and not THINK_OPEN.startswith(head):
                    self.state = "answer"
                else:
                    return answer, reasoning  # undecided: empty or a prefix of <think>
            elif self.state == "reasoning":
                i = self.buf.find(THINK_CLOSE)
                if i < 0:
                    keep = max((k for k in range(1, len(THINK_CLOSE)) if self.buf.endswith(THINK_CLOSE[:k])), default=0)
                    reasoning += self.buf[: len(self.buf) - keep]
                    self.buf = self.buf[len(self.buf) - keep :]
                    return answer, reasoning
                reasoning += self.buf[:i]
                self.state, self.buf = "after", self.buf[i + len(THINK_CLOSE) :]
            elif self.state == "after":  # blank lines between </think> and the answer are not part of it
                self.buf = self.buf.lstrip("\n")
                if not self.buf:
                    return answer, reasoning
                self.state = "answer"
            else:
                answer, self.buf = answer + self.buf, ""
                return answer, reasoning

    def flush(self) -> tuple[str, str]:
        rest, self.buf = self.buf, ""
        return ("", rest) if self.state == "reasoning" else (rest if self.state != "after" else "", "")


THINK = re.compile(r"<think>.*?(?:</think>|$)", re.S)


def parse_json_object(text: str) -> dict:
    """The first JSON object in a model's reply, past `<think>` blocks, code fences and prose; ValueError if none."""
    text = text or ""
    if "</think>" in text and "<think>" not in text:
        text = text.rsplit("</think>", 1)[1]  # the chat template opened <think> in the prompt
    text = THINK.sub("", text)
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError("no JSON object in it")
