"""A request alone on its model decodes on the direct path (answer.SoloJob) and hands over to continuous batching
when a second arrives: either way its greedy tokens are model.generate's, on the real tiny model."""

from __future__ import annotations

import asyncio
import threading

from expertkit.engine.answer import SoloJob
from expertkit.engine.base import Delta, SamplingParams

HI = [{"role": "user", "content": "Hi"}]


def generate(engine, messages: list[dict], max_tokens: int) -> tuple[str, int]:
    """model.generate's greedy answer: its text and token count (the end token counts, as in usage)."""
    import torch

    served = engine.pick("tiny")
    prompt = engine.prompt_ids(messages, "tiny")
    with torch.inference_mode():
        out = served.model.generate(
            torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False, eos_token_id=served.eos_ids
        )
    return served.tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True), out.shape[1] - len(prompt)


async def answer(engine, messages: list[dict], max_tokens: int) -> Delta:
    out = Delta()
    async for d in engine.stream(messages, SamplingParams(temperature=0, max_tokens=max_tokens), "tiny"):
        out.extend(d)
    return out


def test_a_lone_request_decodes_on_the_direct_path_with_generates_tokens(engine, monkeypatch):
    manager = engine.pick("tiny").manager
    batched = []
    monkeypatch.setattr(manager, "add_request", lambda *a, **k: batched.append(a))  # nothing should reach it
    lone = asyncio.run(answer(engine, HI, 24))
    assert (lone.text, lone.usage.completion_tokens) == generate(engine, HI, 24)
    assert batched == []
    assert engine.pick("tiny").running == 0 and engine.pick("tiny").solo is None


def test_a_request_joined_mid_decode_hands_over_and_keeps_generates_tokens(engine, monkeypatch):
    """The lone request is held after its 5th token until a second request has arrived: it must then finish in
    continuous batching (the manager gets its prompt + those 5 tokens) with the same tokens as generate."""
    import expertkit.engine.answer as answer_module

    held, release = threading.Event(), threading.Event()
    real_decode = answer_module.decode

    def holding(model, tokenizer, prompt, params, eos_ids, emit, cancelled):
        def emit_then_hold(step):
            emit(step)
            if len(step.tokens) == 5:
                held.set()
                release.wait(30)

        real_decode(model, tokenizer, prompt, params, eos_ids, emit_then_hold, cancelled)

    monkeypatch.setattr(answer_module, "decode", holding)
    served = engine.pick("tiny")
    prompts = []
    add_request = served.manager.add_request
    monkeypatch.setattr(
        served.manager, "add_request", lambda ids, **k: (prompts.append(len(ids)), add_request(ids, **k))
    )
    other = [{"role": "user", "content": "Tell me a story"}]

    async def joined():
        first = asyncio.create_task(answer(engine, HI, 40))
        assert await asyncio.to_thread(held.wait, 30)
        assert isinstance(served.solo, SoloJob)
        second = asyncio.create_task(answer(engine, other, 12))
        while served.running < 2:  # the second has registered: the first is handing over
            await asyncio.sleep(0.01)
        release.set()
        return await asyncio.gather(first, second)

    first, second = asyncio.run(joined())
    assert (first.text, first.usage.completion_tokens) == generate(engine, HI, 40)
    assert (second.text, second.usage.completion_tokens) == generate(engine, other, 12)
    assert sorted(prompts) == sorted([len(engine.prompt_ids(other, "tiny")), len(engine.prompt_ids(HI, "tiny")) + 5])
    assert served.running == 0 and served.solo is None


def test_on_cpu_a_lone_request_decodes_in_its_models_batching_thread_on_every_core(engine, monkeypatch):
    """engine/cpu_threads.py: the first model to decode gets the cores for its batching loop's thread, and the direct
    path runs in it; the own loop (a seeded sample) decodes on one core in the decode pool."""
    import pytest
    import torch

    import expertkit.engine.answer as answer_module
    from expertkit.engine import cpu_threads

    if not engine.cores:
        pytest.skip("on a GPU the engine leaves threads alone")
    monkeypatch.setattr(cpu_threads, "_holder", [])  # as in a fresh process: nobody holds the cores yet
    served, seen, real = engine.pick("tiny"), [], answer_module.decode
    served.lane.placed = False

    def recording(*args):
        seen.append((threading.current_thread(), torch.get_num_threads()))
        real(*args)

    monkeypatch.setattr(answer_module, "decode", recording)
    assert (asyncio.run(answer(engine, HI, 8))).usage.completion_tokens == 8
    assert seen == [(served.manager._generation_thread, engine.cores)]

    async def seeded():
        async for _ in engine.stream(HI, SamplingParams(temperature=0.9, seed=7, max_tokens=4), "tiny"):
            pass

    asyncio.run(seeded())
    assert seen[1][0].name.startswith("expertkit-decode") and seen[1][1] == 1
    # what fails in the lane reaches its submitter, and the batching loop goes on
    with pytest.raises(ZeroDivisionError):
        served.lane.submit(lambda: 1 / 0).result(timeout=30)
    assert (asyncio.run(answer(engine, HI, 6))).usage.completion_tokens == 6


def test_the_first_thread_to_decode_claims_the_cores_until_it_ends(monkeypatch):
    from expertkit.engine import cpu_threads

    monkeypatch.setattr(cpu_threads, "_holder", [])
    claims, leave = {}, threading.Event()

    def decoder(name: str, stay: bool):
        claims[name] = (cpu_threads.claim_cores(), cpu_threads.claim_cores())  # asking again changes nothing
        if stay:
            leave.wait(30)

    first = threading.Thread(target=decoder, args=("first", True))
    first.start()
    while "first" not in claims:
        threading.Event().wait(0.01)
    second = threading.Thread(target=decoder, args=("second", False))
    second.start(), second.join()
    leave.set(), first.join()
    third = threading.Thread(target=decoder, args=("third", False))  # the holder has ended: the cores are free
    third.start(), third.join()
    assert claims == {"first": (True, True), "second": (False, False), "third": (True, True)}
