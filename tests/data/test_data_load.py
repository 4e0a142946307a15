"""load_datasets / require_usable / split_validation: what the trainer and `data check` call."""

from __future__ import annotations

import json
import logging
import re

import pytest

from expertkit.core.config import load_config
from expertkit.core.errors import ConfigError, DataError
from expertkit.core.schema import Conversation, Message
from expertkit.data.config import DataConfig
from expertkit.data.load import LoadedDataset, load_datasets, placeholder_warning, require_usable, split_validation


def alpaca_rows(n: int, prefix: str = "q") -> list[dict[str, str]]:
    return [{"instruction": f"{prefix}{i}", "input": "", "output": f"answer {i}"} for i in range(n)]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def config(dataset_dir, dataset, **kwargs) -> DataConfig:
    return DataConfig(model_name_or_path="tiny", dataset=dataset, dataset_dir=str(dataset_dir), **kwargs)


def test_mixes_datasets_in_order_with_sources(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", alpaca_rows(2, "a"))
    sharegpt = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}]
    (tmp_path / "b.json").write_text(json.dumps(sharegpt))
    loaded = load_datasets(config(tmp_path, "a.jsonl, b.json"))
    assert [(d.name, d.format, d.total_rows) for d in loaded] == [("a.jsonl", "alpaca", 2), ("b.json", "sharegpt", 1)]
    conversations = require_usable(loaded, 0.1)
    assert [c.messages[-2].content for c in conversations] == ["a0", "a1", "hi"]
    assert conversations[1].source == f"{tmp_path / 'a.jsonl'}:2"
    assert conversations[2].source == f"{tmp_path / 'b.json'}:1 (row 1)"


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_alpaca_from_csv_and_parquet(tmp_path, suffix):
    rows = alpaca_rows(3)
    path = tmp_path / f"train.{suffix}"
    if suffix == "csv":
        path.write_text("instruction,input,output\n" + "".join(f"{r['instruction']},,{r['output']}\n" for r in rows))
    else:
        pq = pytest.importorskip("pyarrow.parquet")
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(rows), path)
    (dataset,) = load_datasets(config(tmp_path, f"train.{suffix}"))
    assert dataset.format == "alpaca" and dataset.problems == []
    assert [m.content for m in dataset.conversations[2].messages] == ["q2", "answer 2"]
    assert dataset.conversations[2].source == (f"{path}:4" if suffix == "csv" else f"{path} row 3")


def test_custom_columns_and_tags_from_dataset_info(tmp_path):
    rows = [{"dialog": [{"speaker": "client", "text": "Hi"}, {"speaker": "agent", "text": "Hello"}], "persona": "P"}]
    write_jsonl(tmp_path / "chats.jsonl", rows)
    info = {
        "chats": {
            "file_name": "chats.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "dialog", "system": "persona"},
            "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "client", "assistant_tag": "agent"},
        }
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    (dataset,) = load_datasets(config(tmp_path, "chats"))
    assert dataset.path == str(tmp_path / "chats.jsonl") and dataset.problems == []
    assert dataset.conversations[0].to_dicts() == [
        {"role": "system", "content": "P"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_tags_that_do_not_match_the_data_refuse_with_the_fix(tmp_path):
    rows = [
        {"conversations": [{"from": "user", "value": f"q{i}"}, {"from": "assistant", "value": "a"}]} for i in range(3)
    ]
    write_jsonl(tmp_path / "chats.jsonl", rows)
    (tmp_path / "dataset_info.json").write_text(
        json.dumps({"chats": {"file_name": "chats.jsonl", "formatting": "sharegpt"}})
    )
    loaded = load_datasets(config(tmp_path, "chats"))
    assert loaded[0].conversations == [] and loaded[0].invalid_rows == 3
    with pytest.raises(DataError) as e:
        require_usable(loaded, 0.5)
    assert "every one of the 3 rows of dataset 'chats'" in e.value.message
    text = str(e.value)
    assert f"{tmp_path / 'chats.jsonl'}:3 conversations[0].from: role 'user'" in text
    assert "set tags.user_tag to 'user'" in text and "set tags.assistant_tag to 'assistant'" in text


def test_openai_messages_file(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    write_jsonl(tmp_path / "chat.jsonl", rows)
    (dataset,) = load_datasets(config(tmp_path, str(tmp_path / "chat.jsonl")))
    assert dataset.format == "openai" and dataset.conversations[0].to_dicts()[1]["content"] == "Hello"


def test_max_samples_takes_the_first_rows_of_each_dataset(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", alpaca_rows(10, "a"))
    (tmp_path / "b.json").write_text(json.dumps(alpaca_rows(10, "b")))
    loaded = load_datasets(config(tmp_path, "a.jsonl,b.json", max_samples=3))
    assert [d.total_rows for d in loaded] == [3, 3]
    assert [c.messages[0].content for c in require_usable(loaded, 0)] == ["a0", "a1", "a2", "b0", "b1", "b2"]


def test_num_samples_is_deterministic_and_may_repeat_rows(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", alpaca_rows(4))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"a": {"file_name": "a.jsonl", "num_samples": 6}}))
    first = load_datasets(config(tmp_path, "a"))[0]
    again = load_datasets(config(tmp_path, "a"))[0]
    assert first.total_rows == 6
    assert [c.source for c in first.conversations] == [c.source for c in again.conversations]
    assert len({c.source for c in first.conversations}) == 4  # every row once, then two drawn again


def test_unreadable_datasets_are_all_reported_at_once(tmp_path):
    (tmp_path / "cut.json").write_text('[{"instruction": "a", "output": "b"},')
    (tmp_path / "notes.json").write_text(json.dumps([{"text": "x"}]))
    with pytest.raises(DataError) as e:
        load_datasets(config(tmp_path, "cut.json,missing.jsonl,notes.json"))
    assert "cannot read 3 of the 3 datasets" in e.value.message
    text = str(e.value)
    assert f"{tmp_path / 'cut.json'}:1:" in text and "missing.jsonl' does not exist" in text
    assert "cannot tell the format of dataset 'notes.json'" in text and "has keys text" in text


def test_three_bad_jsonl_lines_are_three_problems(tmp_path):
    lines = [json.dumps(r) for r in alpaca_rows(7)]
    lines[1], lines[3], lines[5] = '{"instruction": "x"', "oops", '{"instruction": "y", "output": "z"}}'
    (tmp_path / "t.jsonl").write_text("\n".join(lines))
    (dataset,) = load_datasets(config(tmp_path, "t.jsonl"))
    assert dataset.total_rows == 7 and len(dataset.conversations) == 4
    assert [p.where for p in dataset.problems] == [f"{tmp_path / 't.jsonl'}:{n}" for n in (2, 4, 6)]


# ---------------------------------------------------------------- require_usable


def loaded_with(valid: int, invalid: int, name: str = "d") -> LoadedDataset:
    from expertkit.core.errors import Problem

    conversations = [
        Conversation([Message("user", "q"), Message("assistant", "a")], source=f"f:{i}") for i in range(valid)
    ]
    problems = [Problem("missing 'output'", f"f:{valid + i}", "output", "add it") for i in range(invalid)]
    return LoadedDataset(name, "f", "alpaca", valid + invalid, conversations, problems)


def test_require_usable_skips_a_few_invalid_rows_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="expertkit.data.load"):
        conversations = require_usable([loaded_with(9, 1)], 0.1)
    assert len(conversations) == 9
    assert len(caplog.records) == 1
    assert "skipping 1 invalid of 10 rows" in caplog.text and "f:9 output: missing 'output'" in caplog.text


def test_require_usable_refuses_above_the_ratio_listing_the_problems():
    with pytest.raises(DataError) as e:
        require_usable([loaded_with(8, 2), loaded_with(10, 0, "other")], 0.05)
    assert "2 of 20 rows (10%) are invalid, more than max_invalid_ratio=0.05" in e.value.message
    assert len(e.value.problems) == 2 and "raise max_invalid_ratio" in e.value.hint


def test_require_usable_refuses_when_all_rows_are_invalid_even_with_a_high_ratio():
    with pytest.raises(DataError):
        require_usable([loaded_with(0, 3)], 1.0)
    with pytest.raises(DataError, match="no rows"):
        require_usable([loaded_with(0, 0)], 1.0)


def test_require_usable_silent_when_clean(caplog):
    with caplog.at_level(logging.WARNING):
        assert len(require_usable([loaded_with(3, 0)], 0.0)) == 3
    assert caplog.records == []


# ---------------------------------------------------------------- split_validation


def conversations(n: int) -> list[Conversation]:
    return [Conversation([Message("user", str(i)), Message("assistant", "a")], source=f"f:{i}") for i in range(n)]


def test_split_share_and_count_are_deterministic():
    rows = conversations(20)
    train, val = split_validation(rows, 0.25, seed=1)
    assert len(val) == 5 and len(train) == 15
    assert split_validation(rows, 0.25, seed=1) == (train, val)
    assert split_validation(rows, 0.25, seed=2)[1] != val
    assert {c.source for c in train} | {c.source for c in val} == {c.source for c in rows}
    assert [c.source for c in train] == sorted((c.source for c in train), key=lambda s: int(s[2:]))  # order kept
    assert len(split_validation(rows, 3, seed=1)[1]) == 3


def test_split_none_and_too_many():
    rows = conversations(4)
    assert split_validation(rows, 0, seed=1) == (rows, [])
    with pytest.raises(DataError) as e:
        split_validation(rows, 4, seed=1)
    assert "only 4" in e.value.message and "lower val_size" in e.value.hint


def test_a_file_whose_every_line_is_broken_reports_each_line(tmp_path):
    (tmp_path / "t.jsonl").write_text("{bad\n{worse\n")
    (dataset,) = load_datasets(config(tmp_path, "t.jsonl"))
    assert dataset.format == "unknown" and dataset.total_rows == 2 and len(dataset.problems) == 2
    with pytest.raises(DataError) as e:
        require_usable([dataset], 0.5)
    assert f"{tmp_path / 't.jsonl'}:2: not valid JSON" in str(e.value)


def test_an_empty_dataset_in_a_mix_is_refused(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", alpaca_rows(3))
    (tmp_path / "empty.jsonl").write_text("\n")
    loaded = load_datasets(config(tmp_path, "a.jsonl,empty.jsonl"))
    with pytest.raises(DataError) as e:
        require_usable(loaded, 0.5)
    assert "dataset 'empty.jsonl'" in e.value.message and "has no rows" in e.value.message


def test_llamafactory_identity_placeholders_are_warned_with_the_fix(tmp_path):
    # LLaMA-Factory's data/identity.json ships with {{name}} and {{author}} for the user to replace
    rows = [
        {"instruction": "hi", "input": "", "output": "Hello! I am {{name}}, an AI assistant developed by {{author}}."},
        {"instruction": "你是谁", "input": "", "output": "您好，我是 {{name}}，一个由 {{author}} 开发的 AI 助手。"},
        {"instruction": "2+2?", "input": "", "output": "4"},
    ]
    (tmp_path / "identity.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"identity": {"file_name": "identity.json"}}))
    [loaded] = load_datasets(config(tmp_path, "identity"))
    warning = placeholder_warning(loaded)
    assert warning.startswith("2 of 3 rows of dataset 'identity' hold the unfilled placeholder(s) {{name}}, {{author}}")
    assert f"first {tmp_path / 'identity.json'}:1 (row 1)" in warning
    assert f"sed -i 's/{{{{name}}}}/MyName/g; s/{{{{author}}}}/MyAuthor/g' {tmp_path / 'identity.json'}" in warning
    write_jsonl(tmp_path / "plain.jsonl", alpaca_rows(2))
    assert placeholder_warning(load_datasets(config(tmp_path, "plain.jsonl"))[0]) is None


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        (
            {"formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"}},
            "is multimodal (columns: images)",
        ),
        ({"ranking": True, "formatting": "sharegpt"}, "is preference data (ranking: true), for DPO"),
        ({"columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}}, "is preference data"),
    ],
)
def test_multimodal_and_preference_entries_are_refused_with_what_they_are(tmp_path, entry, says):
    write_jsonl(tmp_path / "rows.jsonl", alpaca_rows(1))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "rows.jsonl", **entry}}))
    with pytest.raises(DataError, match=re.escape(says)):
        load_datasets(config(tmp_path, "d"))


def test_mix_strategy_interleaves_as_datasets_does():
    """LLaMA-Factory's mix_strategy / interleave_probs (datasets.interleave_datasets): the round's replay share."""
    from expertkit.data.load import mix_items

    a, b = ["a0", "a1", "a2"], ["b0"]
    assert mix_items([a, b], "concat", None, 1) == ["a0", "a1", "a2", "b0"]
    assert mix_items([a, b], "interleave_under", None, 1) == ["a0", "b0"]  # stops when the first part runs out
    assert mix_items([a, b], "interleave_over", None, 1) == ["a0", "b0", "a1", "b0", "a2", "b0"]
    new, old = [f"n{i}" for i in range(100)], [f"o{i}" for i in range(1000)]
    mixed = mix_items([new, old], "interleave_under", [0.8, 0.2], 42)
    assert set(new) <= set(mixed) and 0.1 < sum(x[0] == "o" for x in mixed) / len(mixed) < 0.3
    assert mixed == mix_items([new, old], "interleave_under", [0.8, 0.2], 42)  # same seed, same rows
    assert mixed != mix_items([new, old], "interleave_under", [0.8, 0.2], 7)
    config = load_config(
        DataConfig, None, {"model_name_or_path": "m", "dataset": "new,old", "mix_strategy": "interleave_under",
                           "interleave_probs": "0.8,0.2"},
    )  # fmt: skip
    parts = [LoadedDataset("new", "new", "alpaca", 100, new), LoadedDataset("old", "old", "alpaca", 1000, old)]
    assert require_usable(parts, 0.1, mix=config) == mixed
    assert require_usable(parts, 0.1) == new + old


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ({"interleave_probs": "0.8,0.2"}, "needs mix_strategy interleave_under or interleave_over"),
        ({"mix_strategy": "interleave_over", "interleave_probs": "0.5"}, "1 numbers for 2 datasets"),
        ({"mix_strategy": "interleave_over", "interleave_probs": "0.5,0.6"}, "summing to 1"),
    ],
)
def test_bad_interleave_probs_are_config_errors(keys, says):
    with pytest.raises(ConfigError, match=says):
        load_config(DataConfig, None, {"model_name_or_path": "m", "dataset": "a,b", **keys})
