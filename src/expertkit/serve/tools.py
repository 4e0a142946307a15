"""OpenAI function tools from Qwen/Hermes-style answers: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

The chat template shows the model the request's `tools`; the model answers a call as a JSON object between the
tags (one block per call). `parse_tool_calls` turns a whole answer into OpenAI's `tool_calls` and the text outside
the blocks; `ToolCallStream` does the same for a stream: text before the first `<tool_call>` goes out as it comes,
everything from that tag on is held back and parsed when the answer ends. A block that is not a JSON object with a
`name` stays in the content, as the model wrote it.

`tool_choice` "required" or a named function is enforced, not hoped for, on an engine that continues raw text
(`stream_text`) with a template that writes these blocks: the server renders the conversation with the chat template
to text, writes the start of the call itself and lets the model write one JSON object in JSON mode, which is closed
within max_tokens (engine/json_output.py); the server closes the block. For `{"type": "function", "function":
{"name": "get_weather"}}`:

    ...<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments":     (written by the server)
    {"city": "Paris"}                                                               (the model, JSON mode)
    }\n</tool_call>                                                                 (the server)

"required" with one tool is that tool named; with several the server writes `<tool_call>\n`, the model the whole
`{"name": ..., "arguments": {...}}`, and a name that is not one of the tools is a 500 (JSON mode makes the text
JSON; it cannot make the name one of the tools). The text then goes through the same parser as a call the model
chose itself.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from expertkit.engine.base import Delta
from expertkit.serve.errors import APIError

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


CHOICES = '"none", "auto", "required" or {"type": "function", "function": {"name": ...}}'


@dataclass
class ForcedCall:
    """A call the server writes the start of: `prefix` after the generation prompt, then one JSON object from the
    model, then `suffix`. `names`: the functions the model may name in that object ("required" with several tools);
    None when the prefix names it already."""

    prefix: str
    suffix: str
    names: list[str] | None = None
    schema: dict | None = None  # the named function's `parameters`: what its arguments must match

    def response_format(self) -> dict:
        """JSON mode for the model's object: the function's parameters as a JSON schema when it has one (vLLM
        enforces all of it, the local engine its top-level object), else any JSON object."""
        if self.schema and self.schema.get("type", "object") == "object":
            return {"type": "json_schema", "json_schema": {"name": "arguments", "schema": self.schema}}
        return {"type": "json_object"}


def forced_call(tool_choice, tools: list[dict] | None) -> ForcedCall | None:
    """The call a request's `tool_choice` forces, None when it forces none ("auto", "none", absent), or a 400."""
    if tool_choice in (None, "auto", "none"):
        return None
    if tool_choice == "required":
        name = None
    elif isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if not isinstance(name, str) or not name:
            raise APIError(400, f"tool_choice must be {CHOICES}: the function has no name", param="tool_choice")
    else:
        raise APIError(400, f"tool_choice must be {CHOICES}, got {json.dumps(tool_choice)[:100]}", param="tool_choice")
    names = [t["function"]["name"] for t in tools or []]
    if not names:
        raise APIError(400, 'tool_choice other than "none" or "auto" needs `tools`', param="tool_choice")
    if name is not None and name not in names:
        raise APIError(
            400,
            f"tool_choice names the function '{name[:100]}', which is not in tools: {', '.join(names)}",
            param="tool_choice",
        )
    if name is None and len(names) > 1:
        return ForcedCall(TOOL_OPEN + "\n", "\n" + TOOL_CLOSE, names)
    name = name or names[0]  # "required" with a single tool: that tool
    parameters = next(t["function"].get("parameters") for t in tools if t["function"]["name"] == name)
    return ForcedCall(
        f'{TOOL_OPEN}\n{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": ',
        "}\n" + TOOL_CLOSE,
        schema=parameters if isinstance(parameters, dict) else None,
    )


def writes_tool_calls(tokenizer) -> bool:
    """The chat template writes Hermes/Qwen-style `<tool_call>` blocks (Qwen2.5, Qwen3, Hermes, QwQ)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # named templates, e.g. {"default": ..., "tool_use": ...}
        template = " ".join(str(t) for t in template.values())
    return TOOL_OPEN in template


def forced_prompt(tokenizer, messages: list[dict], tools: list[dict], call: ForcedCall) -> str:
    """The conversation as the engine renders it (the chat template with the tools and the generation prompt), as
    text, with the call's start after it: the raw prompt the model continues."""
    text = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and tokenizer.bos_token_id in tokenizer("", add_special_tokens=True)["input_ids"]:
        text = text[len(bos) :]  # the raw prompt's tokenization adds it again
    return text + call.prefix


async def forced_deltas(deltas: AsyncIterator[Delta], call: ForcedCall) -> AsyncIterator[Delta]:
    """The model's JSON object (`deltas`, from the forced prompt) as the whole call's text: the prefix before its first
    piece, the suffix after its last. With `names`, the object must name one of them (checked when it is whole)."""
    written, first = "", True
    async with aclosing(deltas):
        async for d in deltas:
            text = d.reasoning + d.text  # JSON only: a `<think>` in it is still JSON text
            written += text
            if first:
                text, first = call.prefix + text, False
            if d.finish_reason is not None:
                if call.names is not None:
                    check_named(written, call.names, d.finish_reason)
                text += call.suffix
            yield Delta(text=text, finish_reason=d.finish_reason, usage=d.usage, logprobs=d.logprobs)


def check_named(written: str, names: list[str], finish_reason: str) -> None:
    """500 when a whole "required" call names no tool (cut short by max_tokens, it stays content as written)."""
    try:
        obj = json.loads(written)
    except ValueError:
        if finish_reason == "length":
            return
        obj = None
    name = obj.get("name") if isinstance(obj, dict) else None
    if name not in names or not isinstance(obj.get("arguments", obj.get("parameters", {})), dict):
        raise APIError(
            500,
            f'tool_choice "required": the model wrote {written[:200]!r}, not a call of one of the tools '
            f"({', '.join(names)}); name the function in tool_choice to force its call",
            type="server_error",
            param="tool_choice",
            code="tool_choice_unmet",
        )
