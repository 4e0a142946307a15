"""A deterministic "reader" model behind our real OpenAI-compatible server, for grounded-answer tests.

It answers the way an obedient model would: the sentence of the numbered sources that shares the most words with
the question, followed by that source's citation `[n]`; "I don't know." when no sentence shares a word. Served by
`build_app` + uvicorn on 127.0.0.1, so `ask` reaches it through the real remote engine over HTTP.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

from live_server import ScriptedEngine

from expertkit.engine.base import Delta, Usage

SOURCE = re.compile(r'<source id="(\d+)"[^>]*>\n(.*?)\n</source>', re.S)
WORD = re.compile(r"[a-z0-9\u4e00-\u9fff-]+")


def words(text: str) -> set[str]:
    return {w for w in WORD.findall(text.lower()) if len(w) > 3}


def read_answer(prompt: str) -> str:
    question = prompt.rsplit("Question:", 1)[-1]
    want = words(question)
    best, best_n, best_overlap = "", 0, 0
    for n, body in SOURCE.findall(prompt):
        for sentence in re.split(r"(?<=[.!?。])\s+", body):
            overlap = len(want & words(sentence))
            if overlap > best_overlap:
                best, best_n, best_overlap = sentence.strip(), int(n), overlap
    return f"{best} [{best_n}]" if best else "I don't know."


class ReaderEngine(ScriptedEngine):
    def __init__(self):
        self.prompts: list[str] = []

    def model_names(self) -> list[str]:
        return ["reader"]

    async def stream(self, messages, params, model=None, tools=None):
        prompt = messages[-1]["content"]
        self.prompts.append(prompt)
        for word in read_answer(prompt).split(" "):
            yield Delta(text=word + " ")
        yield Delta(finish_reason="stop", usage=Usage(len(prompt.split()), 5))



@contextmanager
def reader_server(**keys):
    """(engine, base_url) of a live server on 127.0.0.1 answering with `ReaderEngine`; `keys`: more ServeConfig
    keys (kb_dir=..., web=True, ...)."""
    from live_server import serve_engine

    engine = ReaderEngine()
    with serve_engine(engine, served_model_name="reader", **keys) as url:
        yield engine, url + "/v1"
