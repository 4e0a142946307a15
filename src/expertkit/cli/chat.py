"""`expertkit chat`: a terminal chat with streaming and history, on any engine.

Commands inside the chat: /reset (forget the history), /system TEXT (set the system prompt), /exit (or Ctrl-D).
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from expertkit.engine.base import Engine, SamplingParams

HELP = "commands: /reset  /system TEXT  /exit   (Ctrl-D quits too)"


async def answer(engine: Engine, messages: list[dict], params: SamplingParams, out: TextIO) -> str:
    """Stream one answer to `out`; reasoning is shown dimmed on a TTY, then the answer."""
    text, thinking = "", False
    dim, reset = ("\033[2m", "\033[0m") if out.isatty() else ("", "")
    async for delta in engine.stream(messages, params):
        if delta.reasoning:
            if not thinking:
                out.write(f"{dim}[thinking] ")
                thinking = True
            out.write(delta.reasoning)
        if delta.text:
            if thinking:
                out.write(f"{reset}\n")
                thinking = False
            out.write(delta.text)
            text += delta.text
        out.flush()
    out.write(f"{reset}\n" if thinking else "\n")
    return text


def run_chat(engine: Engine, params: SamplingParams, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> None:
    system: str | None = None
    history: list[dict] = []
    interactive = stdin.isatty()
    out.write(f"chatting with {', '.join(engine.model_names())}; {HELP}\n")
    loop = asyncio.new_event_loop()
    try:
        while True:
            if interactive:
                out.write("you> ")
                out.flush()
            line = stdin.readline()
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            if line in ("/exit", "/quit"):
                break
            if line == "/reset":
                history = []
                out.write("(history cleared)\n")
                continue
            if line.startswith("/system"):
                system = line[len("/system") :].strip() or None
                history = []
                out.write(f"(system prompt {'set' if system else 'cleared'}; history cleared)\n")
                continue
            if line.startswith("/"):
                out.write(f"unknown command {line.split()[0]}; {HELP}\n")
                continue
            history.append({"role": "user", "content": line})
            messages = ([{"role": "system", "content": system}] if system else []) + history
            out.write("assistant> " if interactive else "")
            reply = loop.run_until_complete(answer(engine, messages, params, out))
            history.append({"role": "assistant", "content": reply})
    finally:
        loop.run_until_complete(engine.close())
        loop.close()
