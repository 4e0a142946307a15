"""alpaca, sharegpt and openai rows → conversations, and the problems reported for broken rows."""

from __future__ import annotations

import json

import pytest

from expertkit.data.files import Record
from expertkit.data.formats import FormatSpec, convert_record, detect_format

WHERE = "data/train.jsonl:7"


def convert(row, formatting="alpaca", columns=None, tags=None):
    return convert_record(Record(row, WHERE), FormatSpec.build(formatting, columns, tags))


def roles_and_text(conversation):
    return [(m.role, m.content) for m in conversation.messages]


def only_problem(problems):
    assert len(problems) == 1, [p.format() for p in problems]
    assert problems[0].where == WHERE and problems[0].hint
    return problems[0]


# ---------------------------------------------------------------- alpaca


def test_alpaca_joins_instruction_and_input_like_llamafactory():
    conversation, problems = convert(
        {
            "instruction": "Summarise the claim.",
            "input": "Water in the kitchen.",
            "output": "A leak.",
            "system": "You are a claims assistant.",
            "history": [["What is a deductible?", "What you pay yourself."]],
        }
    )
    assert problems == []
    assert roles_and_text(conversation) == [
        ("system", "You are a claims assistant."),
        ("user", "What is a deductible?"),
        ("assistant", "What you pay yourself."),
        ("user", "Summarise the claim.\nWater in the kitchen."),
        ("assistant", "A leak."),
    ]
    assert conversation.source == WHERE


def test_alpaca_empty_input_and_null_system_are_left_out():
    conversation, problems = convert({"instruction": "Hi", "input": "", "output": "Hello", "system": None})
    assert problems == [] and roles_and_text(conversation) == [("user", "Hi"), ("assistant", "Hello")]


def test_alpaca_custom_columns():
    columns = {"prompt": "question", "query": "context", "response": "answer", "system": "persona"}
    row = {"question": "Q", "context": "C", "answer": "A", "persona": "P"}
    conversation, problems = convert(row, columns=columns)
    assert problems == []
    assert roles_and_text(conversation) == [("system", "P"), ("user", "Q\nC"), ("assistant", "A")]


def test_alpaca_missing_output_names_field_and_fix():
    conversation, problems = convert({"instruction": "Hi", "answer": "Hello"})
    assert conversation is None
    p = only_problem(problems)
    assert p.field == "output" and "missing 'output'" in p.message
    assert "add 'output'" in p.hint and "answer, instruction" in p.hint


def test_alpaca_reports_every_problem_of_a_row():
    _, problems = convert({"instruction": 42, "output": "", "history": {"q": "a"}})
    assert [p.field for p in problems] == ["instruction", "history", "output"]
    assert "a number (42)" in problems[0].message and '"42"' in problems[0].hint
    assert "history" in problems[1].message and "[[" in problems[1].hint
    assert "'output' is empty" in problems[2].message


def test_alpaca_bad_history_pair_is_located():
    _, problems = convert({"instruction": "Q", "output": "A", "history": [["q", "a"], ["only one"]]})
    assert only_problem(problems).field == "history[1]"


def test_alpaca_empty_prompt():
    _, problems = convert({"instruction": " ", "input": "", "output": "A"})
    assert "empty" in only_problem(problems).message


def test_row_that_is_not_an_object():
    _, problems = convert(["instruction", "output"])
    assert "a list" in only_problem(problems).message


def test_unreadable_line_is_passed_through():
    from expertkit.core.errors import Problem

    problem = Problem("not valid JSON", WHERE, "", "fix it")
    assert convert_record(Record(None, WHERE, problem), FormatSpec.build("alpaca")) == (None, [problem])


# ---------------------------------------------------------------- sharegpt


SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "What is a deductible?"},
        {"from": "gpt", "value": "What you pay yourself."},
        {"from": "human", "value": "Look up policy 7."},
        {"from": "function_call", "value": '{"name": "lookup", "arguments": {"id": 7}}'},
        {"from": "observation", "value": '{"status": "active"}'},
        {"from": "gpt", "value": "Policy 7 is active."},
    ],
    "tools": [{"name": "lookup"}],
}


def test_sharegpt_from_value():
    conversation, problems = convert(SHAREGPT, "sharegpt")
    assert problems == []
    assert [m.role for m in conversation.messages] == [
        "system", "user", "assistant", "user", "assistant", "tool", "assistant",
    ]  # fmt: skip
    assert json.loads(conversation.tools) == [{"name": "lookup"}]


def test_sharegpt_role_content_is_recognised_without_tags():
    row = {
        "conversations": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ],
        "system": "Be kind.",
    }
    conversation, problems = convert(row, "sharegpt")
    assert problems == []
    assert roles_and_text(conversation) == [("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello")]


def test_sharegpt_custom_columns_and_tags():
    row = {"dialog": [{"speaker": "client", "text": "Hi"}, {"speaker": "agent", "text": "Hello"}]}
    tags = {"role_tag": "speaker", "content_tag": "text", "user_tag": "client", "assistant_tag": "agent"}
    conversation, problems = convert(row, "sharegpt", columns={"messages": "dialog"}, tags=tags)
    assert problems == [] and roles_and_text(conversation) == [("user", "Hi"), ("assistant", "Hello")]


def test_role_not_in_tags_says_what_the_data_has_and_the_fix():
    row = {"conversations": [{"from": "user", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    conversation, problems = convert(row, "sharegpt")
    assert conversation is None
    p = only_problem(problems)
    assert p.field == "conversations[0].from"
    assert "role 'user' is not one of the tags" in p.message and "user_tag='human'" in p.message
    assert "the roles in this row are 'user', 'gpt'" in p.message
    assert "set tags.user_tag to 'user'" in p.hint


def test_tags_given_for_other_keys_than_the_data_uses():
    row = {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    _, problems = convert(row, "sharegpt", tags={"user_tag": "user", "assistant_tag": "assistant"})
    fields = [p.field for p in problems]
    assert "conversations[0].from" in fields and "conversations[0].value" in fields
    assert any("set tags.role_tag to 'role'" in p.hint for p in problems)


def test_conversation_starting_with_the_assistant():
    row = {"conversations": [{"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Hi"}]}
    _, problems = convert(row, "sharegpt")
    messages = [p.message for p in problems]
    assert "the conversation starts with an assistant turn" in messages
    assert problems[0].field == "conversations[0]" and "must be the user's" in problems[0].hint
    assert any("ends with a user turn" in m for m in messages)


def test_two_user_turns_in_a_row():
    row = {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                             {"from": "gpt", "value": "c"}]}  # fmt: skip
    p = only_problem(convert(row, "sharegpt")[1])
    assert p.field == "conversations[1]" and "two user turns in a row" in p.message and "alternate" in p.hint


def test_conversation_not_ending_with_the_assistant():
    row = {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                             {"from": "human", "value": "c"}]}  # fmt: skip
    p = only_problem(convert(row, "sharegpt")[1])
    assert p.field == "conversations[2]" and "ends with a user turn" in p.message and "add the assistant" in p.hint


def test_wrong_types_and_empty_text_in_turns_are_all_reported():
    row = {"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "  "}, "hello"]}
    _, problems = convert(row, "sharegpt")
    assert [p.field for p in problems] == ["conversations[0].value", "conversations[1].value", "conversations[2]"]
    assert "a number (3)" in problems[0].message
    assert "empty" in problems[1].message
    assert "text, but an object belongs here" in problems[2].message


def test_dict_where_the_turn_list_belongs():
    p = only_problem(convert({"conversations": {"from": "human", "value": "x"}}, "sharegpt")[1])
    assert p.field == "conversations" and "an object, but a list of turns belongs here" in p.message


def test_unknown_key_in_a_turn_suggests_the_right_one():
    row = {"conversations": [{"from": "human", "valeu": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    _, problems = convert(row, "sharegpt")
    unknown = next(p for p in problems if "unknown key" in p.message)
    assert unknown.field == "conversations[0].valeu" and unknown.hint == "did you mean 'value'?"
    assert any(p.field == "conversations[0].value" and "missing 'value'" in p.message for p in problems)


def test_missing_turn_list_lists_the_row_keys():
    p = only_problem(convert({"dialog": []}, "sharegpt")[1])
    assert p.field == "conversations" and "dialog" in p.hint and "columns.messages" in p.hint


# ---------------------------------------------------------------- openai


def test_openai_messages_with_tool_calls():
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Policy 7?"},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
            {"role": "tool", "content": "active", "tool_call_id": "c1"},
            {"role": "assistant", "content": "Policy 7 is active."},
        ]
    }  # fmt: skip
    conversation, problems = convert(row, "openai")
    assert problems == []
    assert [m.role for m in conversation.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert json.loads(conversation.messages[2].content) == [{"name": "lookup", "arguments": "{}"}]


def test_openai_role_outside_the_schema():
    row = {"messages": [{"role": "human", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    p = only_problem(convert(row, "openai")[1])
    assert p.field == "messages[0].role" and "set tags.user_tag to 'human'" in p.hint


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"instruction": "a", "output": "b"}, "alpaca"),
        ({"conversations": []}, "sharegpt"),
        ({"messages": []}, "openai"),
        ({"text": "x"}, None),
    ],
)
def test_detect_format(row, expected):
    assert detect_format([Record(None, "x:1"), Record(row, "x:2")]) == expected
