"""Render a conversation into token ids and labels: loss only on assistant turns.

The chat template is rendered once for the whole conversation and once per prefix; each assistant turn is
the text between "history + generation prompt" and "history + this answer" (its end-of-turn token included),
and a token carries loss when it starts inside such a span. This works with any prefix-stable template,
the tokenizer's own or a named one, without knowing its format.

Preference data renders a prompt and its answers apart (`render_pair`, `render_preference`): the prompt with the
generation prompt, and each answer as the text the whole conversation adds after it. `cut_pair` shortens a pair
to cutoff_len as LLaMA-Factory does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import NamedTuple

from expertkit.core.errors import ExpertkitError
from expertkit.core.schema import Conversation, Message, PreferencePair

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


# ---------------------------------------------------------------- preference data: prompt and answers apart


@dataclass
class RenderedPair:
    """A prompt's ids and the ids of each answer after it (answer ids end with the template's end of turn)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


class CutPair(NamedTuple):
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    truncated: bool  # something was cut

    @property
    def empty_answer(self) -> bool:
        """An answer kept no token: training drops the pair."""
        return not self.chosen_ids or not self.rejected_ids


def render_pair(
    tokenizer, prompt: list[Message], answer: Message, tools: str | None = None, source: str = ""
) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): the chat template of the prompt with the generation prompt, then the tokens the
    whole conversation (prompt + answer) adds after it, its end-of-turn or EOS included as the template writes it.

    Each part is tokenized on its own, so the prompt's ids are the same for every answer (as TRL and LLaMA-Factory
    build them). Raises `TemplateError` when the template rewrites the prompt once the answer follows it.
    """
    prompt_text, answer_text = _split_answer(tokenizer, _dicts(prompt), answer, _tools(tools), source)
    return _ids(tokenizer, prompt_text), _ids(tokenizer, answer_text)


def render_preference(tokenizer, pair: PreferencePair) -> RenderedPair:
    """The prompt once and both answers of a pair, as `render_pair` renders them."""
    messages, tools = _dicts(pair.prompt), _tools(pair.tools)
    prompt_text, chosen = _split_answer(tokenizer, messages, pair.chosen, tools, pair.source)
    _, rejected = _split_answer(tokenizer, messages, pair.rejected, tools, pair.source, prompt_text)
    return RenderedPair(_ids(tokenizer, prompt_text), _ids(tokenizer, chosen), _ids(tokenizer, rejected))


def cut_lengths(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """How many prompt and answer tokens LLaMA-Factory keeps (its `infer_seqlen`).

    A short answer (under half of cutoff_len) is kept whole and the prompt gets the rest; otherwise a short prompt
    is kept whole and the answer gets the rest; when both are long, the answer's share of cutoff_len is its share
    of the tokens (rounded down) and the prompt gets what is left.
    """
    if 2 * target_len < cutoff_len:
        answer_budget = cutoff_len
    elif 2 * source_len < cutoff_len:
        answer_budget = cutoff_len - source_len
    else:
        answer_budget = int(cutoff_len * (target_len / (source_len + target_len)))
    target = min(target_len, answer_budget)
    return min(source_len, max(cutoff_len - target, 0)), target


def cut_pair(prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int], cutoff_len: int) -> CutPair:
    """Shorten a pair to at most cutoff_len tokens per side as LLaMA-Factory does: `cut_lengths` of the prompt and
    the longer answer, then each part keeps its first tokens (both answers the same number at most)."""
    longer = max(len(chosen_ids), len(rejected_ids))
    keep_prompt, keep_answer = cut_lengths(len(prompt_ids), longer, cutoff_len)
    truncated = keep_prompt < len(prompt_ids) or keep_answer < longer
    return CutPair(prompt_ids[:keep_prompt], chosen_ids[:keep_answer], rejected_ids[:keep_answer], truncated)


def _dicts(messages: list[Message]) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _tools(tools: str | None) -> list | None:
    return json.loads(tools) if tools else None


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _split_answer(
    tokenizer, prompt: list[dict], answer: Message, tools, source: str, prompt_text: str | None = None
) -> tuple[str, str]:
    """(prompt text with the generation prompt, the text the answer adds after it)."""
    if prompt_text is None:
        prompt_text = _render(tokenizer, prompt, tools, generation_prompt=True)
    full = _render(tokenizer, prompt + [{"role": answer.role, "content": answer.content}], tools, False)
    if not (full.startswith(prompt_text) and len(full) > len(prompt_text)):
        raise TemplateError(
            "the chat template is not prefix-stable (it rewrites the prompt once an answer follows), so the answer "
            f"cannot be told apart from the prompt ({source or 'pair'})",
            hint="set `template` to a named template such as qwen, chatml, deepseek3 or llama3",
        )
    return prompt_text, full[len(prompt_text) :]
