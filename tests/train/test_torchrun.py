"""More than one process: the torchrun relaunch (LLaMA-Factory's FORCE_TORCHRUN / NPROC_PER_NODE / NNODES ...).

The environment handling is unit-tested in the main suite. The real 2-process runs (torchrun, gloo, the tiny
model) are slow: they run with EXPERTKIT_MULTIPROC=1 (`.ci/multiproc-tests`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from expertkit.core.errors import ConfigError
from expertkit.train import launch
from expertkit.train.launch import LaunchPlan, plan_launch, rank_failure

multiproc = pytest.mark.skipif(
    os.environ.get("EXPERTKIT_MULTIPROC") != "1", reason="2-process torchrun runs: EXPERTKIT_MULTIPROC=1"
)
RUN_TIMEOUT = 300  # seconds: a hung rank fails the test instead of blocking CI


# --- the environment, as LLaMA-Factory reads it ------------------------------------------------------------------


def test_one_process_unless_forced_or_several_gpus():
    assert plan_launch({}, devices=0) is None
    assert plan_launch({}, devices=1) is None
    assert plan_launch({"FORCE_TORCHRUN": "0", "NPROC_PER_NODE": "2"}, devices=0) is None


def test_forced_on_cpu_uses_nproc_per_node_and_lf_defaults():
    plan = plan_launch({"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"}, devices=0)
    assert (plan.nnodes, plan.node_rank, plan.nproc_per_node, plan.master_addr) == (1, 0, 2, "127.0.0.1")
    assert 0 < plan.master_port < 65536
    assert plan_launch({"FORCE_TORCHRUN": "true", "NPROC_PER_NODE": "2"}, devices=0) is not None


def test_several_gpus_relaunch_one_process_each():
    plan = plan_launch({}, devices=4)
    assert plan.nproc_per_node == 4
    assert plan_launch({"NPROC_PER_NODE": "2"}, devices=4).nproc_per_node == 2


def test_multi_node_values_reach_torchrun():
    env = {"FORCE_TORCHRUN": "1", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    plan = plan_launch(env, devices=8)
    assert plan == LaunchPlan(nnodes=2, node_rank=1, nproc_per_node=8, master_addr="10.0.0.1", master_port=29500)
    assert plan.torchrun_args() == [
        "--nnodes=2",
        "--node_rank=1",
        "--nproc_per_node=8",
        "--master_addr=10.0.0.1",
        "--master_port=29500",
    ]


def test_a_launched_process_trains_instead_of_launching_again():
    # torchrun and `accelerate launch` both set these in every process they start
    env = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "RANK": "1"}
    assert plan_launch(env, devices=0) is None
    assert launch.process_rank(env) == 1 and not launch.is_main_process(env)
    assert launch.is_main_process({"RANK": "3"})  # RANK alone (no launcher) is not a rank of ours


@pytest.mark.parametrize(
    ("env", "devices", "says"),
    [
        ({"FORCE_TORCHRUN": "1"}, 0, "NPROC_PER_NODE must say"),
        ({"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "4"}, 2, "only 2 accelerator(s)"),
        ({"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "two"}, 0, "NPROC_PER_NODE='two'"),
        ({"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "0"}, 0, "NPROC_PER_NODE='0'"),
        ({"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "NNODES": "2"}, 0, "needs MASTER_ADDR and MASTER_PORT"),
        ({"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "NNODES": "2", "NODE_RANK": "2"}, 0, "NODE_RANK=2"),
    ],
)
def test_bad_launch_settings_are_one_clear_error_before_spawning(env, devices, says):
    with pytest.raises(ConfigError) as e:
        plan_launch(env, devices)
    assert says in str(e.value)


def test_ppo_refuses_several_processes():
    plan = plan_launch({"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"}, devices=0)
    with pytest.raises(ConfigError, match="stage ppo trains in one process; this run asks for 2"):
        launch.refuse_stage("ppo", plan)
    with pytest.raises(ConfigError):
        launch.refuse_stage("ppo", None, {"WORLD_SIZE": "4"})  # started by accelerate launch
    launch.refuse_stage("ppo", None, {})
    launch.refuse_stage("sft", plan)


def test_the_first_failed_rank_is_the_error(tmp_path):
    (tmp_path / "rank1.txt").write_text("RuntimeError: boom\n")
    os.utime(tmp_path / "rank1.txt", (1, 1))
    (tmp_path / "rank0.txt").write_text("RuntimeError: Connection closed by peer\n")
    message = str(rank_failure(tmp_path, 1))
    assert message.startswith("rank 1 failed (rank(s) 0 failed after it): RuntimeError: boom")
    assert "killed by a signal" in str(rank_failure(tmp_path / "none", -9))


def test_a_rank_leaves_its_error_for_the_launcher(tmp_path, monkeypatch):
    for k, v in {"LOCAL_RANK": "1", "WORLD_SIZE": "2", "RANK": "1", launch.RANK_ERRORS_ENV: str(tmp_path)}.items():
        monkeypatch.setenv(k, v)
    launch.note_rank_failure(ValueError("bad value"))
    assert (tmp_path / "rank1.txt").read_text() == "ValueError: bad value\n"
    assert launch.rank_prefix() == "rank 1: "


# --- the deepspeed key ---------------------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "deepspeed"
has_deepspeed = importlib.util.find_spec("deepspeed") is not None


@pytest.fixture
def deepspeed_installed(monkeypatch):
    """load_deepspeed's last check (is DeepSpeed installed?) passes, so the checks before it are what is tested."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else real(name))


def test_the_shipped_deepspeed_configs_load(deepspeed_installed):
    found = {p.name: launch.load_deepspeed(str(p)) for p in sorted(EXAMPLES.glob("*.json"))}
    stages = {name: cfg["zero_optimization"]["stage"] for name, cfg in found.items()}
    assert stages == {
        "ds_z0_config.json": 0,
        "ds_z2_config.json": 2,
        "ds_z2_offload_config.json": 2,
        "ds_z3_config.json": 3,
        "ds_z3_offload_config.json": 3,
    }
    assert found["ds_z3_config.json"]["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert launch.load_deepspeed({"zero_optimization": {"stage": 2}}) == {"zero_optimization": {"stage": 2}}
    assert launch.load_deepspeed(None) is None


def test_a_bad_deepspeed_value_is_one_clear_error(tmp_path, deepspeed_installed):
    with pytest.raises(ConfigError, match="is not a file") as e:
        launch.load_deepspeed(str(tmp_path / "ds_z9.json"))
    assert "examples/deepspeed/ds_z2_config.json" in str(e.value)
    broken = tmp_path / "ds.json"
    broken.write_text('{"zero_optimization": {"stage": 3,}}')
    with pytest.raises(ConfigError, match=r"is not JSON \(line 1, column 35"):
        launch.load_deepspeed(str(broken))
    with pytest.raises(ConfigError, match="zero_optimization.stage is 4"):
        launch.load_deepspeed({"zero_optimization": {"stage": 4}})
    broken.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a DeepSpeed config"):
        launch.load_deepspeed(str(broken))


@pytest.mark.skipif(has_deepspeed, reason="DeepSpeed is installed here")
def test_deepspeed_not_installed_says_how_to_install():
    with pytest.raises(ConfigError, match="DeepSpeed is not installed") as e:
        launch.load_deepspeed(str(EXAMPLES / "ds_z2_config.json"))
    assert "pip install deepspeed" in str(e.value)


def test_the_deepspeed_key_implies_torchrun():
    assert plan_launch({"NPROC_PER_NODE": "2"}, devices=0, force=True).nproc_per_node == 2
    assert plan_launch({}, devices=1, force=True).nproc_per_node == 1  # ZeRO offload on one GPU
    with pytest.raises(ConfigError, match="NPROC_PER_NODE must say"):
        plan_launch({}, devices=0, force=True)


def test_cli_refuses_a_missing_deepspeed_file_before_starting(tmp_path, capsys):
    from expertkit.cli.main import main

    code = main(["train", "model_name_or_path=m", "dataset=d", f"deepspeed={tmp_path / 'nope.json'}"])
    assert code == 1
    assert "deepspeed: '" in capsys.readouterr().err


# --- real runs: 2 processes over gloo on the tiny model ----------------------------------------------------------


def train(tiny_model, identity_dir, out: Path, steps: int, nproc: int, *extra: str, launcher=None, **env: str):
    """`expertkit train` as a user runs it, with FORCE_TORCHRUN / NPROC_PER_NODE when nproc > 1."""
    args = [
        *(launcher or [sys.executable, "-m", "expertkit"]),
        "train",
        f"model_name_or_path={tiny_model}",
        "dataset=identity",
        f"dataset_dir={identity_dir}",
        f"output_dir={out}",
        f"max_steps={steps}",
        "save_steps=2",
        "logging_steps=1",
        "per_device_train_batch_size=1",
        "learning_rate=1e-3",
        "learning_check_samples=0",
        "bf16=false",
        *extra,
    ]
    run_env = {k: v for k, v in os.environ.items() if k not in ("FORCE_TORCHRUN", "NPROC_PER_NODE")}
    if nproc > 1:
        run_env |= {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(nproc), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=run_env | env)


def logged_losses(out: Path) -> dict[int, float]:
    """step -> training loss, from trainer_log.jsonl"""
    lines = (out / "trainer_log.jsonl").read_text().splitlines()
    return {r["current_steps"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def logged_steps(out: Path) -> list[int]:
    return list(logged_losses(out))


@multiproc
def test_two_processes_train_and_only_rank_0_reports(tiny_model, identity_dir, tmp_path):
    out = tmp_path / "run"
    done = train(tiny_model, identity_dir, out, 4, 2)
    assert done.returncode == 0, done.stderr[-3000:]
    err = done.stderr
    assert err.count("expertkit run") == 1  # the header, once
    assert "1 x 1 accumulation x 2 process(es) = 2 sequences per step" in err
    assert "processes      2 (1 machine(s) x 2, DDP over gloo)" in err
    assert err.count("step 4/4 | loss") == 1  # progress from rank 0 only
    assert done.stdout.count("done: 4 steps") == 1
    assert logged_steps(out) == [1, 2, 3, 4]  # one log line per step: one writer
    assert (out / "adapter_model.safetensors").is_file() and (out / "expertkit_finished").is_file()
    assert not (out / ".final.tmp").exists()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["train_batch_size"] == 1
    assert sorted(p.name for p in (out / "checkpoint-2").glob("rng_state*.pth")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]


@multiproc
def test_a_crash_on_rank_1_ends_the_run_with_its_error(tiny_model, identity_dir, tmp_path):
    done = train(tiny_model, identity_dir, tmp_path / "run", 4, 2, **{launch.CRASH_RANK_ENV: "1"})
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-2:]
    assert last[0].startswith("error: rank 1 failed"), done.stderr[-3000:]
    assert "RuntimeError: injected crash on rank 1" in last[0]


@multiproc
@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)])
def test_resume_across_world_sizes(tiny_model, identity_dir, tmp_path, first, then):
    out = tmp_path / "run"
    done = train(tiny_model, identity_dir, out, 2, first)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = train(tiny_model, identity_dir, out, 4, then, "resume_from_checkpoint=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {out / 'checkpoint-2'}" in resumed.stderr
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    assert logged_steps(out) == [1, 2, 3, 4]
    assert f"x {then} process(es)" in resumed.stderr


@multiproc
def test_accelerate_launch_starts_the_processes(tiny_model, identity_dir, tmp_path):
    # accelerate's own launcher (torchrun underneath for --multi_gpu; the ranks train on CPU over gloo)
    out = tmp_path / "run"
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2"]
    accelerate += ["--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no"]
    accelerate += [f"--main_process_port={launch.free_port()}", "-m", "expertkit"]
    done = train(tiny_model, identity_dir, out, 2, 1, launcher=accelerate)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("expertkit run") == 1
    assert "1 x 1 accumulation x 2 process(es) = 2 sequences per step" in done.stderr
    assert logged_steps(out) == [1, 2]


@multiproc
@pytest.mark.skipif(not has_deepspeed, reason="DeepSpeed is not installed (pip install deepspeed)")
def test_zero3_lora_matches_ddp(tiny_model, identity_dir, tmp_path):
    # DeepSpeed's CPU accelerator over gloo: ZeRO-3 shards the weights, the optimiser state and the gradients;
    # the run must compute what DDP computes and save the whole adapter, gathered from the shards
    from safetensors.torch import load_file

    ddp, zero = tmp_path / "ddp", tmp_path / "zero3"
    for out, extra in ((ddp, ()), (zero, (f"deepspeed={EXAMPLES / 'ds_z3_config.json'}",))):
        done = train(tiny_model, identity_dir, out, 3, 2, *extra)
        assert done.returncode == 0, done.stderr[-3000:]
    assert logged_steps(zero) == [1, 2, 3]
    assert "processes      2 (1 machine(s) x 2, DeepSpeed ZeRO-3 over gloo)" in done.stderr
    assert list(logged_losses(zero).values()) == pytest.approx(list(logged_losses(ddp).values()), abs=1e-5)
    a, b = load_file(zero / "adapter_model.safetensors"), load_file(ddp / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert (zero / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's own sharded checkpoint


@multiproc
@pytest.mark.skipif(not has_deepspeed, reason="DeepSpeed is not installed (pip install deepspeed)")
def test_zero3_full_saves_a_whole_model_and_resumes(tiny_model, identity_dir, tmp_path):
    out = tmp_path / "run"
    zero3 = ("finetuning_type=full", f"deepspeed={EXAMPLES / 'ds_z3_config.json'}")
    done = train(tiny_model, identity_dir, out, 4, 2, *zero3)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_whole_trained_model(out, tiny_model)
    assert_resume_repeats_steps_3_and_4(tiny_model, identity_dir, out, *zero3)


def assert_whole_trained_model(out: Path, tiny_model: Path) -> None:
    """The consolidated model in `out`: every weight gathered from the shards, loadable by plain transformers, and
    trained."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), base.parameters(), strict=True))


def assert_resume_repeats_steps_3_and_4(tiny_model, identity_dir, out: Path, *extra: str) -> None:
    """The finished 4-step, 2-process run in `out`, killed after checkpoint-2 (its last checkpoint and finish mark
    removed): resumed with the same `extra` keys, it logs the same losses for steps 3 and 4."""
    import shutil

    losses = logged_losses(out)
    shutil.rmtree(out / "checkpoint-4")
    (out / "expertkit_finished").unlink()
    resumed = train(tiny_model, identity_dir, out, 4, 2, *extra, "resume_from_checkpoint=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = logged_losses(out)
    assert [again[s] for s in (3, 4)] == pytest.approx([losses[s] for s in (3, 4)], abs=1e-5)


# --- FSDP2 on CPU: torch's fully_shard over gloo (accelerate's state set to FSDP, see train/fsdp.py) ---------------

ACCELERATE_FSDP = Path(__file__).resolve().parents[2] / "examples" / "accelerate" / "fsdp2_config.yaml"


@multiproc
def test_fsdp_full_matches_one_process_saves_a_whole_model_and_resumes(tiny_model, identity_dir, tmp_path):
    out, single = tmp_path / "fsdp", tmp_path / "single"
    full = ("finetuning_type=full", "fsdp=full_shard auto_wrap")
    done = train(tiny_model, identity_dir, out, 4, 2, *full)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "processes      2 (1 machine(s) x 2, FSDP2 over gloo)" in done.stderr
    # really sharded, not DDP under another name: each process holds half of the 348,736 weights
    assert "FSDP2: 26 of 26 weight tensors sharded; this process holds 174,368 of 348,736 values" in done.stderr
    one = train(tiny_model, identity_dir, single, 4, 1, "finetuning_type=full", "per_device_train_batch_size=2")
    assert one.returncode == 0, one.stderr[-3000:]
    assert list(logged_losses(out).values()) == pytest.approx(list(logged_losses(single).values()), abs=5e-3)
    assert_whole_trained_model(out, tiny_model)
    assert_resume_repeats_steps_3_and_4(tiny_model, identity_dir, out, *full)


@multiproc
def test_accelerate_launch_fsdp2_lora_matches_one_process_and_saves_the_adapter(tiny_model, identity_dir, tmp_path):
    # the shipped accelerate config as a user runs it (--mixed_precision no: this CPU has no native bf16)
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out, single = tmp_path / "fsdp", tmp_path / "single"
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", f"--config_file={ACCELERATE_FSDP}"]
    accelerate += ["--mixed_precision=no", f"--main_process_port={launch.free_port()}", "-m", "expertkit"]
    done = train(tiny_model, identity_dir, out, 3, 1, launcher=accelerate)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "processes      2 (1 machine(s) x 2, FSDP2 over gloo)" in done.stderr
    assert "weight tensors sharded; this process holds" in done.stderr
    one = train(tiny_model, identity_dir, single, 3, 1, "per_device_train_batch_size=2")
    assert one.returncode == 0, one.stderr[-3000:]
    assert list(logged_losses(out).values()) == pytest.approx(list(logged_losses(single).values()), abs=5e-3)
    a, b = load_file(out / "adapter_model.safetensors"), load_file(single / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a  # the whole adapter, gathered from the shards
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
    assert tuned.active_adapter == "default"


@multiproc
def test_without_our_state_setup_accelerate_drops_fsdp_on_cpu_and_the_run_stops(tiny_model, identity_dir, tmp_path):
    # the reason train/fsdp.py sets accelerate's state up on a CPU: left alone, accelerate 1.16 keeps MULTI_CPU and
    # the Trainer trains DDP under FSDP's name. The shard check stops that run; when this test fails, accelerate
    # shards on CPU by itself and the state setup can go.
    script = tmp_path / "skip_setup.py"
    script.write_text(
        "import sys\n"
        "from expertkit.train import launch\n"
        "launch.distributed_state = lambda args: args\n"
        "from expertkit.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    torchrun += [f"--master_port={launch.free_port()}", str(script)]
    done = train(tiny_model, identity_dir, tmp_path / "run", 2, 1, "fsdp=full_shard", launcher=torchrun)
    assert done.returncode != 0
    assert "processes      2 (1 machine(s) x 2, DDP over gloo)" in done.stderr
    assert "FSDP was asked for, but accelerate left the model unsharded" in done.stderr
