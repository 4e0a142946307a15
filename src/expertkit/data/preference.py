"""Preference data formats, each converted once into a `PreferencePair` (DPO, reward models) or an
`UnpairedExample` (KTO).

alpaca with `"ranking": true` in dataset_info.json (`system` and `history` optional, as for instruction data)::

    {"instruction": "What is a deductible?", "input": "",
     "chosen": "The part of each covered loss you pay yourself before the policy pays.",
     "rejected": "A discount you get for not filing claims."}

sharegpt with `"ranking": true`: the turns end on the user's, and each answer is a turn of its own::

    {"conversations": [{"from": "human", "value": "Is hail damage to my car covered?"}],
     "chosen": {"from": "gpt", "value": "Yes, under comprehensive coverage, after your deductible."},
     "rejected": {"from": "gpt", "value": "No, weather damage is never covered."}}

KTO: alpaca or sharegpt rows with a boolean `kto_tag` (for sharegpt the last assistant turn is the answer)::

    {"instruction": "What is a deductible?", "input": "", "output": "A discount on your premium.", "kto_tag": false}

TRL's own shapes, recognised by their keys; each value is text or a list of role/content messages (a text
prompt becomes the user turn)::

    {"prompt": "What is a deductible?", "chosen": "The part ... you pay yourself.", "rejected": "A discount."}
    {"prompt": [{"role": "user", "content": "What is a deductible?"}],
     "chosen": [{"role": "assistant", "content": "The part ... you pay yourself."}],
     "rejected": [{"role": "assistant", "content": "A discount."}]}
    {"prompt": "What is a deductible?", "completion": "A discount.", "label": false}

Column names (`chosen`, `rejected`, `kto_tag` and the instruction ones) and sharegpt tags can be remapped in
dataset_info.json, as in LLaMA-Factory. Every problem of a row is reported; a row with problems is not converted.
"""

from __future__ import annotations

from typing import Any, Literal

from expertkit.core.errors import Problem
from expertkit.core.schema import ROLES, Message, PreferencePair, UnpairedExample
from expertkit.data.files import Record
from expertkit.data.formats import (
    OPENAI_TAGS,
    Columns,
    FormatSpec,
    RowCheck,
    Tags,
    alpaca_prompt,
    answer_text,
    check_order,
    convert_turn,
    kind_of,
    object_row,
    row_messages,
    row_tags,
    row_tools,
)

PreferenceKind = Literal["pairs", "unpaired"]
PreferenceFormat = Literal["alpaca", "sharegpt", "openai", "trl"]
PREFERENCE_FORMATS: tuple[str, ...] = ("alpaca", "sharegpt", "openai", "trl")

# training stages and the data they read (LLaMA-Factory's stage names; orpo and simpo are dpo's pref_loss)
PAIR_STAGES = ("dpo", "rm")
UNPAIRED_STAGES = ("kto",)

# TRL's fixed keys
TRL_PROMPT, TRL_CHOSEN, TRL_REJECTED, TRL_COMPLETION, TRL_LABEL = "prompt", "chosen", "rejected", "completion", "label"


def preference_kind(stage: str) -> PreferenceKind | None:
    """The data a training stage reads: chosen/rejected pairs (dpo, rm), labelled answers (kto), or None (sft...)."""
    if stage in PAIR_STAGES:
        return "pairs"
    if stage in UNPAIRED_STAGES:
        return "unpaired"
    return None


def detect_preference_format(records: list[Record]) -> PreferenceFormat | None:
    """Guess the format from the keys of the first rows: messages, conversations, instruction, or TRL's prompt."""
    for record in records[:50]:
        if not isinstance(record.data, dict):
            continue
        keys = record.data.keys()
        if "messages" in keys:
            return "openai"
        if "conversations" in keys:
            return "sharegpt"
        if "instruction" in keys:
            return "alpaca"
        if TRL_PROMPT in keys or {TRL_CHOSEN, TRL_REJECTED} <= keys:
            return "trl"
        if "output" in keys:
            return "alpaca"
    return None


def answer_keys(formatting: PreferenceFormat, columns: Columns, kind: PreferenceKind) -> tuple[str, ...]:
    """The row keys that hold the answers (pairs) or the label (unpaired) in this format."""
    if kind == "pairs":
        return (TRL_CHOSEN, TRL_REJECTED) if formatting == "trl" else (columns.chosen, columns.rejected)
    return (TRL_LABEL,) if formatting == "trl" else (columns.kto_tag,)


def convert_preference(
    record: Record, formatting: PreferenceFormat, spec: FormatSpec, kind: PreferenceKind
) -> tuple[PreferencePair | UnpairedExample | None, list[Problem]]:
    """Convert one row into a pair or a labelled answer; or None and every problem found in the row."""
    row, check = object_row(record)
    if row is None:
        return None, check.problems
    if kind == "pairs":
        item: PreferencePair | UnpairedExample | None = (
            _trl_pair(row, check)
            if formatting == "trl"
            else _alpaca_pair(row, spec.columns, check)
            if formatting == "alpaca"
            else _messages_pair(row, spec, check)
        )
    else:
        item = (
            _trl_unpaired(row, check)
            if formatting == "trl"
            else _alpaca_unpaired(row, spec.columns, check)
            if formatting == "alpaca"
            else _messages_unpaired(row, spec, check)
        )
    if check.problems or item is None:
        return None, check.problems
    item.source = record.where
    return item, []


# ---------------------------------------------------------------- pairs


def _alpaca_pair(row: dict[str, Any], columns: Columns, check: RowCheck) -> PreferencePair | None:
    prompt = alpaca_prompt(row, columns, check)
    chosen = _alpaca_answer(row, columns.chosen, check)
    rejected = _alpaca_answer(row, columns.rejected, check)
    if prompt is None or chosen is None or rejected is None:
        return None
    return _pair(
        prompt, chosen, rejected, (columns.chosen, columns.rejected), row_tools(row, columns.tools, check), check
    )


def _alpaca_answer(row: dict[str, Any], key: str, check: RowCheck) -> Message | None:
    value = row.get(key)
    if isinstance(value, dict | list):
        check.add(
            f"'{key}' is {kind_of(value)}, but alpaca rows hold the answer as text",
            key,
            'write the answer as text, or set "formatting": "sharegpt" for {"from": "gpt", "value": ...} answers',
        )
        return None
    text = answer_text(row, key, check)
    return None if text is None else Message("assistant", text)


def _messages_pair(row: dict[str, Any], spec: FormatSpec, check: RowCheck) -> PreferencePair | None:
    columns = spec.columns
    prompt = row_messages(row, spec, check)
    turns = row.get(columns.messages)
    tags = row_tags(spec, turns if isinstance(turns, list) else [row.get(columns.chosen)])
    chosen = _answer_turn(row, columns.chosen, tags, check)
    rejected = _answer_turn(row, columns.rejected, tags, check)
    if prompt is not None:
        check_order(
            prompt,
            columns.messages,
            check,
            answers_in=f"'{columns.chosen}' and '{columns.rejected}'",
            llamafactory=True,
        )
    if prompt is None or chosen is None or rejected is None:
        return None
    return _pair(
        prompt, chosen, rejected, (columns.chosen, columns.rejected), row_tools(row, columns.tools, check), check
    )


def _answer_turn(row: dict[str, Any], key: str, tags: Tags, check: RowCheck) -> Message | None:
    """A sharegpt answer: one assistant turn object, as LLaMA-Factory requires."""
    example = f'{{"{tags.role_tag}": "{tags.assistant_tag}", "{tags.content_tag}": "..."}}'
    if key not in row:
        keys = ", ".join(sorted(map(str, row))) or "none"
        check.add(f"missing '{key}'", key, f"add '{key}': {example} (the row has: {keys}), or map it in columns")
        return None
    value = row[key]
    if not isinstance(value, dict):
        check.add(f"'{key}' is {kind_of(value)}, but one turn object belongs here", key, f"write it as {example}")
        return None
    message = convert_turn(value, key, tags, check)
    role = value.get(tags.role_tag)
    if message is None and tags.role_tag in value or message is not None and message.role != "assistant":
        check.add(
            f"'{key}' is a {role!r} turn, but an answer is the assistant's "
            f"({tags.assistant_tag!r} or {tags.function_tag!r})",
            f"{key}.{tags.role_tag}",
            f'write "{tags.role_tag}": "{tags.assistant_tag}", or set tags.assistant_tag in dataset_info.json',
        )
        return None
    return message


def _trl_pair(row: dict[str, Any], check: RowCheck) -> PreferencePair | None:
    chosen_value, rejected_value = row.get(TRL_CHOSEN), row.get(TRL_REJECTED)
    for key in (TRL_CHOSEN, TRL_REJECTED):
        if key not in row:
            keys = ", ".join(sorted(map(str, row))) or "none"
            check.add(f"missing '{key}'", key, f"add '{key}' to the row (its keys: {keys})")
    if check.problems:
        return None
    if TRL_PROMPT not in row and isinstance(chosen_value, list) and isinstance(rejected_value, list):
        return _implicit_prompt_pair(chosen_value, rejected_value, check)
    prompt = _trl_prompt(row, check, answers_in=f"'{TRL_CHOSEN}' and '{TRL_REJECTED}'")
    chosen = _trl_answer(chosen_value, TRL_CHOSEN, check)
    rejected = _trl_answer(rejected_value, TRL_REJECTED, check)
    if prompt is None or chosen is None or rejected is None:
        return None
    return _pair(prompt, chosen, rejected, (TRL_CHOSEN, TRL_REJECTED), row_tools(row, "tools", check), check)


def _implicit_prompt_pair(chosen: list[Any], rejected: list[Any], check: RowCheck) -> PreferencePair | None:
    """TRL's implicit prompt: two whole conversations whose shared beginning is the prompt."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if chosen == rejected:
        check.add(
            "'chosen' and 'rejected' are the same conversation, so there is nothing to prefer",
            TRL_REJECTED,
            "write a worse answer as the last turn of 'rejected', or remove the row",
        )
        return None
    if shared == len(chosen) or shared == len(rejected):
        check.add(
            "'chosen' and 'rejected' have no prompt, and one conversation is the start of the other",
            TRL_CHOSEN,
            "add the question under 'prompt', and keep only the two answers under 'chosen' and 'rejected'",
        )
        return None
    prompt = _trl_turns(chosen[:shared], TRL_CHOSEN, check)
    if prompt is not None:
        check_order(prompt, TRL_CHOSEN, check, answers_in="the turns after it")
    answers = [
        _trl_answer(c[shared:], key, check, offset=shared)
        for c, key in ((chosen, TRL_CHOSEN), (rejected, TRL_REJECTED))
    ]
    if prompt is None or answers[0] is None or answers[1] is None:
        return None
    return _pair(prompt, answers[0], answers[1], (TRL_CHOSEN, TRL_REJECTED), None, check)


def _pair(
    prompt: list[Message],
    chosen: Message,
    rejected: Message,
    keys: tuple[str, str],
    tools: str | None,
    check: RowCheck,
) -> PreferencePair:
    if chosen.content.strip() and chosen.content.strip() == rejected.content.strip():
        check.add(
            f"'{keys[0]}' and '{keys[1]}' are the same answer, so there is nothing to prefer",
            keys[1],
            f"write a worse answer under '{keys[1]}', or remove the row",
        )
    return PreferencePair(prompt, chosen, rejected, tools=tools)


# ---------------------------------------------------------------- unpaired (KTO)


def _alpaca_unpaired(row: dict[str, Any], columns: Columns, check: RowCheck) -> UnpairedExample | None:
    prompt = alpaca_prompt(row, columns, check)
    completion = answer_text(row, columns.response, check)
    label = _label(row, columns.kto_tag, check)
    if prompt is None or completion is None or label is None:
        return None
    return UnpairedExample(prompt, Message("assistant", completion), label, tools=row_tools(row, columns.tools, check))


def _messages_unpaired(row: dict[str, Any], spec: FormatSpec, check: RowCheck) -> UnpairedExample | None:
    messages = row_messages(row, spec, check)
    if messages is not None:
        check_order(messages, spec.columns.messages, check)
    label = _label(row, spec.columns.kto_tag, check)
    if messages is None or label is None or check.problems:
        return None
    return UnpairedExample(messages[:-1], messages[-1], label, tools=row_tools(row, spec.columns.tools, check))


def _trl_unpaired(row: dict[str, Any], check: RowCheck) -> UnpairedExample | None:
    prompt = _trl_prompt(row, check, answers_in=f"'{TRL_COMPLETION}'")
    completion = None
    if TRL_COMPLETION not in row:
        keys = ", ".join(sorted(map(str, row))) or "none"
        check.add(
            f"missing '{TRL_COMPLETION}'",
            TRL_COMPLETION,
            f"add the answer under '{TRL_COMPLETION}' (the row has: {keys})",
        )
    else:
        completion = _trl_answer(row[TRL_COMPLETION], TRL_COMPLETION, check)
    label = _label(row, TRL_LABEL, check)
    if prompt is None or completion is None or label is None:
        return None
    return UnpairedExample(prompt, completion, label, tools=row_tools(row, "tools", check))


def _label(row: dict[str, Any], key: str, check: RowCheck) -> bool | None:
    """KTO's label: a JSON boolean. LLaMA-Factory reads any other value as no label at all."""
    if key not in row or row[key] is None:
        keys = ", ".join(sorted(map(str, row))) or "none"
        check.add(
            f"missing '{key}'",
            key,
            f'add "{key}": true (a desirable answer) or false (an undesirable one); the row has: {keys}',
        )
        return None
    value = row[key]
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        check.add(
            f"'{key}' is the text {value!r}, but a boolean belongs here (LLaMA-Factory drops such rows)",
            key,
            f'write it without quotes: "{key}": {value.strip().lower()}',
        )
    else:
        check.add(f"'{key}' is {kind_of(value)}, but a boolean belongs here", key, f'write "{key}": true or false')
    return None


# ---------------------------------------------------------------- TRL values: text or role/content messages


def _trl_prompt(row: dict[str, Any], check: RowCheck, answers_in: str) -> list[Message] | None:
    if TRL_PROMPT not in row:
        keys = ", ".join(sorted(map(str, row))) or "none"
        check.add(f"missing '{TRL_PROMPT}'", TRL_PROMPT, f"add the question under '{TRL_PROMPT}' (the row has: {keys})")
        return None
    value = row[TRL_PROMPT]
    if isinstance(value, str):
        if not value.strip():
            check.add(f"'{TRL_PROMPT}' is empty", TRL_PROMPT, "write the question, or remove the row")
        return [Message("user", value)]
    if not isinstance(value, list):
        check.add(
            f"'{TRL_PROMPT}' is {kind_of(value)}, but text or a list of messages belongs here",
            TRL_PROMPT,
            'write it as "..." or [{"role": "user", "content": "..."}]',
        )
        return None
    messages = _trl_turns(value, TRL_PROMPT, check)
    if messages is not None:
        check_order(messages, TRL_PROMPT, check, answers_in=answers_in)
    return messages


def _trl_answer(value: Any, key: str, check: RowCheck, offset: int = 0) -> Message | None:
    """An answer: text, one assistant message, or a list holding just that message."""
    example = f'"{key}": [{{"role": "assistant", "content": "..."}}]'
    if isinstance(value, str):
        if not value.strip():
            check.add(f"'{key}' is empty", key, "write the answer, or remove the row")
        return Message("assistant", value)
    if isinstance(value, dict):
        value, path = [value], key
    elif isinstance(value, list):
        path = None
    else:
        check.add(f"'{key}' is {kind_of(value)}, but text or a list of messages belongs here", key, f"write {example}")
        return None
    if len(value) != 1:
        check.add(
            f"'{key}' holds {len(value)} turns after the prompt, but one assistant answer belongs here",
            key,
            f"keep only the answer under '{key}'; earlier turns belong under '{TRL_PROMPT}'",
        )
        return None
    messages = _trl_turns(value, key, check, offset, path)
    if messages is None:
        return None
    if messages[0].role != "assistant":
        field_path = path or f"{key}[{offset}]"
        check.add(
            f"the answer is a {messages[0].role} turn, not the assistant's", f"{field_path}.role", f"write {example}"
        )
        return None
    return messages[0]


def _trl_turns(
    turns: list[Any], key: str, check: RowCheck, offset: int = 0, path: str | None = None
) -> list[Message] | None:
    """role/content messages, as in OpenAI rows; None when a turn has no known role."""
    messages = []
    for i, turn in enumerate(turns):
        turn_path = path or f"{key}[{i + offset}]"
        message = convert_turn(turn, turn_path, OPENAI_TAGS, check)
        if message is None and isinstance(turn, dict) and "role" in turn:
            check.add(
                f"role {turn['role']!r} is not one of {', '.join(ROLES)}", f"{turn_path}.role", "use one of those roles"
            )
        messages.append(message)
    if any(m is None for m in messages):
        return None
    return [m for m in messages if m is not None]
