"""engine=vllm without vLLM: what we would ask vLLM for (sampling, LoRA requests, engine arguments), the prompts we
render for it (the local engine's, token for token), and the error a user gets where vLLM is not installed.

Nothing here runs vLLM (test_vllm_live.py does, where vLLM is installed: CI's vLLM step). The one test that builds
vLLM's own objects from our keywords runs only where vLLM is importable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from expertkit.core.errors import ExpertkitError
from expertkit.engine.base import SamplingParams
from expertkit.engine.config import EngineConfig
from expertkit.engine.factory import load_engine
from expertkit.engine.vllm_args import (
    LoraSpec,
    base_lora_source,
    compact_json,
    engine_args,
    engine_args_kwargs,
    lora_specs,
    max_lora_rank,
    token_logprobs,
    vllm_sampling_kwargs,
    zero_lora,
)
from expertkit.engine.vllm_engine import import_vllm, load_served

EOS = [2, 7]


def kwargs(**params) -> dict:
    return vllm_sampling_kwargs(SamplingParams(**params).validate(), EOS)


def test_defaults_map_to_vllms_neutral_values_and_our_end_tokens():
    assert kwargs() == {
        "n": 1,
        "max_tokens": 512,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,  # off, in vLLM as in ours
        "repetition_penalty": 1.0,
        "stop_token_ids": EOS,
        "detokenize": False,  # engine/answer.py detokenizes, as for the local engine
    }


@pytest.mark.parametrize("greedy", [{"temperature": 0.0}, {"temperature": 0.8, "top_k": 1}])
def test_greedy_is_vllms_temperature_zero_whatever_else_is_set(greedy):
    out = kwargs(top_p=0.5, seed=3, **greedy)
    assert (out["temperature"], out["top_k"], out["top_p"]) == (0.0, 0, 1.0)


def test_sampling_values_pass_through_and_stop_strings_stay_ours():
    out = kwargs(temperature=0.7, top_p=0.9, top_k=40, seed=11, repetition_penalty=1.3, max_tokens=64, stop=["\n\n"])
    assert {k: out[k] for k in ("temperature", "top_p", "top_k", "seed", "repetition_penalty", "max_tokens")} == {
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 11,
        "repetition_penalty": 1.3,
        "max_tokens": 64,
    }
    assert "stop" not in out  # answer.py cuts at stop strings and aborts the vLLM request


@pytest.mark.parametrize(
    ("params", "expected"),
    [({}, None), ({"logprobs": True}, 0), ({"logprobs": True, "top_logprobs": 5}, 5), ({"top_logprobs": 3}, None)],
)
def test_logprobs_ask_vllm_for_that_many_alternatives(params, expected):
    assert kwargs(**params).get("logprobs") == expected


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        (None, None),
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"json_object": True}),
        ({"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA}}, {"json": SCHEMA}),
        ({"type": "json_schema", "json_schema": {"name": "anything"}}, {"json_object": True}),
    ],
)
def test_json_modes_become_vllm_structured_outputs(response_format, expected):
    assert kwargs(response_format=response_format).get("structured_outputs") == expected


def adapter(path, r, **extra):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": r, **extra}), encoding="utf-8")
    return path


def test_adapters_become_lora_requests_named_as_served_with_ids_from_one(tmp_path):
    legal = adapter(tmp_path / "legal" / "lora", 8)
    support = adapter(tmp_path / "support", 24, rank_pattern={"q_proj": 64})
    config = EngineConfig(
        engine="vllm", model_name_or_path="models/qwen", adapter_name_or_path=f"legal={legal}, {support}"
    )
    specs = lora_specs(config.adapters())
    assert specs == [
        LoraSpec("legal", 1, str(legal.resolve()), 8),
        LoraSpec("support", 2, str(support.resolve()), 64),
    ]
    assert max_lora_rank(specs) == 64
    renamed = EngineConfig(**{**config.model_dump(), "served_model_name": "expert"})
    assert [(s.name, s.int_id) for s in lora_specs(renamed.adapters())] == [("expert", 1), ("support", 2)]


def test_lora_rank_rounds_up_to_a_value_vllm_accepts(tmp_path):
    assert max_lora_rank([LoraSpec("a", 1, "a", 24)]) == 32
    assert max_lora_rank([LoraSpec("a", 1, "a", 300)]) == 320
    assert max_lora_rank([LoraSpec("a", 1, "org/hub-adapter")]) == 16  # unknown: vLLM's default
    with pytest.raises(ExpertkitError, match="rank 600"):
        max_lora_rank([LoraSpec("a", 1, "a", 600)])


def test_a_hub_adapter_is_passed_by_id_and_folders_vllm_cannot_serve_are_refused_at_start(tmp_path):
    assert lora_specs({"sql": "org/llama-sql-lora"}) == [LoraSpec("sql", 1, "org/llama-sql-lora")]
    (tmp_path / "run").mkdir()
    with pytest.raises(ExpertkitError, match="not a LoRA adapter folder"):
        lora_specs({"run": str(tmp_path / "run")})
    tuned = adapter(tmp_path / "tuned", 8, modules_to_save=["embed_tokens", "lm_head"])
    with pytest.raises(ExpertkitError, match="whole modules \\(embed_tokens, lm_head\\)") as caught:
        lora_specs({"tuned": str(tuned)})
    assert "expertkit export" in str(caught.value)
    classifier = adapter(tmp_path / "classifier", 8, modules_to_save=["score"])
    assert lora_specs({"c": str(classifier)})[0].rank == 8


def test_engine_arguments_size_vllm_from_our_keys(tmp_path):
    config = EngineConfig(
        engine="vllm",
        model_name_or_path="Qwen/Qwen2.5-7B-Instruct",
        dtype="bfloat16",
        max_concurrency=64,
        gpu_memory_utilization=0.8,
        tensor_parallel_size=2,
        max_model_len=8192,
    )
    args = engine_args_kwargs(config, [])
    assert args == {
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "dtype": "bfloat16",
        "trust_remote_code": False,
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.8,
        "max_num_seqs": 64,
        "disable_log_stats": True,
        "max_model_len": 8192,
    }
    specs = [LoraSpec("a", 1, "a", 8), LoraSpec("b", 2, "b", 16)]
    with_loras = engine_args_kwargs(config, specs)
    assert {k: with_loras[k] for k in ("enable_lora", "max_loras", "max_lora_rank")} == {
        "enable_lora": True,
        "max_loras": 2,
        "max_lora_rank": 16,
    }
    assert "max_model_len" not in engine_args_kwargs(EngineConfig(engine="vllm", model_name_or_path="m"), [])


def test_vllm_config_adds_vllms_own_arguments_last_and_unknown_ones_are_named():
    from dataclasses import dataclass

    config = EngineConfig(
        engine="vllm", model_name_or_path="m", vllm_config={"enforce_eager": True, "max_num_seqs": 256}
    )
    args = engine_args_kwargs(config, [])
    assert args["enforce_eager"] is True and args["max_num_seqs"] == 256  # the user's value wins over ours

    @dataclass
    class FakeArgs:  # vLLM's AsyncEngineArgs is a dataclass of its arguments
        model: str = ""
        enforce_eager: bool = False

    fake = SimpleNamespace(AsyncEngineArgs=FakeArgs)
    assert engine_args(fake, {"model": "m", "enforce_eager": True}) == FakeArgs("m", True)
    with pytest.raises(ExpertkitError, match="no engine argument 'enforce_eagr', 'gpu_util'"):
        engine_args(fake, {"model": "m", "enforce_eagr": True, "gpu_util": 0.5})


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({}, "model_name_or_path is required"),
        ({"model_name_or_path": "m", "gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"model_name_or_path": "m", "tensor_parallel_size": 0}, "tensor_parallel_size"),
        ({"model_name_or_path": "models/qwen", "adapter_name_or_path": "saves/qwen"}, "share a name"),
    ],
)
def test_vllm_config_mistakes_are_config_errors(keys, message):
    with pytest.raises(ValidationError, match=message):
        EngineConfig(engine="vllm", **keys)


CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "Sail."},
    {"role": "user", "content": "你是谁？"},
]
TOOLS = [
    {
        "type": "function",
        "function": {"name": "weather", "description": "Weather now", "parameters": {"type": "object"}},
    }
]


def test_prompts_are_the_local_engines_token_for_token(engine, identity_adapter, tiny_model):
    """The same served names, chat templates (the adapter's own tokenizer), tools, raw prompts and end tokens."""
    from expertkit.engine.loading import RawPrompt

    _, result = identity_adapter
    config = EngineConfig(
        engine="vllm",
        model_name_or_path=str(tiny_model),
        adapter_name_or_path=result.output_dir,
        served_model_name="sail",
    )
    served = load_served(config, lora_specs(config.adapters()))
    assert list(served) == engine.model_names() == ["sail", "tiny"]
    assert served["sail"].lora == LoraSpec("sail", 1, str(Path(result.output_dir).resolve()), 16)
    assert served["tiny"].lora is None and served["tiny"].model is None
    for name, ours in served.items():
        assert ours.prompt_ids(CONVERSATION) == engine.prompt_ids(CONVERSATION, name)
        assert ours.prompt_ids(CONVERSATION, TOOLS) == engine.prompt_ids(CONVERSATION, name, TOOLS)
        assert ours.prompt_ids(RawPrompt("Once upon")) == engine.prompt_ids(RawPrompt("Once upon"), name)
        assert ours.eos_ids == engine.pick(name).eos_ids


def test_a_prompt_is_rendered_once_for_its_context_check_and_its_request(tiny_model):
    """The server counts a prompt's tokens, then sends it: the template renders it once (VllmServed.rendered)."""
    from expertkit.engine.loading import RawPrompt, prompt_ids, text_ids

    config = EngineConfig(engine="vllm", model_name_or_path=str(tiny_model))
    served = load_served(config, [])["tiny"]
    expected = prompt_ids(served.tokenizer, CONVERSATION)
    with_tools = prompt_ids(served.tokenizer, CONVERSATION, TOOLS)
    renders = []
    template = served.tokenizer.apply_chat_template
    served.tokenizer.apply_chat_template = lambda *a, **k: renders.append(1) or template(*a, **k)
    first = served.prompt_ids(CONVERSATION)
    first.append(-1)  # the caller's copy: the kept rendering does not change
    assert served.prompt_ids([*CONVERSATION]) == served.prompt_ids(CONVERSATION, None) == expected
    assert len(renders) == 1
    assert served.prompt_ids(CONVERSATION, TOOLS) == with_tools and len(renders) == 2
    text = CONVERSATION[0]["content"]
    assert served.text_ids(text) == served.prompt_ids(RawPrompt(text)) == text_ids(served.tokenizer, text)
    for i in range(100):  # only the last ones are kept
        served.prompt_ids([{"role": "user", "content": f"question {i}"}])
    assert 0 < len(served.rendered) <= 64


def test_vllm_logprobs_become_ours_best_first_without_the_end_token(engine):
    tokenizer = engine.tokenizer
    from expertkit.engine.json_output import Vocabulary

    vocab = Vocabulary.of(tokenizer, len(tokenizer))
    ids = tokenizer("Sail here", add_special_tokens=False)["input_ids"]
    eos = engine.eos_ids[0]

    def position(chosen, *others):  # vLLM's {token id: Logprob(logprob, rank)}: the chosen one, then the top ones
        return {t: SimpleNamespace(logprob=lp, rank=None) for t, lp in (chosen, *others)}

    assert len(ids) >= 2 and not {100, 101} & {*ids, eos}
    positions = [position((ids[0], -0.2), (100, -1.9), (ids[0], -0.2))]  # the chosen token is the best
    positions += [position((t, -3.0), (100, -0.1), (101, -2.0)) for t in ids[1:]]  # ... or not among the best
    positions.append(position((eos, -0.01)))
    out = token_logprobs(tokenizer, vocab, [*ids, eos], positions, top=2, eos={eos})
    assert len(out) == len(ids)  # none for the end-of-answer token
    assert (out[0].token, out[0].logprob) == (tokenizer.decode([ids[0]]), -0.2)
    assert [t.logprob for t in out[1].top] == [-0.1, -2.0]  # the chosen token (-3.0) is not among the best two
    assert out[1].bytes == list(tokenizer.decode([ids[1]]).encode("utf-8"))
    assert token_logprobs(tokenizer, vocab, ids, positions, top=0, eos=set())[1].top == []


def test_without_vllm_chat_says_what_to_install_without_a_traceback(monkeypatch, capsys):
    from expertkit.cli.main import main

    monkeypatch.setitem(sys.modules, "vllm", None)  # not importable, even where it is installed
    assert main(["chat", "engine=vllm", "model_name_or_path=Qwen/Qwen2.5-0.5B-Instruct"]) == 1
    err = capsys.readouterr().err
    assert "engine=vllm needs vLLM, which is not installed here" in err
    assert "pip install vllm" in err and "engine=transformers" in err
    assert "Traceback" not in err


def test_a_broken_vllm_install_is_reported_as_such(monkeypatch):
    import expertkit.engine.vllm_engine as vllm_engine

    def broken():
        raise ImportError("libcudart.so.12: cannot open shared object file", name="vllm._C")

    monkeypatch.setattr(vllm_engine, "vllm_parts", broken)
    monkeypatch.setattr(vllm_engine, "vllm_installed", lambda: True)
    with pytest.raises(ExpertkitError, match="vLLM is installed but does not import .*libcudart") as caught:
        load_engine(EngineConfig(engine="vllm", model_name_or_path="m"))
    assert "pip install vllm" in str(caught.value)


def test_our_keywords_build_vllms_own_objects(tmp_path, tiny_model):
    """Only where vLLM is importable (CI's vLLM step, a GPU machine): vLLM accepts every keyword we build."""
    pytest.importorskip("vllm")
    v = import_vllm()
    for params in [
        SamplingParams(),
        SamplingParams(temperature=0.0, top_k=1),
        SamplingParams(temperature=0.7, top_k=40, top_p=0.9, seed=3, repetition_penalty=1.2, logprobs=True),
        SamplingParams(response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}),
    ]:
        out = vllm_sampling_kwargs(params, EOS)
        name, cls = v.structured
        if "structured_outputs" in out:
            out[name] = cls(**out.pop("structured_outputs"))
        built = v.SamplingParams(output_kind=v.RequestOutputKind.DELTA, **out)
        assert built.stop_token_ids == EOS and built.detokenize is False
    spec = lora_specs({"legal": str(adapter(tmp_path / "legal", 8))})[0]
    assert v.LoRARequest(spec.name, spec.int_id, spec.path).lora_int_id == 1
    config = EngineConfig(engine="vllm", model_name_or_path=str(tiny_model), max_model_len=2048)
    args = engine_args(v, engine_args_kwargs(config, [spec]))
    assert (args.enable_lora, args.max_lora_rank, args.max_model_len) == (True, 8, 2048)
    assert v.prompt_of([1, 2, 3])["prompt_token_ids"] == [1, 2, 3]


def test_the_zero_lora_for_the_base_keeps_the_modules_and_zeroes_every_b(tmp_path):
    """vLLM's CPU build serves the base through it (docs/engine.md): B = 0 makes the LoRA delta B @ A nothing."""
    import torch
    from safetensors.torch import load_file, save_file

    hub = LoraSpec("hub", 1, "someone/adapter")  # no local weights: no zero LoRA from it
    legal = adapter(tmp_path / "legal", 8, target_modules=["q_proj"])
    a, b = torch.randn(8, 64), torch.randn(64, 8)
    save_file({"m.q_proj.lora_A.weight": a, "m.q_proj.lora_B.weight": b}, str(legal / "adapter_model.safetensors"))
    spec = lora_specs({"legal": str(legal)})[0]
    assert base_lora_source([hub]) is None and base_lora_source([hub, spec]) == spec
    zero = zero_lora(spec, tmp_path / "zero")
    assert (zero.name, zero.rank) == ("expertkit-base", 8) and zero.int_id not in (1, 2)
    weights = load_file(str(tmp_path / "zero" / "adapter_model.safetensors"))
    assert torch.equal(weights["m.q_proj.lora_A.weight"], a)
    assert not weights["m.q_proj.lora_B.weight"].any()
    config = json.loads((tmp_path / "zero" / "adapter_config.json").read_text())
    assert config == {"r": 8, "target_modules": ["q_proj"]}
    assert torch.equal(load_file(str(legal / "adapter_model.safetensors"))["m.q_proj.lora_B.weight"], b)  # untouched


def test_vllm_json_is_compact_unless_vllm_config_says_otherwise():
    """vLLM's JSON grammars allow endless whitespace (a small model writes newlines up to max_tokens)."""
    from dataclasses import dataclass

    @dataclass
    class Config:  # stands for vllm.config.StructuredOutputsConfig
        backend: str = "auto"
        disable_any_whitespace: bool = False

    v = SimpleNamespace(StructuredOutputsConfig=Config)
    assert compact_json(v, {"model": "m"})["structured_outputs_config"] == Config("xgrammar", True)
    own = compact_json(v, {"structured_outputs_config": {"backend": "guidance"}})["structured_outputs_config"]
    assert own == Config("guidance", False)  # the user's vllm_config wins, as a dict or as vLLM's object
    assert compact_json(v, {"structured_outputs_config": own})["structured_outputs_config"] is own
    assert compact_json(SimpleNamespace(StructuredOutputsConfig=None), {"model": "m"}) == {"model": "m"}
