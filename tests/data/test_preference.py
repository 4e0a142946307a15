"""Preference data: each format into PreferencePair / UnpairedExample, every problem located, and `data check`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from expertkit.core.errors import DataError
from expertkit.core.schema import Message, PreferencePair, UnpairedExample
from expertkit.data.config import DataConfig
from expertkit.data.load import load_datasets, load_preference_datasets, require_usable, split_validation
from expertkit.data.preference import preference_kind

EXAMPLES = Path(__file__).parents[2] / "examples" / "data"


class StageConfig(DataConfig):
    """DataConfig plus the `stage` key TrainConfig carries."""

    stage: str = "sft"


def config(dataset_dir, dataset, **kwargs) -> StageConfig:
    return StageConfig(model_name_or_path="tiny", dataset=dataset, dataset_dir=str(dataset_dir), **kwargs)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_info(dataset_dir: Path, **entries) -> None:
    (dataset_dir / "dataset_info.json").write_text(json.dumps(entries), encoding="utf-8")


def load_one(tmp_path, dataset, kind="pairs"):
    (loaded,) = load_preference_datasets(config(tmp_path, dataset), kind)
    return loaded


def problems_of(loaded) -> list[tuple[str, str, str]]:
    """(where, field, message) of each problem; each must carry a fix."""
    assert all(p.hint for p in loaded.problems), [p.format() for p in loaded.problems]
    return [(p.where, p.field, p.message) for p in loaded.problems]


def u(text: str) -> Message:
    return Message("user", text)


def a(text: str) -> Message:
    return Message("assistant", text)


# ---------------------------------------------------------------- formats round-trip


def test_alpaca_ranking_like_llamafactory(tmp_path):
    row = {
        "instruction": "Classify the claim type.",
        "input": "A pipe burst.",
        "chosen": "Homeowners - water damage.",
        "rejected": "Flood.",
        "system": "You are ClaimsGPT.",
        "history": [["Hi", "Hello, how can I help?"]],
    }
    write_jsonl(tmp_path / "pairs.jsonl", [row])
    columns = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}
    write_info(tmp_path, claims={"file_name": "pairs.jsonl", "ranking": True, "columns": columns})
    loaded = load_one(tmp_path, "claims")
    assert (loaded.format, loaded.total_rows, loaded.problems) == ("alpaca", 1, [])
    assert loaded.items == [
        PreferencePair(
            [
                Message("system", "You are ClaimsGPT."),
                u("Hi"),
                a("Hello, how can I help?"),
                u("Classify the claim type.\nA pipe burst."),
            ],
            a("Homeowners - water damage."),
            a("Flood."),
            source=f"{tmp_path / 'pairs.jsonl'}:1",
        )
    ]


def test_sharegpt_ranking_with_custom_tags(tmp_path):
    row = {
        "dialog": [
            {"speaker": "customer", "text": "My roof leaks."},
            {"speaker": "agent", "text": "Since when?"},
            {"speaker": "customer", "text": "Since the storm."},
        ],
        "better": {"speaker": "agent", "text": "Storm damage is covered; send photos."},
        "worse": {"speaker": "agent", "text": "Not our problem."},
    }
    (tmp_path / "chats.json").write_text(json.dumps([row]), encoding="utf-8")
    write_info(
        tmp_path,
        chats={
            "file_name": "chats.json",
            "formatting": "sharegpt",
            "ranking": True,
            "columns": {"messages": "dialog", "chosen": "better", "rejected": "worse"},
            "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "customer", "assistant_tag": "agent"},
        },
    )
    loaded = load_one(tmp_path, "chats")
    assert loaded.problems == [] and loaded.format == "sharegpt"
    (pair,) = loaded.items
    assert pair.prompt == [u("My roof leaks."), a("Since when?"), u("Since the storm.")]
    assert (pair.chosen, pair.rejected) == (a("Storm damage is covered; send photos."), a("Not our problem."))
    assert pair.source == f"{tmp_path / 'chats.json'}:1 (row 1)"


def test_sharegpt_and_openai_ranking_files_are_detected(tmp_path):
    sharegpt = {
        "conversations": [{"from": "human", "value": "Is hail covered?"}],
        "chosen": {"from": "gpt", "value": "Yes, under comprehensive."},
        "rejected": {"from": "gpt", "value": "No."},
        "system": "Be brief.",
    }
    openai = {
        "messages": [{"role": "user", "content": "Is hail covered?"}],
        "chosen": {"role": "assistant", "content": "Yes, under comprehensive."},
        "rejected": {"role": "assistant", "content": "No."},
    }
    write_jsonl(tmp_path / "s.jsonl", [sharegpt])
    write_jsonl(tmp_path / "o.jsonl", [openai])
    s, o = load_preference_datasets(config(tmp_path, "s.jsonl,o.jsonl"), "pairs")
    assert (s.format, o.format, s.problems, o.problems) == ("sharegpt", "openai", [], [])
    assert s.items[0].prompt == [Message("system", "Be brief."), u("Is hail covered?")]
    assert o.items[0].prompt == [u("Is hail covered?")]
    assert s.items[0].chosen == o.items[0].chosen == a("Yes, under comprehensive.")


def test_trl_preference_shapes_without_dataset_info(tmp_path):
    rows = [
        {"prompt": "What is a deductible?", "chosen": "What you pay yourself.", "rejected": "A discount."},
        {
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is a deductible?"},
            ],
            "chosen": [{"role": "assistant", "content": "What you pay yourself."}],
            "rejected": [{"role": "assistant", "content": "A discount."}],
        },
        {  # TRL's implicit prompt: the shared start of both conversations
            "chosen": [
                {"role": "user", "content": "What is a deductible?"},
                {"role": "assistant", "content": "Yours."},
            ],
            "rejected": [{"role": "user", "content": "What is a deductible?"}, {"role": "assistant", "content": "No."}],
        },
    ]
    write_jsonl(tmp_path / "trl.jsonl", rows)
    loaded = load_one(tmp_path, "trl.jsonl")
    assert loaded.format == "trl" and loaded.problems == []
    first, second, third = loaded.items
    assert (first.prompt, first.chosen, first.rejected) == (
        [u("What is a deductible?")],
        a("What you pay yourself."),
        a("A discount."),
    )
    assert second.prompt == [Message("system", "Be brief."), u("What is a deductible?")]
    assert (third.prompt, third.chosen, third.rejected) == ([u("What is a deductible?")], a("Yours."), a("No."))
    assert third.source == f"{tmp_path / 'trl.jsonl'}:3"


def test_kto_alpaca_and_sharegpt_with_a_boolean_kto_tag(tmp_path):
    write_jsonl(
        tmp_path / "kto.jsonl",
        [
            {"instruction": "What is a deductible?", "output": "What you pay yourself.", "verdict": True},
            {"instruction": "What is a deductible?", "output": "A discount.", "verdict": False},
        ],
    )
    chat = {
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello."},
            {"from": "human", "value": "Is hail covered?"},
            {"from": "gpt", "value": "Never."},
        ],
        "kto_tag": False,
    }
    write_jsonl(tmp_path / "chat.jsonl", [chat])
    write_info(
        tmp_path,
        kto={"file_name": "kto.jsonl", "columns": {"kto_tag": "verdict"}},
        chat={"file_name": "chat.jsonl", "formatting": "sharegpt", "columns": {"kto_tag": "kto_tag"}},
    )
    kto, chats = load_preference_datasets(config(tmp_path, "kto,chat"), "unpaired")
    assert kto.problems == [] and chats.problems == []
    assert [(x.completion.content, x.label) for x in kto.items] == [
        ("What you pay yourself.", True),
        ("A discount.", False),
    ]
    (example,) = chats.items
    assert example == UnpairedExample(
        [u("Hi"), a("Hello."), u("Is hail covered?")], a("Never."), False, source=f"{tmp_path / 'chat.jsonl'}:1"
    )


def test_trl_unpaired_shape(tmp_path):
    rows = [
        {"prompt": "Is hail covered?", "completion": "Yes, under comprehensive.", "label": True},
        {
            "prompt": [{"role": "user", "content": "Is hail covered?"}],
            "completion": [{"role": "assistant", "content": "No."}],
            "label": False,
        },
    ]
    write_jsonl(tmp_path / "u.jsonl", rows)
    loaded = load_one(tmp_path, "u.jsonl", "unpaired")
    assert loaded.format == "trl" and loaded.problems == []
    assert [(x.prompt, x.completion, x.label) for x in loaded.items] == [
        ([u("Is hail covered?")], a("Yes, under comprehensive."), True),
        ([u("Is hail covered?")], a("No."), False),
    ]


def test_example_datasets_load_clean():
    pairs = load_preference_datasets(config(EXAMPLES, "insurance_preference"), "pairs")
    kto = load_preference_datasets(config(EXAMPLES, "insurance_kto"), "unpaired")
    assert pairs[0].problems == [] and len(pairs[0].items) == pairs[0].total_rows >= 15
    assert kto[0].problems == [] and len(kto[0].items) == kto[0].total_rows >= 20
    labels = [x.label for x in kto[0].items]
    assert labels.count(True) and labels.count(False)


@pytest.mark.parametrize(
    ("stage", "kind"), [("dpo", "pairs"), ("rm", "pairs"), ("kto", "unpaired"), ("sft", None), ("ppo", None)]
)
def test_preference_kind_of_each_stage(stage, kind):
    assert preference_kind(stage) == kind


# ---------------------------------------------------------------- problems, all at once with file:line and field


def test_pair_problems_are_located(tmp_path):
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": "Q1", "chosen": "Same.", "rejected": "Same."},
            {"prompt": "Q2", "chosen": "", "rejected": "No."},
            {"prompt": "Q3", "chosen": "Yes.", "rejected": "  "},
            {"prompt": "Q4", "chosen": "Yes.", "rejected": "No."},
        ],
    )
    loaded = load_one(tmp_path, "pairs.jsonl")
    assert loaded.invalid_rows == 3 and len(loaded.items) == 1
    assert problems_of(loaded) == [
        (f"{path}:1", "rejected", "'chosen' and 'rejected' are the same answer, so there is nothing to prefer"),
        (f"{path}:2", "chosen", "'chosen' is empty"),
        (f"{path}:3", "rejected", "'rejected' is empty"),
    ]


def test_alpaca_ranking_problems_are_located(tmp_path):
    rows = [
        {"instruction": "Q", "input": "", "chosen": "A", "rejected": "A"},
        {"instruction": "Q", "input": "", "chosen": "", "rejected": {"from": "gpt", "value": "B"}},
        {"instruction": "Q", "input": "", "chosen": "A"},
    ]
    (tmp_path / "r.json").write_text(json.dumps(rows, indent=0), encoding="utf-8")
    write_info(tmp_path, r={"file_name": "r.json", "ranking": True})
    loaded = load_one(tmp_path, "r")
    found = [(where.split(":")[-1], field) for where, field, _ in problems_of(loaded)]
    assert found == [
        ("2 (row 1)", "rejected"),
        ("8 (row 2)", "chosen"),
        ("8 (row 2)", "rejected"),
        ("17 (row 3)", "rejected"),
    ]
    assert "missing 'rejected'" in loaded.problems[-1].message


def test_sharegpt_prompt_ending_on_the_assistant_is_reported(tmp_path):
    row = {
        "conversations": [{"from": "human", "value": "Is hail covered?"}, {"from": "gpt", "value": "Which policy?"}],
        "chosen": {"from": "gpt", "value": "Yes."},
        "rejected": {"from": "gpt", "value": "No."},
    }
    bad_roles = {
        "conversations": [{"from": "human", "value": "Is hail covered?"}],
        "chosen": {"from": "human", "value": "Yes."},
        "rejected": "No.",
    }
    path = write_jsonl(tmp_path / "s.jsonl", [row, bad_roles])
    loaded = load_one(tmp_path, "s.jsonl")
    problems = problems_of(loaded)
    assert problems[0][:2] == (f"{path}:1", "conversations[1]")
    assert "the prompt ends with an assistant turn" in problems[0][2] and "LLaMA-Factory skips" in problems[0][2]
    assert [(w, f) for w, f, _ in problems[1:]] == [(f"{path}:2", "chosen.from"), (f"{path}:2", "rejected")]
    assert loaded.problems[2].hint == 'write it as {"from": "gpt", "value": "..."}'


def test_kto_tag_written_as_text_is_reported_with_the_fix(tmp_path):
    rows = [
        {"instruction": "Q", "output": "A", "kto_tag": "true"},
        {"instruction": "Q", "output": "B", "kto_tag": "false"},
        {"instruction": "Q", "output": "C", "kto_tag": 1},
        {"instruction": "Q", "output": "D"},
        {"instruction": "Q", "output": "E", "kto_tag": True},
    ]
    path = write_jsonl(tmp_path / "kto.jsonl", rows)
    loaded = load_one(tmp_path, "kto.jsonl", "unpaired")
    assert [(w, f) for w, f, _ in problems_of(loaded)] == [(f"{path}:{i}", "kto_tag") for i in (1, 2, 3, 4)]
    assert loaded.problems[0].message.startswith("'kto_tag' is the text 'true', but a boolean belongs here")
    assert loaded.problems[1].hint == 'write it without quotes: "kto_tag": false'
    assert [x.completion.content for x in loaded.items] == ["E"]


def test_ranking_dataset_given_to_sft_points_to_stage_dpo(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"instruction": "Q", "chosen": "A", "rejected": "B"}])
    write_info(
        tmp_path,
        p={"file_name": "p.jsonl", "ranking": True},
        k={"file_name": "p.jsonl", "columns": {"kto_tag": "kto_tag"}},
    )
    with pytest.raises(DataError, match=re.escape("is preference data (ranking: true), for DPO")) as e:
        load_datasets(config(tmp_path, "p"))
    assert "stage: dpo" in e.value.hint and "rm" in e.value.hint
    with pytest.raises(DataError, match="for KTO training") as e:
        load_datasets(config(tmp_path, "k"))
    assert "stage: kto" in e.value.hint
    with pytest.raises(DataError, match="its rows have chosen and rejected answers") as e:  # a bare file
        load_datasets(config(tmp_path, "p.jsonl"))
    assert "stage: dpo" in e.value.hint


def test_sft_dataset_given_to_a_pair_stage_is_refused(tmp_path):
    write_jsonl(tmp_path / "sft.jsonl", [{"instruction": "Q", "input": "", "output": "A"}])
    write_info(tmp_path, claims={"file_name": "sft.jsonl"})
    with pytest.raises(DataError, match="dataset 'claims' has no chosen/rejected pairs: its dataset_info.json") as e:
        load_preference_datasets(config(tmp_path, "claims"), "pairs")
    assert e.value.hint == "set ranking: true in dataset_info.json with chosen/rejected columns, or use stage: sft"
    with pytest.raises(DataError, match="has no KTO labels"):
        load_preference_datasets(config(tmp_path, "sft.jsonl"), "unpaired")
    write_info(tmp_path, pairs={"file_name": "sft.jsonl", "ranking": True})
    with pytest.raises(DataError, match="KTO reads one answer per row"):
        load_preference_datasets(config(tmp_path, "pairs"), "unpaired")


# ---------------------------------------------------------------- shared with instruction data


def test_require_usable_and_split_validation_take_pairs(tmp_path):
    rows = [{"prompt": f"Q{i}", "chosen": "Yes.", "rejected": "No."} for i in range(9)]
    rows.append({"prompt": "Q9", "chosen": "Same.", "rejected": "Same."})
    write_jsonl(tmp_path / "p.jsonl", rows)
    loaded = load_preference_datasets(config(tmp_path, "p.jsonl"), "pairs")
    pairs = require_usable(loaded, 0.1)
    assert len(pairs) == 9 and all(isinstance(p, PreferencePair) for p in pairs)
    with pytest.raises(DataError, match="1 of 10 rows"):
        require_usable(loaded, 0.05)
    train, val = split_validation(pairs, 2, seed=1)
    assert len(train) == 7 and len(val) == 2 and split_validation(pairs, 2, seed=1) == (train, val)


# ---------------------------------------------------------------- data check


def test_data_check_for_dpo_prints_counts_and_drops(tiny_model, tmp_path):
    from expertkit.data.check import run

    long_prompt = " ".join(["the policy covers sudden and accidental water damage"] * 40)
    rows = [
        {
            "instruction": "What is a deductible?",
            "input": "",
            "chosen": "What you pay yourself.",
            "rejected": "A discount.",
        },
        {"instruction": long_prompt, "input": "", "chosen": "Yes. " * 30, "rejected": "No."},  # both long: cut, emptied
        {"instruction": "Q", "input": "", "chosen": "Same.", "rejected": "Same."},
    ]
    write_jsonl(tmp_path / "p.jsonl", rows)
    write_info(tmp_path, p={"file_name": "p.jsonl", "ranking": True})
    cfg = StageConfig(
        model_name_or_path=str(tiny_model), dataset="p", dataset_dir=str(tmp_path), cutoff_len=8, stage="dpo"
    )
    report = run(cfg)
    text = report.format()
    assert "dataset p (alpaca, " in text and "3 rows, 2 valid, 1 invalid" in text
    assert f"{tmp_path / 'p.jsonl'}:3 rejected: 'chosen' and 'rejected' are the same answer" in text
    assert "total: 2 valid pairs" in text
    assert "tokens per pair (prompt + longer answer): p50" in text and "(cutoff_len 8)" in text
    assert "cut by cutoff_len: 2 pair(s); left with an answer of no token (dropped): 1" in text
    assert report.lengths.no_answer_left == 1 and "training would refuse" in text  # 1 of 3 invalid > 0.1
    report = run(cfg.model_copy(update={"max_invalid_ratio": 0.5, "cutoff_len": 4096}))
    assert report.ok and "cut by cutoff_len: 0 pair(s)" in report.format()


def test_data_check_for_kto_counts_labels(tiny_model):
    from expertkit.data.check import run

    cfg = StageConfig(
        model_name_or_path=str(tiny_model), dataset="insurance_kto", dataset_dir=str(EXAMPLES), stage="kto"
    )
    report = run(cfg)
    text = report.format()
    assert report.ok, text
    assert "total: 20 valid examples" in text and "labels: 10 desirable, 10 undesirable" in text
    assert "tokens per example (prompt + answer)" in text


def test_data_check_for_sft_is_unchanged(tiny_model, identity_dir):
    from expertkit.data.check import run

    text = run(
        StageConfig(model_name_or_path=str(tiny_model), dataset="identity", dataset_dir=str(identity_dir))
    ).format()
    assert "total: 4 valid conversations" in text and "tokens per example: p50" in text
    assert "left with no answer token (skipped): 0" in text and "labels:" not in text
