"""`expertkit promote`: the gate through a real `expertkit eval` process on the tiny model. The identity adapter
(taught the eval set's answers) beats an untrained adapter (the base's answers) and is promoted; the other way round
it is refused with the threshold and the margin; canary adds an arm; rollback restores; another base is refused."""

from __future__ import annotations

import shutil

import pytest
import yaml
from gate_setup import read_log, untrained_adapter, write_eval, write_models

from expertkit.cli.main import main


@pytest.fixture(scope="module")
def worse(tiny_model, tmp_path_factory):
    return untrained_adapter(tiny_model, tmp_path_factory.mktemp("worse") / "round0")


@pytest.fixture(scope="module")
def better(identity_adapter):
    return identity_adapter[1].output_dir


@pytest.fixture(scope="module")
def gate_eval(tmp_path_factory):
    """One eval folder for the module: a second gate with the same two models resumes its answers."""
    folder = tmp_path_factory.mktemp("gate")
    return write_eval(folder), folder / "out"


def promote(models, candidate, gate_eval, *keys):
    path, out = gate_eval
    return main(["promote", f"candidate={candidate}", "alias=expert", f"models={models}", f"eval={path}",
                 f"output_dir={out}", "metrics=rouge-l,contains", *keys])  # fmt: skip


def test_a_better_candidate_is_promoted_logged_and_rolled_back(tmp_path, tiny_model, worse, better, gate_eval, capsys):
    models = write_models(tmp_path / "models.yaml", tiny_model, worse)
    assert promote(models, better, gate_eval) == 0
    err = capsys.readouterr().err
    assert "promoted: expert -> run" in err
    served = yaml.safe_load(models.read_text())
    assert served["aliases"] == {"expert": "run"}
    assert served["models"]["run"] == {"adapter_name_or_path": str(better)}  # the file's base, not repeated
    [entry] = read_log(models)
    assert entry["decision"] == "promoted" and entry["user"] and entry["time"]
    assert entry["previous_aliases"] == {"expert": "round0"} and entry["new_aliases"] == {"expert": "run"}
    rouge = entry["scores"]["rouge-l"]
    assert rouge["candidate"] > rouge["served"] + 30 and rouge["ok"]
    assert "probe" in entry["scores"] and entry["thresholds"]["max_forgetting_drop"] == 5.0
    assert entry["report"].endswith("report.html")

    assert main(["promote", "--rollback", "alias=expert", f"models={models}"]) == 0
    assert yaml.safe_load(models.read_text())["aliases"] == {"expert": "round0"}
    assert read_log(models)[-1]["decision"] == "rolled_back"
    assert main(["promote", "--rollback", "alias=expert", f"models={models}"]) == 1
    assert "nothing to roll back" in capsys.readouterr().err


def test_a_worse_candidate_is_refused_with_the_threshold_and_margin(tmp_path, tiny_model, worse, better, capsys):
    models = write_models(tmp_path / "models.yaml", tiny_model, better, name="sail")
    before = models.read_bytes()
    eval_yaml = write_eval(tmp_path)
    code = main(["promote", f"candidate={worse}", "alias=expert", f"models={models}", f"eval={eval_yaml}",
                 f"output_dir={tmp_path / 'gate'}", "metrics=rouge-l", "max_forgetting_drop=null"])  # fmt: skip
    assert code == 3
    err = capsys.readouterr().err
    assert "refused: 'round0' stays out of 'expert'" in err
    assert "rouge-l is worse by" in err and "tolerance 0" in err
    assert models.read_bytes() == before
    [entry] = read_log(models)
    assert entry["decision"] == "refused" and entry["failed"][0].startswith("rouge-l is worse by")
    assert entry["new_aliases"] == entry["previous_aliases"] == {"expert": "sail"}


def test_canary_adds_an_arm_and_scales_the_others(tmp_path, tiny_model, worse, better, gate_eval, capsys):
    models = write_models(tmp_path / "models.yaml", tiny_model, worse)
    assert promote(models, better, gate_eval, "canary=0.1") == 0
    assert yaml.safe_load(models.read_text())["aliases"] == {"expert": {"round0": 0.9, "run": 0.1}}
    assert read_log(models)[-1]["decision"] == "canary"
    assert main(["promote", "--rollback", "alias=expert", f"models={models}"]) == 0
    assert yaml.safe_load(models.read_text())["aliases"] == {"expert": "round0"}


def test_a_candidate_on_another_base_is_refused(tmp_path, tiny_model, worse, capsys):
    other = shutil.copytree(worse, tmp_path / "other")
    config = other / "adapter_config.json"
    config.write_text(config.read_text().replace(str(tiny_model), "Qwen/Qwen2.5-0.5B-Instruct"))
    models = write_models(tmp_path / "models.yaml", tiny_model, worse)
    before = models.read_bytes()
    code = main(["promote", f"candidate={other}", "alias=expert", f"models={models}", f"eval={write_eval(tmp_path)}"])
    assert code == 1
    err = capsys.readouterr().err
    assert "trained on base 'Qwen/Qwen2.5-0.5B-Instruct'" in err and f"on base '{tiny_model}'" in err
    assert "Traceback" not in err and models.read_bytes() == before


def test_bad_input_is_named(tmp_path, tiny_model, worse, capsys):
    models = write_models(tmp_path / "models.yaml", tiny_model, worse)
    assert main(["promote", "alias=expert", f"models={models}"]) == 1
    assert "promote needs candidate and eval" in capsys.readouterr().err
    code = main(["promote", f"candidate={worse}", "alias=nope", f"models={models}", f"eval={write_eval(tmp_path)}"])
    assert code == 1
    assert "has no alias 'nope'" in capsys.readouterr().err
    assert main(["promote", f"candidate={worse}", "alias=expert", f"models={models}", "eval=e.yaml", "metrics=f1"]) == 1
    assert "unknown gate metric(s) f1" in capsys.readouterr().err


def test_the_checks_direction_tolerance_probe_and_win_rate():
    """promote.check on an eval summary: lower is better for eval_loss; per-metric tolerance; the probe's drop; the
    judge's pairwise win rate with ties counting half (each failure says by how much)."""
    from expertkit.core.config import load_config
    from expertkit.improve.config import PromoteConfig
    from expertkit.improve.promote import check

    summary = {
        "candidates": {
            "old": {"metrics": {"rouge-l": 40.0, "eval_loss": 1.0}, "probe": {"overall": 60.0}},
            "new": {"metrics": {"rouge-l": 39.5, "eval_loss": 1.2}, "probe": {"overall": 50.0}},
        },
        "pairwise": [{"a": "new", "b": "old", "win": 1, "tie": 2, "loss": 3}],
    }
    keys = {"candidate": "c", "alias": "a", "models": "m", "eval": "e", "metrics": "rouge-l,eval_loss"}
    config = load_config(PromoteConfig, None, {**keys, "tolerance": {"rouge-l": 1.0}, "min_win_rate": 0.4})
    scores, failed = check(config, summary, "old", "new")
    assert scores["rouge-l"]["ok"] and not scores["eval_loss"]["ok"]  # 0.5 worse within 1.0; loss rose by 0.2
    assert failed[0] == "eval_loss is worse by 0.2 (1 -> 1.2; tolerance 0)"
    assert failed[1] == "the forgetting probe dropped 10 points (60 -> 50; max_forgetting_drop 5)"
    assert scores["win_rate"]["rate"] == round(2 / 6, 4)  # (1 win + 2 ties / 2) of 6
    assert failed[2].startswith("the judge's win rate 0.333 is 0.067 short of min_win_rate 0.4")
    lenient = load_config(PromoteConfig, None, {**keys, "tolerance": 0.5, "max_forgetting_drop": 10,
                                                "min_win_rate": 0.3})  # fmt: skip
    assert check(lenient, summary, "old", "new")[1] == []


def test_with_a_judge_the_win_rate_must_reach_min_win_rate(tmp_path, tiny_model, worse, better, capsys):
    """A live judge (tests/evaluate/judge_server.py, on 127.0.0.1) prefers the answer holding the reference: the
    served identity adapter wins every pair, so the untrained candidate is refused on the win rate alone."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluate"))
    from judge_server import MODEL, judge_server

    models = write_models(tmp_path / "models.yaml", tiny_model, better, name="sail")
    with judge_server() as (_, url):
        eval_yaml = write_eval(tmp_path, judge_base_url=url, judge_model=MODEL)
        code = main(["promote", f"candidate={worse}", "alias=expert", f"models={models}", f"eval={eval_yaml}",
                     f"output_dir={tmp_path / 'gate'}", "metrics=rouge-l", "tolerance=100",
                     "max_forgetting_drop=null"])  # fmt: skip
    assert code == 3
    err = capsys.readouterr().err
    assert "the judge's win rate 0.000 is 0.500 short of min_win_rate 0.5 (win 0 / tie 0 / loss 3)" in err
    [entry] = read_log(models)
    assert entry["scores"]["win_rate"] == {"win": 0, "tie": 0, "loss": 3, "rate": 0.0, "ok": False}
    assert entry["scores"]["rouge-l"]["ok"]  # refused on the judge alone
