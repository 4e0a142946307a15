"""A scripted teacher: an OpenAI-compatible chat server (FastAPI + uvicorn on 127.0.0.1) whose replies are derived
from the chunk in the prompt, for the synth tests and bench/synth_throughput.py.

- questions prompt (asks for "questions"): one question per sentence of the chunk, "What does the text say about:
  <sentence>?" (Chinese: 文中关于“<sentence>”说了什么？);
- answer prompt (asks for "quote"): the sentence named in the question, as the answer and as the quote;
- judge prompt (asks for "scores"): 9 for every pair, 2 for a question holding "[low]".
Markers in the chunk change the reply: "[think]" wraps it in <think>...</think>, "[fence]" puts it in a ```json
fence with prose around it, "[garbage]" always answers prose without JSON, "[garbage-once]" only until the client
asks again, "[badquote]" quotes text the chunk does not hold, "[toolong]" (or a prompt over `max_prompt_chars`)
answers 400 with vLLM's context-length message. `faults` queues HTTP errors for the next requests (status,
headers); `api_key` set: 401 without it.
Streams (SSE, usage in the last chunk) when asked to, as vLLM does, and answers whole otherwise (the openai client).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

MODEL = "teacher"
PAGE = """<!doctype html><html><head><title>Pump care</title></head><body><nav>Home | Products</nav>
<main><h1>Pump care</h1><p>The impeller of the P-300 pump is cleaned every three months. Its shaft is aligned with a
laser after every repair. A worn impeller lowers the flow by a tenth.</p></main><footer>(c) Acme</footer>
</body></html>"""
SENTENCE = re.compile(r"[^.!?。！？\n]+[.!?。！？]")


@dataclass
class Teacher:
    latency: float = 0.0  # seconds per request, before the reply
    max_prompt_chars: int | None = None  # longer prompts get the context-length 400
    api_key: str | None = None
    faults: list[tuple[int, dict]] = field(default_factory=list)  # (status, headers) for the next requests, in order
    calls: list[dict] = field(default_factory=list)  # {"task", "chunk", "status", "prompt", "system", "model"} each
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0  # requests being answered now, and the most at once (bench/synth_throughput.py)
    max_in_flight: int = 0

    def tasks(self, task: str) -> list[dict]:
        return [c for c in self.calls if c["task"] == task and c["status"] == 200]


def sentences(chunk: str) -> list[str]:
    return [s.strip() for s in SENTENCE.findall(chunk) if len(s.strip()) > 3]


def tag(prompt: str, name: str) -> str:
    found = re.search(rf"<{name}>\n(.*?)\n</{name}>", prompt, re.S)
    return found.group(1) if found else ""


def task_of(prompt: str) -> str:
    for task, marker in (("judge", '"scores"'), ("questions", '"questions"'), ("answer", '"quote"')):
        if marker in prompt:
            return task
    return "other"


def reply_for(messages: list[dict]) -> str:
    prompt = next(m["content"] for m in messages if m["role"] == "user")
    retried = any(m["role"] == "assistant" for m in messages)
    chunk, task = tag(prompt, "chunk"), task_of(prompt)
    if "[garbage]" in chunk or ("[garbage-once]" in chunk and not retried):
        return "Sure! Here are some great questions about this text, I hope they help."
    if task == "questions":
        zh = bool(re.search(r"[\u4e00-\u9fff]", chunk))
        asked = [f"文中关于“{s}”说了什么？" if zh else f"What does the text say about: {s}?" for s in sentences(chunk)]
        body = {"questions": asked[:3]}
    elif task == "answer":
        question = tag(prompt, "question")
        found = re.search(r"about: (.*)\?$|关于“(.*)”说了什么", question)
        sentence = (found.group(1) or found.group(2)) if found else ""
        quote = "a sentence the chunk never held" if "[badquote]" in chunk else sentence
        body = {"answer": f"The text says: {sentence}", "quote": quote}
    elif task == "judge":
        pairs = re.findall(r"^(\d+)\. Q: (.*)$", tag(prompt, "pairs"), re.M)
        body = {"scores": [{"id": int(n), "score": 2 if "[low]" in q else 9, "reason": "ok"} for n, q in pairs]}
    else:
        body = {"text": "?"}
    text = json.dumps(body, ensure_ascii=False)
    if "[think]" in chunk:
        return f"<think>Let me read the chunk carefully {{not json}}.</think>\n{text}"
    if "[fence]" in chunk:
        return f"Here you are:\n```json\n{text}\n```\nAnything else?"
    return text


def build_app(teacher: Teacher):
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "test"}]}

    @app.get("/docs/pump.html")
    async def page():  # a web page to read (the synth inputs may be URLs)
        return HTMLResponse(PAGE)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        prompt = next((m["content"] for m in body["messages"] if m["role"] == "user"), "")
        system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
        call = {
            "task": task_of(prompt),
            "chunk": tag(prompt, "chunk"),
            "status": 200,
            "prompt": prompt,
            "system": system,
            "model": body.get("model"),
        }
        with teacher.lock:
            teacher.calls.append(call)
            fault = teacher.faults.pop(0) if teacher.faults else None
        teacher.in_flight += 1  # one event loop: no lock needed
        teacher.max_in_flight = max(teacher.max_in_flight, teacher.in_flight)
        try:
            if teacher.latency:
                await asyncio.sleep(teacher.latency)
        finally:
            teacher.in_flight -= 1
        if teacher.api_key and request.headers.get("authorization") != f"Bearer {teacher.api_key}":
            call["status"] = 401
            return error(401, "Incorrect API key provided.", "invalid_api_key")
        if fault:
            call["status"] = fault[0]
            return error(fault[0], "scripted fault", "server_error", fault[1])
        if "[toolong]" in call["chunk"] or len(prompt) > (teacher.max_prompt_chars or len(prompt)):
            call["status"] = 400
            return error(400, "This model's maximum context length is 64 tokens. However, you requested 900 tokens "
                         "(800 in the messages, 100 in the completion). Please reduce the length of the messages.",
                         "invalid_request_error")  # fmt: skip
        text = reply_for(body["messages"])
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream"):
            return StreamingResponse(sse(text, usage), media_type="text/event-stream")
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        return {"id": "cmpl-1", "object": "chat.completion", "created": int(time.time()), "model": MODEL,
                "choices": [choice], "usage": usage}  # fmt: skip

    def error(status: int, message: str, kind: str, headers: dict | None = None):
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers=headers)

    return app


async def sse(text: str, usage: dict):
    def event(data: dict) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    base = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": int(time.time()), "model": MODEL}
    for i in range(0, len(text), 40):
        yield event({**base, "choices": [{"index": 0, "delta": {"content": text[i : i + 40]}, "finish_reason": None}]})
    yield event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    yield event({**base, "choices": [], "usage": usage})
    yield "data: [DONE]\n\n"


@contextmanager
def teacher_server(**keys):
    """(teacher, base_url ending in /v1) of a live scripted teacher on 127.0.0.1."""
    from live_server import free_port, serve_app

    teacher = Teacher(**keys)
    with serve_app(build_app(teacher), free_port()) as url:
        yield teacher, url + "/v1"
