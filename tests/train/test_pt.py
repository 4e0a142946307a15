"""Stage pt: raw domain text lowers the held-out perplexity (checked with plain transformers + peft), packing into
cutoff_len blocks with EOS between documents, the text sources (jsonl + dataset_info.json, .txt, documents through
`expertkit data text`), and clear errors for a wrong text column or an empty file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from expertkit.cli.main import main
from expertkit.core.config import load_config
from expertkit.core.errors import DataError
from expertkit.train.config import TrainConfig

PARTS = ["impeller", "seal", "bearing", "valve", "gasket", "shaft"]
ACTIONS = ["inspect", "replace", "grease", "tighten", "clean"]


def manual_lines(n: int) -> list[str]:
    """A tiny pump manual: one sentence pattern with varying parts, actions and intervals."""
    return [
        f"Pump P{i % 7}: {ACTIONS[i % 5]} the {PARTS[i % 6]} every {250 * (1 + i % 4)} hours; log it in the book."
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    with open(d / "manuals.jsonl", "w", encoding="utf-8") as fh:
        for line in manual_lines(48):
            fh.write(json.dumps({"body": line, "id": 1}) + "\n")
    (d / "dataset_info.json").write_text(
        json.dumps({"manuals_text": {"file_name": "manuals.jsonl", "columns": {"prompt": "body"}}}), encoding="utf-8"
    )
    return d


def pt_config(tiny_model, text_dir, out, **overrides) -> TrainConfig:
    base = dict(
        model_name_or_path=str(tiny_model),
        stage="pt",
        dataset="manuals_text",
        dataset_dir=str(text_dir),
        output_dir=str(out),
        cutoff_len=64,
        lora_rank=16,
        learning_rate=5e-3,
        num_train_epochs=8,
        per_device_train_batch_size=4,
        logging_steps=5,
        save_steps=1000,
        val_size=6,
        lr_scheduler_type="constant",
        bf16=False,
    )
    base.update(overrides)
    return load_config(TrainConfig, None, base)


def held_out_perplexity(model, tokenizer, texts: list[str]) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]])
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return math.exp(total / count)


@pytest.fixture(scope="module")
def pt_run(tiny_model, text_dir, tmp_path_factory):
    from expertkit.train.run import run

    config = pt_config(tiny_model, text_dir, tmp_path_factory.mktemp("pt") / "run")
    return config, run(config)


def test_pt_lowers_held_out_perplexity_in_plain_transformers(pt_run, tiny_model, text_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from expertkit.data.load import split_validation

    config, result = pt_run
    assert config.packing  # unset: on for pt, as in LLaMA-Factory
    check = result.learning_check
    assert check is not None and check.tuned_perplexity < check.start_perplexity
    result_dir = Path(result.output_dir)
    saved = json.loads((result_dir / "learning_check.json").read_text())
    assert saved["tuned_perplexity"] == pytest.approx(check.tuned_perplexity)
    _, held = split_validation(manual_lines(48), config.val_size, config.seed)  # the documents the run held out
    tokenizer = AutoTokenizer.from_pretrained(result_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    before = held_out_perplexity(base, tokenizer, held)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), result_dir).eval()
    after = held_out_perplexity(tuned, tokenizer, held)
    assert after < 0.7 * before, (before, after)


def test_sft_round_continues_the_pt_adapter(pt_run, tiny_model, identity_dir, tmp_path):
    from expertkit.train.run import run

    _, result = pt_run
    sft = load_config(
        TrainConfig,
        None,
        dict(
            model_name_or_path=str(tiny_model),
            adapter_name_or_path=result.output_dir,
            dataset="identity",
            dataset_dir=str(identity_dir),
            output_dir=str(tmp_path / "sft"),
            max_steps=2,
            learning_check_samples=0,
            bf16=False,
        ),
    )
    assert run(sft).global_step == 2
    assert (tmp_path / "sft" / "adapter_model.safetensors").is_file()


def test_packing_cuts_cutoff_len_blocks_with_eos_between_documents(tiny_model):
    from transformers import AutoTokenizer

    from expertkit.data.text import TextDocument
    from expertkit.train.pt import tokenize_documents

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    texts = manual_lines(10)
    docs = [TextDocument(t, f"x:{i}") for i, t in enumerate(texts)]
    config = TrainConfig(model_name_or_path=str(tiny_model), dataset=["x"], stage="pt", cutoff_len=32)
    rows, stats = tokenize_documents(docs, tokenizer, config)
    expected = [
        t for text in texts for t in tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ]
    assert [len(r["input_ids"]) for r in rows[:-1]] == [32] * (len(rows) - 1) and 0 < len(rows[-1]["input_ids"]) <= 32
    assert [t for r in rows for t in r["input_ids"]] == expected  # EOS after every document, nothing dropped
    assert sum(t == tokenizer.eos_token_id for r in rows for t in r["input_ids"]) == 10
    assert all(r["labels"] == r["input_ids"] for r in rows)
    unpacked = TrainConfig(model_name_or_path=str(tiny_model), dataset=["x"], stage="pt", cutoff_len=32, packing=False)
    rows, stats = tokenize_documents(docs, tokenizer, unpacked)
    assert len(rows) == 10 and stats.truncated == sum(len(tokenizer(t)["input_ids"]) + 1 > 32 for t in texts)
    assert all(r["input_ids"][-1] == tokenizer.eos_token_id for r, t in zip(rows, texts) if len(r["input_ids"]) < 32)


def test_txt_lines_and_bare_jsonl_text_column(tmp_path):
    from expertkit.data.config import DataConfig
    from expertkit.data.text import load_text_dataset

    (tmp_path / "notes.txt").write_text("first document\n\n  \nsecond document\n", encoding="utf-8")
    (tmp_path / "rows.jsonl").write_text('{"text": "a"}\n{"text": ""}\n{"text": 3}\n', encoding="utf-8")
    config = DataConfig(model_name_or_path="m", dataset=["notes.txt"], dataset_dir=str(tmp_path))
    loaded = load_text_dataset("notes.txt", config)
    assert [d.text for d in loaded.items] == ["first document", "second document"]
    assert loaded.items[1].source.endswith("notes.txt:4")
    loaded = load_text_dataset("rows.jsonl", config)
    assert [d.text for d in loaded.items] == ["a"] and len(loaded.problems) == 2
    assert "rows.jsonl:2" in loaded.problems[0].format() and "empty" in loaded.problems[0].format()


def test_wrong_text_column_and_empty_file_are_clear_errors(tiny_model, text_dir, tmp_path, capsys):
    from expertkit.data.config import DataConfig
    from expertkit.data.text import load_text_dataset

    (tmp_path / "dataset_info.json").write_text(
        json.dumps({"m": {"file_name": "m.jsonl", "columns": {"prompt": "content"}}}), encoding="utf-8"
    )
    (tmp_path / "m.jsonl").write_text('{"body": "text"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="no text column 'content'.*keys body") as e:
        load_text_dataset("m", DataConfig(model_name_or_path="m", dataset=["m"], dataset_dir=str(tmp_path)))
    assert "columns" in e.value.hint
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    argv = ["train", f"model_name_or_path={tiny_model}", "stage=pt", "dataset=empty.txt", f"dataset_dir={tmp_path}",
            f"output_dir={tmp_path / 'out'}"]  # fmt: skip
    assert main(argv) == 1
    assert "has no rows" in capsys.readouterr().err


def test_documents_become_text_with_data_text(tmp_path, capsys):
    from expertkit.data.config import DataConfig
    from expertkit.data.text import load_text_dataset

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pump.md").write_text("# Pump\n\nReplace the seal every 2000 hours.\n", encoding="utf-8")
    (docs / "valve.html").write_text(
        "<html><head><title>Valve</title></head><body><p>Grease the valve monthly.</p></body></html>", encoding="utf-8"
    )
    config = DataConfig(model_name_or_path="m", dataset=["docs"], dataset_dir=str(tmp_path))
    with pytest.raises(DataError, match="holds documents") as e:
        load_text_dataset(str(docs), config)
    assert "expertkit data text" in e.value.hint
    out = tmp_path / "docs_text.jsonl"
    assert main(["data", "text", str(docs), f"output={out}"]) == 0
    loaded = load_text_dataset(str(out), config)
    assert len(loaded.items) == 2 and "Replace the seal" in loaded.items[0].text
    assert "Grease the valve" in loaded.items[1].text


def test_shipped_tiny_pt_yaml_trains_on_the_sample_handbook(tiny_model, tmp_path):
    from expertkit.train.run import run

    root = Path(__file__).parents[2]
    overrides = {"model_name_or_path": str(tiny_model), "dataset_dir": str(root / "examples" / "data"),
                 "output_dir": str(tmp_path / "run"), "num_train_epochs": 3}  # fmt: skip
    config = load_config(TrainConfig, root / "examples" / "train" / "tiny_lora_pt.yaml", overrides)
    result = run(config)
    assert config.stage == "pt" and config.packing
    assert result.learning_check.tuned_perplexity < result.learning_check.start_perplexity
