"""Instruction data formats, each converted once into a `Conversation`.

alpaca (LLaMA-Factory's default; `history` and `system` optional)::

    {"instruction": "Summarise the claim.", "input": "Water damage in the kitchen ...",
     "output": "A leak under the sink ...", "system": "You are a claims assistant.",
     "history": [["What is a deductible?", "The part of a loss you pay yourself."]]}

sharegpt (`from`/`value` with human/gpt/observation/function_call/system, or `role`/`content`)::

    {"conversations": [{"from": "human", "value": "What is a deductible?"},
                       {"from": "gpt", "value": "The part of a loss you pay yourself."}],
     "system": "You are a claims assistant.", "tools": "[{\\"name\\": \\"lookup_policy\\", ...}]"}

openai (`messages`; an assistant turn may carry `tool_calls`, a tool result has role `tool`)::

    {"messages": [{"role": "system", "content": "You are a claims assistant."},
                  {"role": "user", "content": "What is a deductible?"},
                  {"role": "assistant", "content": "The part of a loss you pay yourself."}]}

Column names and sharegpt tags can be remapped in dataset_info.json (`columns`, `tags`), as in LLaMA-Factory.
Each converter checks its row and returns every problem it finds; a row with problems is not converted.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from expertkit.core.errors import Problem
from expertkit.core.schema import Conversation, Message
from expertkit.data.files import Record

Format = Literal["alpaca", "sharegpt", "openai"]
FORMATS: tuple[str, ...] = ("alpaca", "sharegpt", "openai")

# keys a turn may carry besides its role and content tags
EXTRA_TURN_KEYS = frozenset({"name", "tool_calls", "tool_call_id", "weight", "loss"})


@dataclass(frozen=True)
class Columns:
    """Which key of a row holds what (dataset_info.json `columns`)."""

    prompt: str = "instruction"
    query: str = "input"
    response: str = "output"
    history: str = "history"
    messages: str = "conversations"
    system: str = "system"
    tools: str = "tools"
    chosen: str = "chosen"  # preference data (ranking: true) only, as the kto_tag
    rejected: str = "rejected"
    kto_tag: str = "kto_tag"


@dataclass(frozen=True)
class Tags:
    """How sharegpt turns name their role and text (dataset_info.json `tags`)."""

    role_tag: str = "from"
    content_tag: str = "value"
    user_tag: str = "human"
    assistant_tag: str = "gpt"
    observation_tag: str = "observation"
    function_tag: str = "function_call"
    system_tag: str = "system"

    def roles(self) -> dict[str, str]:
        """Tag value -> our role (function calls are assistant turns, observations tool turns)."""
        return {
            self.system_tag: "system",
            self.user_tag: "user",
            self.assistant_tag: "assistant",
            self.function_tag: "assistant",
            self.observation_tag: "tool",
        }


OPENAI_TAGS = Tags("role", "content", "user", "assistant", "tool", "function_call", "system")


@dataclass(frozen=True)
class FormatSpec:
    """A format plus its column names and tags. `tags=None`: the default, chosen per row by its keys."""

    formatting: Format
    columns: Columns = field(default_factory=Columns)
    tags: Tags | None = None

    @classmethod
    def build(
        cls, formatting: Format, columns: dict[str, str] | None = None, tags: dict[str, str] | None = None
    ) -> FormatSpec:
        """The format's defaults with dataset_info.json `columns` and `tags` applied on top."""
        cols = Columns(messages="messages") if formatting == "openai" else Columns()
        cols = replace(cols, **columns) if columns else cols
        if tags is None:
            return cls(formatting, cols)
        return cls(formatting, cols, replace(OPENAI_TAGS if formatting == "openai" else Tags(), **tags))


def detect_format(records: list[Record]) -> Format | None:
    """Guess the format from the keys of the first rows: messages, conversations, or instruction/output."""
    for record in records[:50]:
        if not isinstance(record.data, dict):
            continue
        keys = record.data.keys()
        if "messages" in keys:
            return "openai"
        if "conversations" in keys:
            return "sharegpt"
        if "instruction" in keys or "output" in keys:
            return "alpaca"
    return None


def convert_record(record: Record, spec: FormatSpec) -> tuple[Conversation | None, list[Problem]]:
    """Convert one row; return the conversation, or None and every problem found in the row."""
    row, check = object_row(record)
    if row is None:
        return None, check.problems
    if spec.formatting == "alpaca":
        conversation = alpaca_to_conversation(row, spec.columns, check)
    else:
        conversation = messages_to_conversation(row, spec, check)
    if check.problems or conversation is None:
        return None, check.problems
    conversation.source = record.where
    return conversation, []


def convert_prompt(record: Record, spec: FormatSpec) -> tuple[Conversation | None, list[Problem]]:
    """Convert one row whose answer may be missing or empty (batch prediction's questions, which LLaMA-Factory
    predicts on too): the prompt, then the assistant's answer only when the row has one."""
    row, check = object_row(record)
    if row is None:
        return None, check.problems
    if spec.formatting == "alpaca":
        messages = alpaca_prompt(row, spec.columns, check)
        answer = row.get(spec.columns.response)
        if messages is not None and isinstance(answer, str) and answer.strip():
            messages = [*messages, Message("assistant", answer)]
    else:
        messages = row_messages(row, spec, check)
        if messages is not None:
            answered = 1 if messages and messages[-1].role == "assistant" else 0
            check_order(messages[: len(messages) - answered], spec.columns.messages, check, answers_in="the label")
    if check.problems or messages is None:
        return None, check.problems
    return Conversation(messages, tools=row_tools(row, spec.columns.tools, check), source=record.where), []


@dataclass
class RowCheck:
    """Problems found in one row."""

    where: str
    problems: list[Problem] = field(default_factory=list)

    def add(self, message: str, field_path: str, hint: str) -> None:
        self.problems.append(Problem(message, self.where, field_path, hint))


def object_row(record: Record) -> tuple[dict[str, Any] | None, RowCheck]:
    """The row as an object and its check; None when it could not be read or is not an object (the check says)."""
    check = RowCheck(record.where)
    if record.error is not None:
        check.problems.append(record.error)
        return None, check
    if not isinstance(record.data, dict):
        check.add(f"the row is {kind_of(record.data)}, but an object belongs here", "", "write each row as {...}")
        return None, check
    return record.data, check


def alpaca_to_conversation(row: dict[str, Any], columns: Columns, check: RowCheck) -> Conversation | None:
    """instruction (+ "\\n" + input), optional system and [[question, answer], ...] history, then output."""
    prompt = alpaca_prompt(row, columns, check)
    response = answer_text(row, columns.response, check)
    if prompt is None or response is None:
        return None
    return Conversation(prompt + [Message("assistant", response)], tools=row_tools(row, columns.tools, check))


def alpaca_prompt(row: dict[str, Any], columns: Columns, check: RowCheck) -> list[Message] | None:
    """Everything before the answer of an alpaca row: optional system, the history, then the user turn."""
    instruction = text_field(row, columns.prompt, check, required=True)
    query = text_field(row, columns.query, check, required=False)
    system = text_field(row, columns.system, check, required=False)
    history = _alpaca_history(row.get(columns.history), columns.history, check)
    if instruction is None or query is None or system is None:
        return None
    prompt = "\n".join(x for x in (instruction, query) if x)
    if not prompt.strip():
        check.add(f"'{columns.prompt}' is empty", columns.prompt, f"write the question under '{columns.prompt}'")
    messages = [Message("system", system)] if system.strip() else []
    return messages + history + [Message("user", prompt)]


def answer_text(row: dict[str, Any], key: str, check: RowCheck) -> str | None:
    """The required, non-empty answer text under `key` (None when missing or not text; a problem when empty)."""
    value = text_field(row, key, check, required=True)
    if value is not None and not value.strip():
        check.add(f"'{key}' is empty", key, "write the answer, or remove the row")
    return value


def text_field(row: dict[str, Any], key: str, check: RowCheck, required: bool) -> str | None:
    """The text under `key`: '' when absent and optional; None (with a problem) when missing or not text."""
    if key not in row or (row[key] is None and not required):
        if required:
            keys = ", ".join(sorted(map(str, row))) or "none"
            check.add(f"missing '{key}'", key, f"add '{key}' to the row (its keys: {keys}), or map it in columns")
            return None
        return ""
    value = row[key]
    if not isinstance(value, str):
        hint = f'write it as text, in quotes: "{value}"' if isinstance(value, int | float) else "write it as text"
        check.add(f"'{key}' is {kind_of(value)}, but text belongs here", key, hint)
        return None
    return value


def _alpaca_history(history: Any, key: str, check: RowCheck) -> list[Message]:
    if history is None or history == "":
        return []
    pair_hint = 'write it as [["earlier question", "earlier answer"], ...]'
    if not isinstance(history, list):
        check.add(f"'{key}' is {kind_of(history)}, but a list of [question, answer] pairs belongs here", key, pair_hint)
        return []
    messages: list[Message] = []
    for i, pair in enumerate(history):
        ok = isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, str) and x.strip() for x in pair)
        if not ok:
            check.add(f"{key}[{i}] must be a [question, answer] pair of non-empty texts", f"{key}[{i}]", pair_hint)
            continue
        messages += [Message("user", pair[0]), Message("assistant", pair[1])]
    return messages


def row_tools(row: dict[str, Any], key: str, check: RowCheck) -> str | None:
    value = row.get(key)
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    check.add(f"'{key}' is {kind_of(value)}, but JSON text or a list of tool definitions belongs here", key, "")
    return None


def messages_to_conversation(row: dict[str, Any], spec: FormatSpec, check: RowCheck) -> Conversation | None:
    """sharegpt and openai rows: a list of turns with a role and a content key each."""
    messages = row_messages(row, spec, check)
    if messages is None:
        return None
    check_order(messages, spec.columns.messages, check)
    return Conversation(messages, tools=row_tools(row, spec.columns.tools, check))


def row_messages(row: dict[str, Any], spec: FormatSpec, check: RowCheck) -> list[Message] | None:
    """The turns of a sharegpt or openai row as messages (the row's `system` first when they have none).

    None when the turns are missing or a turn has no known role; their order is left to `check_order`.
    """
    key = spec.columns.messages
    turns = row.get(key)
    if turns is None:
        keys = ", ".join(sorted(map(str, row))) or "none"
        check.add(
            f"missing '{key}'", key, f"put the turns under '{key}' (the row has: {keys}), or set columns.messages"
        )
        return None
    if not isinstance(turns, list):
        check.add(f"'{key}' is {kind_of(turns)}, but a list of turns belongs here", key, "write it as [{...}, {...}]")
        return None
    tags = row_tags(spec, turns)
    converted = [convert_turn(turn, f"{key}[{i}]", tags, check) for i, turn in enumerate(turns)]
    _check_unknown_roles(turns, tags, key, spec.tags is not None, check)
    if any(m is None for m in converted):
        return None  # a turn without a known role: its order cannot be checked
    system = text_field(row, spec.columns.system, check, required=False)
    messages = [m for m in converted if m is not None]
    if messages and messages[0].role == "system" and not messages[0].content.strip():
        messages = messages[1:]  # an empty system turn means no system prompt
    if messages and messages[0].role != "system" and system and system.strip():
        messages.insert(0, Message("system", system))
    return messages


def row_tags(spec: FormatSpec, turns: list[Any]) -> Tags:
    """The dataset's tags, or the default for its format (chosen by the keys of the first turn)."""
    return spec.tags or _default_tags(spec.formatting, turns)


def _default_tags(formatting: Format, turns: list[Any]) -> Tags:
    """openai rows use role/content; sharegpt rows use from/value unless their turns say role/content."""
    if formatting == "openai":
        return OPENAI_TAGS
    first = next((t for t in turns if isinstance(t, dict)), {})
    return OPENAI_TAGS if "role" in first and "from" not in first else Tags()


def convert_turn(turn: Any, path: str, tags: Tags, check: RowCheck) -> Message | None:
    if not isinstance(turn, dict):
        example = f'{{"{tags.role_tag}": "{tags.user_tag}", "{tags.content_tag}": "..."}}'
        check.add(f"the turn is {kind_of(turn)}, but an object belongs here", path, f"write it as {example}")
        return None
    _check_turn_keys(turn, path, tags, check)
    tag = turn.get(tags.role_tag)
    role = tags.roles().get(tag) if isinstance(tag, str) else None
    if role is None:
        return None  # reported by _check_turn_keys or _check_unknown_roles
    content = turn.get(tags.content_tag)
    if role == "assistant" and isinstance(turn.get("tool_calls"), list) and turn["tool_calls"] and not content:
        calls = [c.get("function", c) if isinstance(c, dict) else c for c in turn["tool_calls"]]
        return Message("assistant", json.dumps(calls, ensure_ascii=False))
    # a turn with a known role but bad text still counts for the order check; the row is skipped anyway
    if tags.content_tag not in turn:
        return Message(role, "")  # type: ignore[arg-type]  # reported by _check_turn_keys
    if not isinstance(content, str):
        check.add(
            f"'{tags.content_tag}' is {kind_of(content)}, but text belongs here",
            f"{path}.{tags.content_tag}",
            "write it as text, in quotes",
        )
        return Message(role, "")  # type: ignore[arg-type]
    if not content.strip() and role != "system":
        check.add("the turn's text is empty", f"{path}.{tags.content_tag}", "write the text, or remove the turn")
    return Message(role, content)  # type: ignore[arg-type]


def _check_turn_keys(turn: dict[str, Any], path: str, tags: Tags, check: RowCheck) -> None:
    expected = [tags.role_tag, tags.content_tag]
    for key in expected:
        if key in turn:
            continue
        if key == tags.content_tag and turn.get("tool_calls"):
            continue
        hint = f"add '{key}' to the turn"
        if {"role", "content"} <= turn.keys() and key in ("from", "value"):
            hint = "the turns use role/content: set tags.role_tag to 'role' and tags.content_tag to 'content'"
        elif {"from", "value"} <= turn.keys() and key in ("role", "content"):
            hint = "the turns use from/value: set tags.role_tag to 'from' and tags.content_tag to 'value'"
        check.add(f"missing '{key}' (the turn has: {', '.join(map(str, turn)) or 'nothing'})", f"{path}.{key}", hint)
    for key in turn:
        if key in expected or key in EXTRA_TURN_KEYS:
            continue
        close = difflib.get_close_matches(str(key), expected, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"a turn holds '{tags.role_tag}' and '{tags.content_tag}'"
        check.add(f"unknown key '{key}' in the turn", f"{path}.{key}", hint)


# which tag a role value most likely belongs to, for the hint when tags and data disagree
_TAG_FOR_VALUE = {
    "user": "user_tag", "human": "user_tag", "question": "user_tag",
    "assistant": "assistant_tag", "gpt": "assistant_tag", "bot": "assistant_tag", "model": "assistant_tag",
    "chatgpt": "assistant_tag", "answer": "assistant_tag",
    "tool": "observation_tag", "observation": "observation_tag", "function": "observation_tag",
    "function_call": "function_tag", "system": "system_tag",
}  # fmt: skip


def _check_unknown_roles(turns: list[Any], tags: Tags, key: str, custom: bool, check: RowCheck) -> None:
    """One problem per role value the tags do not know, saying what the data has and what the tags expect."""
    known = tags.roles()
    values = [t.get(tags.role_tag) for t in turns if isinstance(t, dict) and tags.role_tag in t]
    in_data = ", ".join(dict.fromkeys(repr(v) for v in values))
    expected = ", ".join(
        f"{name}={value!r}" for name, value in vars(tags).items() if name not in ("role_tag", "content_tag")
    )
    seen: set[str] = set()
    for i, value in enumerate(values):
        if isinstance(value, str) and value in known or repr(value) in seen:
            continue
        seen.add(repr(value))
        tag = _TAG_FOR_VALUE.get(str(value).lower())
        where = "the dataset's tags in dataset_info.json" if custom else "a dataset_info.json entry with tags"
        fix = (
            f"set tags.{tag} to {value!r} in {where}"
            if tag
            else f"use one of the tag values, or map {value!r} in {where}"
        )
        path = f"{key}[{_index_of(turns, tags.role_tag, value, i)}].{tags.role_tag}"
        check.add(f"role {value!r} is not one of the tags ({expected}); the roles in this row are {in_data}", path, fix)


def _index_of(turns: list[Any], role_tag: str, value: Any, fallback: int) -> int:
    for i, turn in enumerate(turns):
        if isinstance(turn, dict) and turn.get(role_tag) == value:
            return i
    return fallback


def check_order(
    messages: list[Message], key: str, check: RowCheck, answers_in: str = "", llamafactory: bool = False
) -> None:
    """Optional system first, then user (or tool) and assistant turns alternating, ending with the assistant.

    With `answers_in` (such as "'chosen' and 'rejected'") the turns are a prompt whose answers are kept there,
    so they must end with the user's turn (or a tool result) instead; `llamafactory` says in the problem that
    LLaMA-Factory skips such rows silently (for its own formats).
    """
    offset = 1 if messages and messages[0].role == "system" else 0
    turns = messages[offset:]
    for i, m in enumerate(turns):
        if m.role == "system":
            check.add("a system turn after the first turn", f"{key}[{i + offset}]", "move it to the start, or drop it")
            return
    if not turns:
        if answers_in:
            check.add("no user turn", key, "add the user's question")
        else:
            check.add("no user or assistant turns", key, "add the user's question and the assistant's answer")
        return
    if turns[0].role == "assistant":
        check.add(
            "the conversation starts with an assistant turn",
            f"{key}[{offset}]",
            "the first turn after the system prompt must be the user's: add the question or drop the turn",
        )
    for i in range(1, len(turns)):
        previous, current = turns[i - 1].role, turns[i].role
        if (previous == "assistant") == (current == "assistant"):
            who = "assistant" if current == "assistant" else "user"
            check.add(
                f"two {who} turns in a row (turns {i - 1 + offset} and {i + offset})",
                f"{key}[{i + offset}]",
                "user and assistant turns must alternate: merge the two, or add the missing turn between them",
            )
    last = f"{key}[{len(turns) - 1 + offset}]"
    if answers_in and turns[-1].role == "assistant":
        check.add(
            f"the prompt ends with an assistant turn, but its answers belong in {answers_in}"
            + (" (LLaMA-Factory skips such rows without a word)" if llamafactory else ""),
            last,
            f"end '{key}' with the user's question: drop the last turn, or move it into {answers_in}",
        )
    elif not answers_in and turns[-1].role != "assistant":
        check.add(
            f"the conversation ends with a {turns[-1].role} turn, so there is no answer to learn from",
            last,
            "add the assistant's answer, or drop the last turn",
        )


def kind_of(value: Any) -> str:
    """How a JSON value is called in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"
