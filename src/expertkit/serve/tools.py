"""OpenAI function tools from Qwen/Hermes-style answers: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

The chat template shows the model the request's `tools`; the model answers a call as a JSON object between the
tags (one block per call). `parse_tool_calls` turns a whole answer into OpenAI's `tool_calls` and the text outside
the blocks; `ToolCallStream` does the same for a stream: text before the first `<tool_call>` goes out as it comes,
everything from that tag on is held back and parsed when the answer ends. A block that is not a JSON object with a
`name` stays in the content, as the model wrote it.
"""

from __future__ import annotations

import json
import re
import uuid

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
BLOCK = re.compile(re.escape(TOOL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CLOSE) + r"|\Z)", re.DOTALL)


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_call(body: str) -> dict | None:
    """OpenAI's tool call of one block's text, or None when it is not a JSON object naming a function."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False)
    return {"id": call_id(), "type": "function", "function": {"name": obj["name"], "arguments": args}}


def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """(content: the text outside the parsed blocks, None when empty; the tool calls, in order)."""
    calls, kept, end = [], [], 0
    for m in BLOCK.finditer(text):
        call = tool_call(m.group(1).strip())
        if call is None:
            continue  # left in the content
        calls.append(call)
        kept.append(text[end : m.start()])
        end = m.end()
    kept.append(text[end:])
    content = "".join(kept).strip() if calls else text
    return (content or None), calls


class ToolCallStream:
    """Answer text in, content safe to send out; from the first `<tool_call>` on, held until `finish`."""

    def __init__(self):
        self.pending = ""
        self.held = None  # the text from the first <tool_call> on, once one opened

    def feed(self, text: str) -> str:
        if self.held is not None:
            self.held += text
            return ""
        buf = self.pending + text
        i = buf.find(TOOL_OPEN)
        if i >= 0:
            self.pending, self.held = "", buf[i:]
            return buf[:i]
        keep = max((k for k in range(1, len(TOOL_OPEN)) if buf.endswith(TOOL_OPEN[:k])), default=0)
        self.pending = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def finish(self, parse: bool = True) -> tuple[str, list[dict]]:
        """(the rest of the content, the tool calls) once the answer is complete; `parse` False: the held text is
        content as it is (the engine gave its calls apart)."""
        rest, self.pending = self.pending, ""
        if self.held is None or not parse:
            return rest + (self.held or ""), []
        content, calls = parse_tool_calls(self.held)
        return rest + (content or ""), calls
