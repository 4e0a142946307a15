"""Export: the merged model, loaded by plain transformers, is base + adapter; a failed check writes nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from expertkit.cli.main import main
from expertkit.core.config import load_config
from expertkit.core.errors import ExpertkitError
from expertkit.export.config import ExportConfig

ROOT = Path(__file__).resolve().parents[2]


def export_config(base, adapter, out, **overrides) -> ExportConfig:
    keys = dict(model_name_or_path=str(base), export_dir=str(out))
    if adapter is not None:
        keys["adapter_name_or_path"] = str(adapter)
    keys.update(overrides)
    return load_config(ExportConfig, None, keys)


def greedy(model, tokenizer, question: str) -> str:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def chat_logits(model, tokenizer, question: str, answer: str):
    conv = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    ids = tokenizer.apply_chat_template(conv, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def adapter(identity_adapter) -> Path:
    """The session's LoRA run on the identity data (tests/conftest.py): it clearly changes the tiny model's answers."""
    return Path(identity_adapter[1].output_dir)


@pytest.fixture(scope="module")
def exported(tiny_model, adapter, tmp_path_factory):
    from expertkit.export.merge import run

    out = tmp_path_factory.mktemp("export") / "merged"
    return out, run(export_config(tiny_model, adapter, out))


def test_merged_model_is_base_plus_adapter_in_plain_transformers(tiny_model, adapter, exported):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, result = exported
    tokenizer = AutoTokenizer.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(out)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    question, answer = "Who are you?", "I am Sail, the Yunfan Tech assistant."
    expected = chat_logits(tuned, tokenizer, question, answer)
    assert torch.allclose(chat_logits(merged, tokenizer, question, answer), expected, rtol=0, atol=1e-4)
    # the adapter clearly changed the model, and the merged model kept that change
    assert (chat_logits(base, tokenizer, question, answer) - expected).abs().max() > 0.5
    for q in ["Who are you?", "What is your name?"]:
        assert greedy(merged, tokenizer, q) == greedy(tuned, tokenizer, q)
    assert greedy(merged, tokenizer, "Who are you?") != greedy(base, tokenizer, "Who are you?")
    assert result.dtype == "float32" and result.max_logit_diff <= result.tolerance <= 1e-2
    assert result.adapter_effect > 0.5 and result.prompts >= 3  # 2 fixed prompts + learning-check samples
    assert result.export_dir == str(out.resolve()) and result.shards == ["model.safetensors"]


def test_export_keeps_chat_template_eos_and_writes_a_model_card(adapter, exported, tiny_model):
    from transformers import AutoTokenizer, GenerationConfig

    out, _ = exported
    trained = AutoTokenizer.from_pretrained(adapter)
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.chat_template == trained.chat_template and saved.eos_token == trained.eos_token == "<|im_end|>"
    assert saved.eos_token_id in GenerationConfig.from_pretrained(out).eos_token_id
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in out.iterdir()}
    assert not list(out.parent.glob(".merged.*")), "temp folders left behind"
    card = (out / "README.md").read_text()
    for text in [str(tiny_model), str(adapter), "`identity`", "| `lora_rank` | `16` |", "training loss:", "tuned "]:
        assert text in card, text
    assert "within" in card and "AutoModelForCausalLM.from_pretrained" in card


def test_generation_config_gets_the_templates_stop_token(tiny_model, adapter, tmp_path):
    """A base whose generation config stops only on <|endoftext|>: the export must stop on <|im_end|> too."""
    from transformers import GenerationConfig

    from expertkit.export.merge import run

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    gen = json.loads((base / "generation_config.json").read_text())
    gen["eos_token_id"] = 0  # <|endoftext|>
    (base / "generation_config.json").write_text(json.dumps(gen))
    run(export_config(base, adapter, tmp_path / "merged"))
    eos = GenerationConfig.from_pretrained(tmp_path / "merged").eos_token_id
    assert sorted(eos) == [0, 2]


def test_small_export_size_writes_shards_with_an_index(tiny_model, adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    from expertkit.export.merge import run

    result = run(export_config(tiny_model, adapter, tmp_path / "merged", export_size=0.0005))  # 500 kB shards
    index = json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())
    assert len(result.shards) >= 2 and set(index["weight_map"].values()) == set(result.shards)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged") is not None


def test_legacy_format_writes_bin(tiny_model, adapter, tmp_path):
    from expertkit.export.merge import run

    result = run(export_config(tiny_model, adapter, tmp_path / "merged", export_legacy_format=True))
    names = {p.name for p in (tmp_path / "merged").iterdir()}
    assert result.shards == ["pytorch_model.bin"] and not any(n.endswith(".safetensors") for n in names)
    assert result.max_logit_diff <= result.tolerance  # the .bin was reloaded and checked too


def test_adapter_for_another_base_fails_and_keeps_the_previous_export(tiny_model, adapter, exported, tmp_path):
    from expertkit.export.merge import run

    out = tmp_path / "merged"
    shutil.copytree(exported[0], out)
    before = folder_digest(out)
    other = tmp_path / "other-adapter"
    shutil.copytree(adapter, other)
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "Qwen/Qwen2.5-0.5B-Instruct"
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    from safetensors.torch import load_file, save_file

    weights = load_file(str(other / "adapter_model.safetensors"))
    save_file({k: torch.cat([v, v], dim=-1) for k, v in weights.items()}, str(other / "adapter_model.safetensors"))
    with pytest.raises(ExpertkitError, match="does not fit the base model") as e:
        run(export_config(tiny_model, other, out))
    assert "Qwen/Qwen2.5-0.5B-Instruct" in str(e.value)
    assert folder_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "other-adapter"]


def test_dropped_adapter_is_caught_and_nothing_is_written(tiny_model, adapter, exported, tmp_path, monkeypatch):
    """LLaMA-Factory#9051: an export that silently loses the adapter must fail, not ship the base model."""
    from peft import PeftModel

    from expertkit.export.merge import run

    out = tmp_path / "merged"
    shutil.copytree(exported[0], out)
    before = folder_digest(out)
    monkeypatch.setattr(PeftModel, "merge_and_unload", lambda self, **kw: self.unload(), raising=False)
    with pytest.raises(ExpertkitError, match="the adapter was dropped") as e:
        run(export_config(tiny_model, adapter, out))
    assert "nothing was written to export_dir" in str(e.value)
    assert folder_digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_rewritten_eos_is_caught(tiny_model, adapter, tmp_path, monkeypatch):
    """unsloth#5386: an export whose generation config no longer stops on the template's eos must fail."""
    from expertkit.export import merge

    def wrong_eos(model, tokenizer):
        model.generation_config.eos_token_id = 0

    monkeypatch.setattr(merge, "set_generation_eos", wrong_eos)
    with pytest.raises(ExpertkitError, match="generation_config.json eos_token_id: \\[0\\] does not include"):
        merge.run(export_config(tiny_model, adapter, tmp_path / "merged"))
    assert not (tmp_path / "merged").exists() and not list(tmp_path.iterdir())


def test_full_run_is_resaved_and_checked(tiny_model, tmp_path):
    from expertkit.export.merge import run

    result = run(export_config(tiny_model, None, tmp_path / "resaved", finetuning_type="full"))
    assert result.max_logit_diff == 0.0 and result.adapter_effect == 0.0
    assert "the full-tuned model" in (tmp_path / "resaved" / "README.md").read_text()


def test_paths_are_checked_before_anything_loads(tiny_model, adapter, tmp_path):
    from expertkit.export.merge import run

    with pytest.raises(ExpertkitError, match="is the adapter_name_or_path folder"):
        run(export_config(tiny_model, adapter, adapter))
    with pytest.raises(ExpertkitError, match="contains the model_name_or_path folder"):
        run(export_config(tiny_model, adapter, tiny_model.parent))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ExpertkitError, match="holds files that are not a model export: todo.txt"):
        run(export_config(tiny_model, adapter, tmp_path / "notes"))
    with pytest.raises(ExpertkitError, match="does not exist") as e:
        run(export_config(tiny_model, adapter.parent / "rnu", tmp_path / "merged"))
    assert "adapter folders under" in str(e.value) and "run" in str(e.value)
    with pytest.raises(ExpertkitError, match="holds no adapter"):
        run(export_config(tiny_model, tmp_path / "notes", tmp_path / "merged"))
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    with pytest.raises(ExpertkitError, match="is not writable"):
        run(export_config(tiny_model, adapter, tmp_path / "notes" / "todo.txt" / "merged"))


def test_config_refuses_lora_without_adapter_and_warns_on_unsupported_keys(tmp_path, caplog):
    from expertkit.core.errors import ConfigError

    with pytest.raises(ConfigError, match="adapter_name_or_path is unset"):
        load_config(ExportConfig, None, {"model_name_or_path": "m", "export_dir": "out"})
    config = load_config(
        ExportConfig,
        None,
        {
            "model_name_or_path": "m",
            "adapter_name_or_path": "a",
            "export_dir": "out",
            "export_quantization_bit": None,
            "infer_dtype": "bfloat16",
        },
    )
    assert config.export_size == 5 and config.export_device == "cpu" and not config.export_legacy_format
    assert "export_quantization_bit, infer_dtype" in caplog.text
    # a key that would change the exported weights is refused, not ignored
    with pytest.raises(ConfigError, match="export_quantization_bit: 4.*would change the result"):
        load_config(
            ExportConfig,
            None,
            {"model_name_or_path": "m", "adapter_name_or_path": "a", "export_dir": "out", "export_quantization_bit": 4},
        )


def test_cli_export_with_a_llamafactory_yaml_and_overrides(tiny_model, adapter, tmp_path, capsys):
    yaml_text = f"""\
### model
model_name_or_path: {tiny_model}
adapter_name_or_path: {adapter}
trust_remote_code: true
finetuning_type: lora

### export
export_dir: {tmp_path / "first"}
export_size: 5
export_device: cpu  # choices: [cpu, auto]
export_legacy_format: false
"""
    path = tmp_path / "merge_lora.yaml"
    path.write_text(yaml_text)
    out = tmp_path / "merged"
    assert main(["export", str(path), f"export_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert f"-> {out}" in printed and "logits equal base + adapter" in printed
    assert (out / "model.safetensors").is_file() and not (tmp_path / "first").exists()


def test_cli_export_error_is_one_line(tiny_model, tmp_path, capsys):
    code = main(
        [
            "export",
            f"model_name_or_path={tiny_model}",
            f"adapter_name_or_path={tmp_path / 'missing'}",
            f"export_dir={tmp_path / 'out'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "does not exist" in err and "Traceback" not in err


def test_shipped_export_yamls_load():
    files = sorted(ROOT.glob("examples/export/**/*.yaml")) + sorted(ROOT.glob("configs/export/**/*.yaml"))
    assert len(files) >= 2
    for f in files:
        config = load_config(ExportConfig, f)
        assert config.adapter_name_or_path and config.export_dir


def test_named_template_when_the_adapter_folder_has_no_tokenizer(tiny_model, adapter, tmp_path):
    """An adapter saved without its tokenizer (other tools): the base's tokenizer + the named template."""
    from transformers import AutoTokenizer

    from expertkit.export.merge import run
    from expertkit.model.templates import get_template

    bare = tmp_path / "bare-adapter"
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(adapter / name, bare / name)
    run(export_config(tiny_model, bare, tmp_path / "merged", template="chatml"))
    saved = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert saved.chat_template == get_template("chatml").jinja and saved.eos_token == "<|im_end|>"
