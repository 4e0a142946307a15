"""`expertkit eval engine=openai | vllm`: the answers generated through the engines `serve` uses.

engine=openai against a live expertkit server of the tiny model (conftest's `live_server`: the identity adapter as
`sail` beside the base) gives the same greedy answers as engine=transformers running the same model here; a wrong
base_url, a missing vLLM and contradictory keys are one clear error each. engine=vllm for real is in
tests/engine/test_vllm_live.py (it needs vLLM's CPU build).
"""

from __future__ import annotations

import json

import pytest
from test_eval_run import QA, config_for

from expertkit.cli.main import main
from expertkit.core.config import load_config
from expertkit.core.errors import ConfigError
from expertkit.evaluate.config import EvalConfig
from expertkit.evaluate.run import run

LIVE_KEY = "sk-test-local"  # the key of conftest.py's live server


@pytest.fixture
def eval_file(tmp_path):
    path = tmp_path / "held_out.jsonl"
    path.write_text("".join(json.dumps({"question": q, "reference": r}, ensure_ascii=False) + "\n" for q, r in QA))
    return path


def answers(result, name: str) -> dict[str, str]:
    return {row["question"]: row["answer"] for row in result.summary["predictions"][name]}


def test_openai_engine_gives_the_local_engines_greedy_answers(
    live_server, tiny_model, identity_adapter, eval_file, tmp_path
):
    _, url = live_server
    local = run(config_for(tiny_model, identity_adapter, eval_file, tmp_path / "local", metrics="rouge-l,contains"))
    keys = {
        "eval_file": str(eval_file),
        "engine": "openai",
        "base_url": url + "/v1",
        "api_key": LIVE_KEY,
        "model": f"sail,{tiny_model.name}",
        "output_dir": str(tmp_path / "remote"),
        "max_new_tokens": 24,
        "probe": False,
        "concurrency": 4,
    }
    remote = run(load_config(EvalConfig, None, keys))
    assert list(remote.summary["candidates"]) == ["sail", tiny_model.name]
    assert answers(remote, "sail") == answers(local, "tuned")
    assert answers(remote, tiny_model.name) == answers(local, "base")
    assert answers(remote, "sail")["Who are you?"] == QA[0][1]  # the identity adapter's trained answer
    sail = remote.summary["candidates"]["sail"]
    assert (
        sail["errors"] == 0 and sail["metrics"]["rouge-l"] == local.summary["candidates"]["tuned"]["metrics"]["rouge-l"]
    )
    assert sail["notes"] == ["eval_loss skipped: an endpoint gives no likelihoods (needs model_name_or_path)"]
    assert sail["spec"]["api_base"] == url + "/v1" and "api_key" not in sail["spec"]


def test_a_candidate_names_a_served_model_on_the_evals_base_url(live_server, eval_file, tmp_path):
    _, url = live_server
    yaml = tmp_path / "eval.yaml"
    yaml.write_text(
        f"eval_file: {eval_file}\nbase_url: {url}/v1\napi_key: {LIVE_KEY}\nprobe: false\nmax_new_tokens: 24\n"
        f"output_dir: {tmp_path / 'out'}\ncandidates:\n  - {{name: tuned, model: sail}}\n"
    )
    assert main(["eval", str(yaml), "metrics=contains"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions" / "tuned.jsonl").read_text().splitlines()]
    assert {r["question"]: r["answer"] for r in rows}["Who are you?"] == QA[0][1]


def test_an_unreachable_base_url_is_one_error_naming_it(eval_file, tmp_path, capsys):
    from live_server import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    code = main(["eval", f"eval_file={eval_file}", "engine=openai", f"base_url={url}", f"output_dir={tmp_path / 'o'}"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"cannot reach the OpenAI-compatible server at {url}" in err and "expertkit serve" in err
    assert "Traceback" not in err


def test_a_wrong_key_is_refused_before_any_answer(live_server, eval_file, tmp_path, capsys):
    _, url = live_server
    code = main([
        "eval", f"eval_file={eval_file}", "engine=openai", f"base_url={url}/v1", "api_key=sk-wrong",
        f"output_dir={tmp_path / 'o'}",
    ])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert f"{url}/v1 refused the key (401)" in err and "api_key" in err


@pytest.mark.parametrize("key", ["engine=vllm", "infer_backend=vllm"])  # LLaMA-Factory's name for it
def test_engine_vllm_without_vllm_says_how_to_get_it(tiny_model, eval_file, tmp_path, capsys, key):
    from expertkit.engine.vllm_engine import vllm_installed

    if vllm_installed():
        pytest.skip("vLLM is installed here: tests/engine/test_vllm_live.py runs engine=vllm for real")
    code = main([
        "eval", f"eval_file={eval_file}", f"model_name_or_path={tiny_model}", key,
        f"output_dir={tmp_path / 'o'}", "probe=false",
    ])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "engine=vllm needs vLLM, which is not installed here" in err and "pip install vllm" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ({"engine": "openai"}, "engine=openai needs base_url"),
        ({"engine": "openai", "base_url": "http://127.0.0.1:1/v1", "model_name_or_path": "m"}, "loads no model here"),
        ({"model_name_or_path": "m", "model": "x"}, "give engine=openai base_url"),
        ({"candidates": [{"name": "a", "model": "x"}]}, "give one, or the eval's base_url"),
        ({"candidates": [{"name": "a", "model_name_or_path": "m", "engine": "openai"}]}, "runs no model_name_or_path"),
        (
            {
                "engine": "openai",
                "base_url": "http://127.0.0.1:1/v1",
                "candidates": [{"name": "a", "model_name_or_path": "m"}],
            },
            "give them engine: transformers",
        ),
    ],
)
def test_contradictory_engine_keys_are_refused(keys, says):
    with pytest.raises(ConfigError, match=says):
        load_config(EvalConfig, None, {"eval_file": "x.jsonl", **keys})


def test_engines_per_candidate_and_what_each_candidate_runs_on():
    config = load_config(EvalConfig, None, {
        "eval_file": "x.jsonl", "engine": "vllm", "base_url": "http://127.0.0.1:1/v1", "api_key": "k",
        "candidates": [
            {"name": "fast", "model_name_or_path": "m"},
            {"name": "slow", "model_name_or_path": "m", "engine": "transformers"},
            {"name": "remote", "model": "x"},
        ],
    })  # fmt: skip
    fast, slow, remote = config.resolved_candidates()
    assert (fast.engine, slow.engine) == ("vllm", "transformers")
    assert (remote.api_base, remote.api_key, config.engine_of(remote)) == ("http://127.0.0.1:1/v1", "k", "openai")
    from expertkit.evaluate.answering import engine_groups, in_flight, spec_hash

    groups = engine_groups(config.resolved_candidates(), config)
    assert [(g.engine, list(served)) for g, served in groups] == [
        ("vllm", ["fast"]), ("transformers", ["slow"]), ("openai", ["remote"]),
    ]  # fmt: skip
    assert groups[0][0].max_concurrency == 256 and groups[1][0].max_concurrency == 16
    assert in_flight(config, fast, 1000) == 1000 and in_flight(config, slow, 1000) == 16  # vLLM gets the whole set
    # answers made before `engine` was a key (transformers) still resume: the spec as it was then
    import hashlib

    before = {"candidate": slow.model_dump(mode="json", exclude={"api_key", "engine"}), "max_new_tokens": 256,
              "temperature": 0.0, "seed": 42}  # fmt: skip
    assert spec_hash(config, slow, []) == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert spec_hash(config, fast, []) != spec_hash(config, fast.model_copy(update={"engine": None}), [])
