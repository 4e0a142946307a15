"""model/packed.py: linear layers packed for oneDNN on CPU give the plain model's answers, and unpack exactly."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from expertkit.model.packed import PackedLinear, has_packed, pack_linears, packable, unpack_linears  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


def load(path, dtype=torch.float32):
    from expertkit.model.load import load_model

    return load_model(str(path), dtype).eval()


def test_packed_model_gives_the_same_logits_and_greedy_tokens(tiny_model):
    plain, packed = load(tiny_model), load(tiny_model)
    assert packable(packed)
    linears = sum(type(m) is torch.nn.Linear for m in packed.modules())
    assert pack_linears(packed) == linears and has_packed(packed) and not has_packed(plain)
    ids = torch.tensor([[3, 17, 42, 9, 5, 11, 60, 8]])
    with torch.inference_mode():
        assert torch.allclose(plain(ids).logits, packed(ids).logits, atol=1e-4, rtol=1e-4)
        for batch in (ids, ids.repeat(4, 1)):  # one row, and several rows in one step (the batching path)
            want = plain.generate(batch, max_new_tokens=12, do_sample=False)
            assert torch.equal(packed.generate(batch, max_new_tokens=12, do_sample=False), want)


def test_unpack_gives_back_the_exact_weights_and_repacking_shares_them(tiny_model):
    plain, model = load(tiny_model), load(tiny_model)
    pack_linears(model)
    before = {n: m.packed for n, m in model.named_modules() if isinstance(m, PackedLinear)}
    back = unpack_linears(model)
    assert not has_packed(model) and len(back) == len(before)
    for name, p in plain.named_parameters():
        assert torch.equal(model.get_parameter(name), p), name
    model.model.layers[0].mlp.up_proj.weight = torch.nn.Parameter(plain.model.layers[0].mlp.up_proj.weight.clone())
    pack_linears(model, reuse=back)  # the layer given a new weight is packed anew, the others reuse theirs
    after = {n: m.packed for n, m in model.named_modules() if isinstance(m, PackedLinear)}
    assert after.keys() == before.keys()
    assert [n for n in after if after[n] is not before[n]] == ["model.layers.0.mlp.up_proj"]


def test_layers_sharing_a_weight_share_one_packed_tensor():
    shared = torch.nn.Linear(8, 8, bias=False)
    model = torch.nn.Sequential(shared, torch.nn.ReLU(), torch.nn.Linear(8, 8))
    model.append(torch.nn.Linear(8, 8, bias=False))
    model[3].weight = shared.weight  # tied, as an LM head to its embeddings
    assert pack_linears(model) == 3 and model[0].packed is model[3].packed
    x = torch.randn(2, 8)
    out = model(x)
    assert out.shape == (2, 8) and torch.isfinite(out).all()


def test_switched_off_or_not_on_cpu_float_nothing_is_packed(tiny_model, monkeypatch):
    model = load(tiny_model)
    monkeypatch.setenv("EXPERTKIT_SPEED_OFF", "rows,packed")
    assert not packable(model)
    monkeypatch.delenv("EXPERTKIT_SPEED_OFF")
    assert not packable(load(tiny_model, torch.float16))  # oneDNN's fp16 needs instructions most CPUs lack
    bf16 = load(tiny_model, torch.bfloat16)
    assert packable(bf16) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_the_served_model_is_packed_and_its_state_dict_is_the_plain_one(tiny_model):
    from expertkit.engine.config import EngineConfig
    from expertkit.engine.loading import load_base_model

    model = load_base_model(EngineConfig(model_name_or_path=str(tiny_model)))
    assert has_packed(model)
    assert not any("packed" in k for k in model.state_dict())  # non-persistent: never saved
