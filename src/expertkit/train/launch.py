"""More than one process: `expertkit train` relaunches itself under torchrun, as `llamafactory-cli train` does.

    FORCE_TORCHRUN=1 NPROC_PER_NODE=2 expertkit train my.yaml              # 2 processes on this machine
    FORCE_TORCHRUN=1 NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 expertkit train my.yaml

The relaunch happens when FORCE_TORCHRUN is set (1 / true) or more than one accelerator is visible, with
LLaMA-Factory's environment variables and defaults: NNODES=1, NODE_RANK=0, NPROC_PER_NODE=the number of
accelerators (required on a machine without any: CPU processes talk over gloo), MASTER_ADDR=127.0.0.1,
MASTER_PORT=a free port. The launcher is torch.distributed.run (torchrun) itself; a process it (or
`accelerate launch`) started carries LOCAL_RANK and WORLD_SIZE and trains instead of launching again.

When a rank fails, torchrun stops the others; each rank's error boundary writes its error into a folder the
launching process reads (EXPERTKIT_RANK_ERRORS), so the run ends with the first failed rank's own message.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from expertkit.core.errors import ConfigError, ExpertkitError

logger = logging.getLogger(__name__)

RANK_ERRORS_ENV = "EXPERTKIT_RANK_ERRORS"
CRASH_RANK_ENV = "EXPERTKIT_TEST_CRASH_RANK"  # tests: this rank raises just before training starts
_TRUE = ("1", "true", "yes", "y")


@dataclass
class LaunchPlan:
    """torchrun's arguments, from LLaMA-Factory's environment variables."""

    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int

    def torchrun_args(self) -> list[str]:
        return [
            f"--nnodes={self.nnodes}",
            f"--node_rank={self.node_rank}",
            f"--nproc_per_node={self.nproc_per_node}",
            f"--master_addr={self.master_addr}",
            f"--master_port={self.master_port}",
        ]


def in_launched_process(env: Mapping[str, str] = os.environ) -> bool:
    """Whether torchrun or `accelerate launch` started this process (both set LOCAL_RANK and WORLD_SIZE)."""
    return "LOCAL_RANK" in env and "WORLD_SIZE" in env


def process_rank(env: Mapping[str, str] = os.environ) -> int:
    """This process's global rank (0 outside a multi-process run)."""
    return int(env.get("RANK", "0") or 0) if in_launched_process(env) else 0


def is_main_process(env: Mapping[str, str] = os.environ) -> bool:
    """Rank 0: the one process that prints the header and progress and writes the run folder."""
    return process_rank(env) == 0


def plan_launch(env: Mapping[str, str], devices: int, force: bool = False) -> LaunchPlan | None:
    """The torchrun relaunch the environment asks for, or None to train in this process.

    `devices` is the number of visible accelerators (0 on a CPU machine); `force`: the config needs torchrun
    (deepspeed). Bad values are one clear error here, before any process is spawned.
    """
    if in_launched_process(env):
        return None
    refuse_too_many_processes(env, devices)  # also without FORCE_TORCHRUN on a one-GPU machine
    force = force or env.get("FORCE_TORCHRUN", "0").strip().lower() in _TRUE
    if not force and devices <= 1:
        return None
    nnodes = _env_int(env, "NNODES", 1, minimum=1)
    node_rank = _env_int(env, "NODE_RANK", 0, minimum=0)
    if node_rank >= nnodes:
        raise ConfigError(
            f"NODE_RANK={node_rank} is not below NNODES={nnodes}",
            hint=f"number the machines 0 to {nnodes - 1}: NODE_RANK=0 on the one at MASTER_ADDR",
        )
    if devices == 0 and not env.get("NPROC_PER_NODE"):
        raise ConfigError(
            "this run goes through torchrun (FORCE_TORCHRUN or deepspeed) but this machine has no GPU, so "
            "NPROC_PER_NODE must say how many processes to run",
            hint="e.g. FORCE_TORCHRUN=1 NPROC_PER_NODE=2 expertkit train my.yaml (CPU processes talk over gloo)",
        )
    nproc = _env_int(env, "NPROC_PER_NODE", devices, minimum=1)
    if nnodes > 1 and not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
        raise ConfigError(
            f"NNODES={nnodes} needs MASTER_ADDR and MASTER_PORT: every machine must meet at the same address",
            hint="set both to the address of the NODE_RANK=0 machine and a free port on it, the same on every "
            "machine, e.g. MASTER_ADDR=10.0.0.1 MASTER_PORT=29500",
        )
    addr = env.get("MASTER_ADDR") or "127.0.0.1"
    port = _env_int(env, "MASTER_PORT", 0, minimum=1) if env.get("MASTER_PORT") else free_port()
    return LaunchPlan(nnodes, node_rank, nproc, addr, port)


def refuse_too_many_processes(env: Mapping[str, str], devices: int) -> None:
    """On a GPU machine, NPROC_PER_NODE above the visible GPUs is an error (one process per GPU)."""
    if not devices:
        return
    nproc = _env_int(env, "NPROC_PER_NODE", devices, minimum=1)
    if nproc > devices:
        raise ConfigError(
            f"NPROC_PER_NODE={nproc} but only {devices} accelerator(s) are visible on this machine",
            hint=f"set NPROC_PER_NODE to at most {devices} (one process per GPU), or check CUDA_VISIBLE_DEVICES",
        )


def refuse_stage(stage: str, planned: LaunchPlan | None, env: Mapping[str, str] = os.environ) -> None:
    """Stages that train in one process only say so before anything is spawned (or trained)."""
    processes = planned.nproc_per_node * planned.nnodes if planned else int(env.get("WORLD_SIZE", "1") or 1)
    if stage == "ppo" and processes > 1:
        raise ConfigError(
            f"stage ppo trains in one process; this run asks for {processes}",
            hint="unset FORCE_TORCHRUN (on a machine with several GPUs, choose one: CUDA_VISIBLE_DEVICES=0)",
        )


def check_fsdp(config, planned: LaunchPlan | None, env: Mapping[str, str] = os.environ) -> None:
    """FSDP (the fsdp key, or `accelerate launch` with an FSDP config): one clear error before anything is spawned."""
    from expertkit.train import fsdp

    processes = planned.nproc_per_node * planned.nnodes if planned else int(env.get("WORLD_SIZE", "1") or 1)
    fsdp.check_launch(config, processes, env)


def _env_int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(f"environment variable {name}={raw!r} is not a whole number >= {minimum}")
    return value


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (LLaMA-Factory picks one too when MASTER_PORT is not set)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_count() -> int:
    """Visible accelerators (CUDA, XPU, ...) through torch.accelerator; 0 on a CPU machine."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        return accelerator.device_count()
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def relaunch(plan: LaunchPlan, argv: list[str]) -> int:
    """Run `expertkit <argv>` under torchrun; 0 when every rank finished, else the first failed rank's error."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="expertkit-ranks-") as errors:
        cmd = [sys.executable, "-m", "torch.distributed.run", *plan.torchrun_args(), "-m", "expertkit", *argv]
        where = f"node {plan.node_rank} of {plan.nnodes}, " if plan.nnodes > 1 else ""
        logger.info(
            "launching %d process(es) with torchrun (%srendezvous at %s:%d)",
            plan.nproc_per_node,
            where,
            plan.master_addr,
            plan.master_port,
        )
        env = {**os.environ, RANK_ERRORS_ENV: errors}
        # torchrun sets 1 thread per process when unset (and says so); on CPU processes share the cores instead
        env.setdefault("OMP_NUM_THREADS", str(max((os.cpu_count() or 1) // plan.nproc_per_node, 1)))
        code = subprocess.run(cmd, env=env).returncode
        if code == 0:
            return 0
        raise rank_failure(Path(errors), code)


def rank_failure(errors: Path, code: int) -> ExpertkitError:
    """The error a failed multi-process run ends with: the first rank that failed, in its own words."""
    found = sorted(errors.glob("rank*.txt"), key=lambda p: p.stat().st_mtime)
    if not found:
        return ExpertkitError(
            f"torchrun ended with exit code {code}: a process stopped without an error message "
            "(killed by a signal, or out of memory)",
            hint="its output is above; torchrun's summary names the rank and its exit code",
        )
    first = found[0]
    rank = first.stem.removeprefix("rank")
    others = [p.stem.removeprefix("rank") for p in found[1:]]
    also = f" (rank(s) {', '.join(others)} failed after it)" if others else ""
    return ExpertkitError(
        f"rank {rank} failed{also}: {first.read_text(encoding='utf-8').strip()}",
        hint="torchrun stopped the other processes; the full output of every rank is above",
    )


def note_rank_failure(error: BaseException) -> None:
    """In a process torchrun started: leave this rank's error where the launching process will read it."""
    folder = os.environ.get(RANK_ERRORS_ENV)
    if not folder or not in_launched_process():
        return
    text = str(error) if isinstance(error, ExpertkitError) else f"{type(error).__name__}: {error}"
    path = Path(folder) / f"rank{process_rank()}.txt"
    try:
        path.write_text(text + "\n", encoding="utf-8")
    except OSError:  # the launcher is gone (its folder with it): torchrun's own summary still names the rank
        pass


def rank_prefix() -> str:
    """'rank N: ' in a multi-process run (every rank prints its own errors), else ''."""
    if in_launched_process() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"rank {process_rank()}: "
    return ""


def quiet_other_ranks() -> None:
    """Ranks other than 0 print errors only: the header, progress and warnings come once, from rank 0."""
    if is_main_process():
        return
    logging.getLogger("expertkit").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"


def load_deepspeed(value: str | dict | None) -> dict | None:
    """The `deepspeed` key's config as a dict (from its JSON file, or inline); a clear error when it is unusable."""
    import importlib.util
    import json

    if value is None:
        return None
    config = value
    if isinstance(value, str):
        path = Path(value)
        if not path.is_file():
            raise ConfigError(
                f"deepspeed: '{value}' is not a file (looked at {path.resolve()})",
                hint="point it at a DeepSpeed JSON config, e.g. examples/deepspeed/ds_z2_config.json (ds_z0, ds_z2, "
                "ds_z3 and their _offload variants ship there), or write the config inline",
            )
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            where = f" (line {e.lineno}, column {e.colno}: {e.msg})" if isinstance(e, json.JSONDecodeError) else ""
            raise ConfigError(f"deepspeed: {path} is not JSON{where}", hint="DeepSpeed configs are JSON") from None
    stage = config.get("zero_optimization", {}).get("stage", 0) if isinstance(config, dict) else None
    if stage not in (0, 1, 2, 3):
        raise ConfigError(
            f"deepspeed: {value if isinstance(value, str) else 'the inline config'} is not a DeepSpeed config "
            f"(zero_optimization.stage is {stage!r}, not 0 to 3)",
            hint="start from examples/deepspeed/ds_z2_config.json",
        )
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("deepspeed is set but DeepSpeed is not installed", hint="pip install deepspeed")
    return config


def distributed_arguments(config) -> dict:
    """TrainingArguments for how the processes share the work: DDP (plain torchrun) or DeepSpeed."""
    import torch

    from expertkit.train import fsdp

    gpu = torch.cuda.is_available()
    args: dict = {
        "use_cpu": not gpu,  # transformers' CPU path becomes distributed (gloo) under torchrun only with use_cpu
        # LoRA uses every adapter weight in each forward: DDP need not search for unused ones (LLaMA-Factory's rule)
        "ddp_find_unused_parameters": False if config.finetuning_type == "lora" else None,
    }
    if fsdp.enabled(config) or fsdp.accelerate_config():
        return args | fsdp.distributed_arguments(config, gpu)
    deepspeed = load_deepspeed(config.deepspeed)
    if deepspeed is None:
        return args
    args |= {"deepspeed": deepspeed, "use_cpu": False}
    # DeepSpeed calls torch.distributed's old names on every step: a FutureWarning per call, nothing to act on
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    if not gpu:
        # without an accelerator, accelerate picks no distributed backend for DeepSpeed and counts one process
        # (its CPU path is DDP only); set the state up over gloo first and let transformers use it
        from accelerate import PartialState

        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")
        args["accelerator_config"] = {"use_configured_state": True}
    return args


def distributed_state(args):
    """After TrainingArguments: FSDP on a CPU sets accelerate's state up for the Trainer (see train/fsdp.py)."""
    import torch

    from expertkit.train import fsdp

    if (args.fsdp or fsdp.accelerate_config()) and not torch.cuda.is_available():
        fsdp.configure_cpu_state(args)
    return args


def zero3(trainer) -> bool:
    """Whether DeepSpeed ZeRO-3 shards the weights themselves across the processes."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None) if trainer.is_deepspeed_enabled else None
    return bool(plugin and plugin.zero_stage == 3)


def gather_weights(trainer) -> dict | None:
    """ZeRO-3 or FSDP: the whole state dict on rank 0 (every rank must call this); otherwise None (rank 0 has them
    all)."""
    if not (zero3(trainer) or trainer.is_fsdp_enabled):
        return None
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)


def processes_line(args) -> dict[str, str]:
    """The header's line for a multi-process run: how many processes, on how many machines, over which backend."""
    import torch.distributed as dist

    if args.world_size <= 1:
        return {}
    backend = dist.get_backend() if dist.is_initialized() else "?"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", args.world_size))
    nodes = max(args.world_size // max(local, 1), 1)
    ds = args.deepspeed if isinstance(args.deepspeed, dict) else {}
    mode = f"DeepSpeed ZeRO-{ds.get('zero_optimization', {}).get('stage', 0)}" if args.deepspeed else "DDP"
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state.get("fsdp_plugin") is not None:  # the fsdp key, or an accelerate FSDP config
        mode = "FSDP2"
    return {"processes": f"{args.world_size} ({nodes} machine(s) x {local}, {mode} over {backend})"}


def crash_for_test() -> None:
    """Tests: the rank named by EXPERTKIT_TEST_CRASH_RANK fails here, while the others go on into training."""
    wanted = os.environ.get(CRASH_RANK_ENV)
    if wanted is not None and in_launched_process() and str(process_rank()) == wanted:
        time.sleep(0.5)  # let the other ranks reach their first collective: the crash must not leave them hanging
        raise RuntimeError(f"injected crash on rank {wanted} ({CRASH_RANK_ENV})")
