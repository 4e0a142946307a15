"""Render a conversation into token ids and labels: loss only on assistant turns.

The chat template is rendered once for the whole conversation and once per prefix; each assistant turn is
the text between "history + generation prompt" and "history + this answer" (its end-of-turn token included),
and a token carries loss when it starts inside such a span. This works with any prefix-stable template,
the tokenizer's own or a named one, without knowing its format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from expertkit.core.errors import ExpertkitError
from expertkit.core.schema import Conversation

IGNORE_INDEX = -100


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]
    full_length: int  # tokens before cutoff_len truncation

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def trainable_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


class TemplateError(ExpertkitError):
    """The chat template cannot be used to find assistant turns."""


def _render(tokenizer, messages: list[dict], tools, generation_prompt: bool) -> str:
    kwargs = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs)


def assistant_spans(tokenizer, conv: Conversation, mask_history: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of the assistant turns that carry loss."""
    messages = conv.to_dicts()
    tools = json.loads(conv.tools) if conv.tools else None
    full = _render(tokenizer, messages, tools, generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start_text = _render(tokenizer, messages[:i], tools, generation_prompt=True)
        end_text = _render(tokenizer, messages[: i + 1], tools, generation_prompt=False)
        if not (full.startswith(start_text) and full.startswith(end_text) and len(end_text) > len(start_text)):
            raise TemplateError(
                "the chat template is not prefix-stable (it rewrites earlier turns), so assistant turns "
                f"cannot be located for the loss mask ({conv.source or 'conversation'})",
                hint="set `template` to a named template such as qwen, chatml, deepseek3 or llama3",
            )
        spans.append((len(start_text), len(end_text)))
    if mask_history and spans:
        spans = spans[-1:]
    return full, spans


def render_conversation(
    tokenizer,
    conv: Conversation,
    cutoff_len: int | None = None,
    mask_history: bool = False,
    train_on_prompt: bool = False,
) -> Rendered:
    """Token ids and labels (IGNORE_INDEX outside assistant turns), cut to cutoff_len from the end."""
    text, spans = assistant_spans(tokenizer, conv, mask_history)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    labels = list(ids) if train_on_prompt else [IGNORE_INDEX] * len(ids)
    if not train_on_prompt:
        k = 0
        for j, (start, _end) in enumerate(enc["offset_mapping"]):
            while k < len(spans) and start >= spans[k][1]:
                k += 1
            if k < len(spans) and spans[k][0] <= start < spans[k][1]:
                labels[j] = ids[j]
    full_length = len(ids)
    if cutoff_len is not None and full_length > cutoff_len:
        ids, labels = ids[:cutoff_len], labels[:cutoff_len]
    return Rendered(ids, labels, full_length)
