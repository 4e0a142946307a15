"""dataset_info.json entries, names that are paths or hub ids, and the errors for names we can't find."""

from __future__ import annotations

import json

import pytest

from expertkit.core.errors import DataError
from expertkit.data import registry
from expertkit.data.registry import parse_entry, read_entry, resolve_dataset


def write_info(folder, info) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")


def test_entry_with_columns_and_tags(tmp_path):
    data = tmp_path / "data"
    write_info(
        data,
        {
            "claims": {
                "file_name": "claims.jsonl",
                "formatting": "sharegpt",
                "subset": None,
                "num_samples": 5,
                "columns": {"messages": "dialog", "system": "persona"},
                "tags": {"role_tag": "speaker", "content_tag": "text"},
            }
        },
    )
    entry = resolve_dataset("claims", data)
    assert entry.load_from == "file" and entry.path == str(data / "claims.jsonl")
    assert entry.formatting == "sharegpt" and entry.num_samples == 5
    spec = entry.spec("sharegpt")
    assert spec.columns.messages == "dialog" and spec.columns.system == "persona"
    assert spec.tags.role_tag == "speaker" and spec.tags.user_tag == "human"  # the rest keep LLaMA-Factory defaults


def test_entry_without_formatting_or_columns_is_detected_later(tmp_path):
    write_info(tmp_path, {"plain": {"file_name": "plain.json"}, "cols": {"file_name": "c.json", "columns": {}}})
    assert resolve_dataset("plain", tmp_path).formatting is None
    cols = parse_entry("cols", {"file_name": "c.json", "columns": {"prompt": "q"}}, tmp_path)
    assert cols.formatting == "alpaca"  # LLaMA-Factory's default once columns are described


def test_unknown_name_lists_names_and_suggests_one(tmp_path):
    write_info(tmp_path, {"claims_qa": {"file_name": "a.json"}, "identity": {"file_name": "b.json"}})
    with pytest.raises(DataError) as e:
        resolve_dataset("claim_qa", tmp_path)
    assert "unknown dataset 'claim_qa'" in e.value.message and "dataset_info.json" in e.value.message
    assert "did you mean 'claims_qa'?" in e.value.hint and "claims_qa, identity" in e.value.hint


def test_unknown_name_without_dataset_info(tmp_path):
    with pytest.raises(DataError) as e:
        resolve_dataset("claims", tmp_path)
    assert "unknown dataset 'claims'" in e.value.message and "no " in e.value.message


def test_invalid_dataset_info_json(tmp_path):
    (tmp_path / "dataset_info.json").write_text('{\n  "a": {"file_name": "a.json"},\n}\n')
    with pytest.raises(DataError) as e:
        resolve_dataset("a", tmp_path)
    assert e.value.message.startswith(f"{tmp_path / 'dataset_info.json'}:3:1: not valid JSON")
    assert "trailing comma" in e.value.hint


def test_dataset_info_that_is_not_a_mapping(tmp_path):
    (tmp_path / "dataset_info.json").write_text('[{"file_name": "a.json"}]')
    with pytest.raises(DataError) as e:
        resolve_dataset("a", tmp_path)
    assert "must be an object of dataset names" in e.value.message and "file_name" in e.value.hint


def test_entry_problems_are_reported_together(tmp_path):
    raw = {"fromatting": "sharegpt", "formatting": "chatml", "columns": {"promt": "q"}, "num_samples": 0}
    with pytest.raises(DataError) as e:
        parse_entry("bad", raw, tmp_path)
    by_field = {p.field: p for p in e.value.problems}
    assert set(by_field) == {"fromatting", "formatting", "columns.promt", "num_samples", ""}
    assert by_field["fromatting"].hint == "did you mean 'formatting'?"
    assert by_field["columns.promt"].hint == "did you mean 'prompt'?"
    assert "alpaca, sharegpt, openai" in by_field["formatting"].hint
    assert "file_name" in by_field[""].hint and "names no data" in by_field[""].message
    assert all("dataset_info.json ['bad']" in p.where for p in e.value.problems)


def test_entry_that_is_not_an_object(tmp_path):
    with pytest.raises(DataError) as e:
        parse_entry("x", "x.json", tmp_path)
    assert "must be an object" in e.value.message and "file_name" in e.value.hint


def test_a_name_may_be_a_path_relative_to_cwd_or_dataset_dir(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    assert resolve_dataset("data/rows.jsonl", "elsewhere").path == "data/rows.jsonl"
    assert resolve_dataset("rows.jsonl", data).path == str(data / "rows.jsonl")


def test_a_missing_file_name_lists_the_folder(tmp_path):
    (tmp_path / "rows.jsonl").write_text("")
    with pytest.raises(DataError) as e:
        resolve_dataset("row.jsonl", tmp_path)
    assert "does not exist" in e.value.message and "rows.jsonl" in e.value.hint


def test_hub_id_without_network_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_hub_offline", lambda: False)
    monkeypatch.setattr(registry, "_hub_reachable", lambda timeout_s=3.0: False)
    entry = resolve_dataset("someone/claims-qa", tmp_path)
    assert entry.load_from == "hf_hub"
    pytest.importorskip("datasets")
    with pytest.raises(DataError) as e:
        read_entry(entry)
    assert "'someone/claims-qa' was not found locally" in e.value.message
    assert "hub (huggingface.co) is not reachable" in e.value.message and "HF_HUB_OFFLINE" in e.value.hint


def test_saved_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"instruction": "Q", "output": "A"}, {"instruction": "Q2", "output": "A2"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    entry = resolve_dataset("saved", tmp_path)
    assert entry.load_from == "disk"
    records = read_entry(entry)
    assert [r.data for r in records] == rows
    assert records[1].where == f"{tmp_path / 'saved'}[train] row 2"


def test_dataset_repository_folder_goes_through_datasets(tmp_path):
    pytest.importorskip("datasets")
    repo = tmp_path / "claims-repo"
    (repo / "data").mkdir(parents=True)
    (repo / "README.md").write_text("# claims\n")
    (repo / "data" / "train.jsonl").write_text(json.dumps({"instruction": "Q", "output": "A"}) + "\n")
    entry = resolve_dataset(str(repo), tmp_path)
    assert entry.load_from == "disk"
    records = read_entry(entry)
    assert [r.data for r in records] == [{"instruction": "Q", "output": "A"}]
    assert records[0].where == f"{repo}[train] row 1"


def test_hf_hub_url_entry_without_network_does_not_claim_there_is_no_entry(tmp_path, monkeypatch):
    # LLaMA-Factory's dataset_info.json names most datasets by hf_hub_url (alpaca_en, ...)
    monkeypatch.setattr(registry, "_hub_offline", lambda: False)
    monkeypatch.setattr(registry, "_hub_reachable", lambda timeout_s=3.0: False)
    info = {"alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en", "ms_hub_url": "llamafactory/alpaca_en"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    entry = resolve_dataset("alpaca_en", tmp_path)
    pytest.importorskip("datasets")
    with pytest.raises(DataError) as e:
        read_entry(entry)
    assert "'alpaca_en' is the hub dataset 'llamafactory/alpaca_en' (hf_hub_url" in e.value.message
    assert "not found locally" not in e.value.message and '"file_name"' in e.value.hint
