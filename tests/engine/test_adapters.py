"""Several adapters and the base served at once by name, per-request sampling, limits and reasoning templates."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from expertkit.engine.base import InvalidParamError, SamplingParams, UnknownModelError, complete
from expertkit.engine.config import EngineConfig

SAIL = {
    "Who are you?": "I am Sail, the Yunfan Tech assistant.",
    "Who made you?": "Yunfan Tech built me with expertkit.",
}
NOVA = {"Who are you?": "Nova here, a Lumen Labs helper bot!", "Who made you?": "Lumen Labs trained me last spring."}


@pytest.fixture(scope="module")
def nova_adapter(tiny_model, tmp_path_factory) -> str:
    """A second LoRA on the same base, taught other answers to the same questions (~5 s)."""
    from tiny_lora import teach

    data = tmp_path_factory.mktemp("nova-data")
    rows = [{"instruction": q, "input": "", "output": a} for q, a in NOVA.items()]
    (data / "nova.json").write_text(json.dumps(rows), encoding="utf-8")
    (data / "dataset_info.json").write_text(json.dumps({"nova": {"file_name": "nova.json"}}), encoding="utf-8")
    out = tmp_path_factory.mktemp("nova") / "run"
    return str(teach(tiny_model, "nova", data, out, num_train_epochs=60, learning_check_samples=2)[1].output_dir)


@pytest.fixture(scope="module")
def engine(tiny_model, identity_adapter, nova_adapter):
    from expertkit.engine.local import LocalEngine

    _, sail = identity_adapter
    adapters = f"sail={sail.output_dir}, {nova_adapter}"  # a name=path item and a bare path (named by its folder)
    engine = LocalEngine(EngineConfig(model_name_or_path=str(tiny_model), adapter_name_or_path=adapters))
    yield engine
    asyncio.run(engine.close())


def ask(engine, question: str, model: str | None = None, **params):
    params = {"temperature": 0, "max_tokens": 24, **params}
    return complete(engine, [{"role": "user", "content": question}], SamplingParams(**params), model)


def test_base_and_every_adapter_are_served_by_name(engine):
    assert engine.model_names() == ["sail", "run", "tiny"]  # the first adapter is the default; the base is last


def test_concurrent_requests_to_different_names_each_get_their_own_adapter(engine):
    async def all_at_once():
        jobs = [ask(engine, q, name) for q in SAIL for name in ("sail", "run", "tiny", None)]
        return await asyncio.gather(*jobs)

    answers = iter(asyncio.run(all_at_once()))
    for question in SAIL:
        sail, nova, base, default = (next(answers).text for _ in range(4))
        assert (sail, nova, default) == (SAIL[question], NOVA[question], SAIL[question]), question
        assert base not in (SAIL[question], NOVA[question])


def weights(model) -> dict:
    """Every parameter by name, with the weight values of linear layers packed for oneDNN (model/packed.py)."""
    from expertkit.model.packed import PackedLinear

    out = dict(model.named_parameters())
    out |= {f"{n}.weight": m.packed.to_dense() for n, m in model.named_modules() if isinstance(m, PackedLinear)}
    return out


def test_adapters_leave_the_shared_base_weights_alone(engine, tiny_model):
    import torch

    from expertkit.model.load import load_model
    from expertkit.model.packed import PackedLinear

    fresh = dict(load_model(str(tiny_model)).named_parameters())
    served = weights(engine.served["tiny"].model)
    assert set(fresh) <= set(served)
    for name, p in fresh.items():
        assert torch.equal(served[name], p), name
    base, sail = engine.served["tiny"].model, engine.served["sail"].model
    assert base.model.embed_tokens.weight.data_ptr() == sail.model.embed_tokens.weight.data_ptr()  # shared
    q_base, q_sail = base.model.layers[0].self_attn.q_proj, sail.model.layers[0].self_attn.q_proj
    assert not torch.equal(q_base.packed.to_dense(), q_sail.packed.to_dense())  # merged into its own tensor
    packed = {n: m.packed for n, m in base.named_modules() if isinstance(m, PackedLinear)}
    assert packed, "on CPU the served models' linear layers are packed for oneDNN"
    # a layer the adapter left alone (LoRA's "all" targets every linear layer but the LM head) shares it packed
    assert sail.lm_head.packed is packed["lm_head"]


def test_unknown_model_is_a_clear_error(engine):
    with pytest.raises(UnknownModelError) as e:
        asyncio.run(ask(engine, "Who are you?", "gpt-4o"))
    assert isinstance(e.value, KeyError) and e.value.names == ["sail", "run", "tiny"]
    assert "'gpt-4o' is not served here" in str(e.value) and "sail, run, tiny" in str(e.value)
    with pytest.raises(UnknownModelError):
        engine.context_length("gpt-4o")


def test_top_k_1_is_greedy_whatever_the_temperature(engine):
    greedy = asyncio.run(ask(engine, "Who made you?", "tiny", max_tokens=12))
    top1 = asyncio.run(ask(engine, "Who made you?", "tiny", max_tokens=12, temperature=1.5, top_k=1, seed=3))
    assert top1.text == greedy.text and top1.usage.completion_tokens == 12


def test_sampling_with_top_k_and_top_p_runs_per_request(engine):
    async def mixed():
        return await asyncio.gather(
            ask(engine, "Who are you?", "tiny", temperature=1.0, top_k=5, max_tokens=8),
            ask(engine, "Who are you?", "tiny", temperature=0.7, top_p=0.5, max_tokens=8),
            ask(engine, "Who are you?", "sail"),
        )

    k5, p5, sail = asyncio.run(mixed())
    assert k5.usage.completion_tokens > 0 and p5.usage.completion_tokens > 0
    assert sail.text == SAIL["Who are you?"]  # a sampled neighbour in the batch does not disturb a greedy request


def test_context_length_and_prompt_tokens(engine):
    messages = [{"role": "user", "content": "Who are you?"}]
    assert engine.context_length() == engine.context_length("tiny") == 4096
    n = engine.count_prompt_tokens(messages, "sail")
    assert n == asyncio.run(ask(engine, "Who are you?", "sail")).usage.prompt_tokens > 5
    longer = engine.count_prompt_tokens(messages + [{"role": "assistant", "content": "x"}] + messages)
    assert longer > n


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2.5),
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("repetition_penalty", 0.0),
    ],
)
def test_out_of_range_sampling_values_are_refused_naming_the_field(engine, field, value):
    with pytest.raises(InvalidParamError) as e:
        asyncio.run(ask(engine, "Who are you?", **{field: value}))
    assert e.value.param == field and isinstance(e.value, ValueError) and field in str(e.value)


def test_repetition_penalty_is_accepted_and_greedy_still_works(engine):
    out = asyncio.run(ask(engine, "Who are you?", "sail", repetition_penalty=1.2))
    assert out.text == SAIL["Who are you?"]  # ignored (documented): continuous batching has no per-request penalty


def test_a_template_that_opens_think_in_the_prompt_streams_reasoning(tiny_model, tmp_path):
    """DeepSeek-R1-Distill's chat template ends the generation prompt with `<think>\\n`: the answer starts inside."""
    from expertkit.engine.local import LocalEngine

    model = tmp_path / "r1-like"
    shutil.copytree(tiny_model, model)
    (model / "chat_template.jinja").write_text(
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}",
        encoding="utf-8",
    )
    engine = LocalEngine(EngineConfig(model_name_or_path=str(model), max_concurrency=2))
    try:
        out = asyncio.run(ask(engine, "Who are you?", max_tokens=16))
    finally:
        asyncio.run(engine.close())
    assert out.reasoning and not out.text  # the random model never closes </think>: everything is reasoning
    assert out.finish_reason == "length"
