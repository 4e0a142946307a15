"""FSDP2: shard the weights, gradients and optimiser state over the processes (torch's `fully_shard`).

Two ways in, as in LLaMA-Factory:

    FORCE_TORCHRUN=1 NPROC_PER_NODE=2 expertkit train my.yaml fsdp=full_shard     # the fsdp / fsdp_config keys
    accelerate launch --config_file examples/accelerate/fsdp2_config.yaml -m expertkit train my.yaml

Both end in transformers' Trainer with accelerate's FSDP plugin (keys: `fsdp` / `fsdp_config`, the same meaning as
in transformers' TrainingArguments; accelerate config: its FSDP_* environment variables).

On a CPU, accelerate (1.16) turns FSDP on only for GPU-like devices: its AcceleratorState keeps MULTI_CPU (DDP) and
drops the plugin without a word. torch's `fully_shard` itself runs on a CPU device mesh over gloo, so on a CPU this
module sets accelerate's state up as accelerate does on a GPU (distributed type FSDP, the plugin, its mixed
precision) before the Trainer reuses it (`use_configured_state`).
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping

from expertkit.core.errors import ConfigError, ExpertkitError

logger = logging.getLogger(__name__)

# transformers' `fsdp` words (FSDPOption) that FSDP2 understands; the FSDP1-only ones get their own message
FSDP_WORDS = ("full_shard", "shard_grad_op", "offload", "auto_wrap")
FSDP1_WORDS = ("hybrid_shard", "hybrid_shard_zero2", "no_shard")
# transformers' fsdp_config keys for FSDP2 (each may carry the `fsdp_` prefix, as in accelerate's YAML files)
FSDP_CONFIG_KEYS = (
    "version",
    "min_num_params",
    "transformer_layer_cls_to_wrap",
    "auto_wrap_policy",
    "cpu_offload",
    "offload_params",  # accelerate's YAML name for cpu_offload
    "cpu_ram_efficient_loading",
    "state_dict_type",
    "activation_checkpointing",
    "reshard_after_forward",
)
# FSDP1 settings: accepted only with their FSDP2 meaning (use_orig_params: FSDP2 always trains the original
# parameters, which is what LoRA needs; sync_module_states: FSDP2 loads rank 0's weights itself)
FSDP1_ONLY_KEYS = (
    "use_orig_params",
    "sync_module_states",
    "forward_prefetch",
    "backward_prefetch",
    "limit_all_gathers",
)
STATE_DICT_TYPES = ("FULL_STATE_DICT", "SHARDED_STATE_DICT")
_HINT = "start from examples/accelerate/fsdp2_config.yaml's settings; docs/training.md#fsdp2"


def enabled(config) -> bool:
    """Whether the config's `fsdp` key asks for FSDP (LLaMA-Factory's default '' means off)."""
    return config.fsdp not in (None, "", False, [])


def training_arguments(config) -> dict:
    """TrainingArguments' `fsdp` / `fsdp_config` from the config's keys, checked (FSDP2, consolidated saves)."""
    words = check_words(config.fsdp)
    settings = check_settings(config.fsdp_config)
    if "offload" in words:
        settings.setdefault("cpu_offload", True)
    if "shard_grad_op" in words:
        settings.setdefault("reshard_after_forward", False)
    settings["version"] = 2
    # the final save gathers the whole model on rank 0 (a folder transformers loads); checkpoints use the same
    settings.setdefault("state_dict_type", "FULL_STATE_DICT")
    if config.finetuning_type == "lora" or "transformer_layer_cls_to_wrap" in settings:
        settings.setdefault("auto_wrap_policy", "TRANSFORMER_BASED_WRAP")
    return {"fsdp": True, "fsdp_config": settings}


def check_words(value) -> list[str]:
    """The `fsdp` key: true, or transformers' words ('full_shard auto_wrap', 'shard_grad_op offload', ...)."""
    if value is True:
        return ["full_shard"]
    words = value.split() if isinstance(value, str) else [str(w) for w in value or []]
    for word in words:
        if word in FSDP1_WORDS:
            raise ConfigError(
                f"fsdp: '{word}' is an FSDP1 sharding strategy; expertkit trains with FSDP2 (torch's fully_shard), "
                "which shards fully (full_shard) or keeps the gathered weights until backward (shard_grad_op)",
                hint="use fsdp: full_shard (or shard_grad_op), optionally with offload",
            )
        if word not in FSDP_WORDS:
            close = difflib.get_close_matches(word, FSDP_WORDS + FSDP1_WORDS, n=1)
            raise ConfigError(
                f"fsdp: unknown option '{word}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                hint=f"options: {', '.join(FSDP_WORDS)} (e.g. fsdp: full_shard auto_wrap)",
            )
    if "full_shard" in words and "shard_grad_op" in words:
        raise ConfigError("fsdp: full_shard and shard_grad_op are two sharding strategies: choose one")
    return words


def check_settings(value) -> dict:
    """`fsdp_config`: a dict or a JSON file of transformers' FSDP keys (the `fsdp_` prefix optional)."""
    import json
    from pathlib import Path

    if value is None:
        return {}
    if isinstance(value, str):
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"fsdp_config: '{value}' is not a file", hint="a JSON file, or the settings inline")
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"fsdp_config: {path} is not JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError("fsdp_config must be a mapping of FSDP settings", hint=_HINT)
    settings = {(k[5:] if k.startswith("fsdp_") else k): v for k, v in value.items()}
    problems = []
    for key in settings:
        if key not in FSDP_CONFIG_KEYS + FSDP1_ONLY_KEYS:
            close = difflib.get_close_matches(key, FSDP_CONFIG_KEYS + FSDP1_ONLY_KEYS, n=1)
            problems.append(f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    if str(settings.get("version", 2)) != "2":
        problems.append(
            f"version {settings['version']}: FSDP1 is deprecated in transformers 5; expertkit trains with FSDP2"
        )
    if str(settings.get("state_dict_type", "FULL_STATE_DICT")).upper() not in STATE_DICT_TYPES:
        problems.append(f"state_dict_type '{settings['state_dict_type']}' is not one of {', '.join(STATE_DICT_TYPES)}")
    if problems:
        raise ConfigError("fsdp_config: " + "; ".join(problems), hint=_HINT)
    if "offload_params" in settings:
        settings["cpu_offload"] = settings.pop("offload_params")
    for key in FSDP1_ONLY_KEYS:
        settings.pop(key, None)
    return settings


def accelerate_config(env: Mapping[str, str] = os.environ) -> bool:
    """Whether `accelerate launch` with an FSDP config started this process (it sets ACCELERATE_USE_FSDP)."""
    return env.get("ACCELERATE_USE_FSDP", "false").strip().lower() in ("1", "true", "yes")


def check_launch(config, processes: int, env: Mapping[str, str] = os.environ) -> None:
    """Before any process is spawned: FSDP's settings, and a launch that can shard (not with DeepSpeed, >= 2
    processes). `processes`: how many the run will have (torchrun's plan, or WORLD_SIZE in a launched process)."""
    from_accelerate = accelerate_config(env)
    if not (enabled(config) or from_accelerate):
        return
    if enabled(config):
        settings = training_arguments(config)["fsdp_config"]
        if config.gradient_checkpointing and str(settings.get("activation_checkpointing", False)).lower() == "true":
            raise ConfigError(
                "gradient_checkpointing and fsdp_config.activation_checkpointing both recompute activations: "
                "choose one",
                hint="keep fsdp_config.activation_checkpointing (FSDP's own, no extra all-gather) and drop "
                "gradient_checkpointing",
            )
    check_accelerate_env(env)
    if config.deepspeed is not None or env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        where = "fsdp" if enabled(config) else "this accelerate FSDP config"
        raise ConfigError(
            f"{where} and deepspeed both shard the model: choose one",
            hint="drop deepspeed to train with FSDP2, or drop fsdp / fsdp_config to train with DeepSpeed ZeRO",
        )
    if processes < 2:
        raise ConfigError(
            f"FSDP shards the model over several processes; this run has {processes}",
            hint="FORCE_TORCHRUN=1 NPROC_PER_NODE=2 expertkit train my.yaml (or accelerate launch --config_file "
            "examples/accelerate/fsdp2_config.yaml -m expertkit train my.yaml); on one device, drop fsdp",
        )


def check_accelerate_env(env: Mapping[str, str] = os.environ) -> None:
    """An accelerate FSDP config must ask for FSDP2 (FSDP_VERSION 2): FSDP1 is deprecated in transformers 5."""
    if accelerate_config(env) and env.get("FSDP_VERSION", "1") != "2":
        raise ConfigError(
            f"this accelerate config asks for FSDP version {env.get('FSDP_VERSION', '1')} (fsdp_version unset means "
            "1); expertkit trains with FSDP2",
            hint="add fsdp_version: 2 to its fsdp_config, as examples/accelerate/fsdp2_config.yaml has",
        )


def distributed_arguments(config, gpu: bool) -> dict:
    """TrainingArguments for an FSDP run: the keys' settings and, on a CPU, accelerate's state over gloo first."""
    args = training_arguments(config) if enabled(config) else {}
    if gpu:
        return args  # transformers and accelerate turn FSDP on by themselves
    from accelerate.state import PartialState

    PartialState(cpu=True)  # MULTI_CPU: torch.distributed over gloo; configure_cpu_state makes it FSDP
    return args | {"use_cpu": True, "accelerator_config": {"use_configured_state": True}}


def configure_cpu_state(args) -> None:
    """On a CPU, once TrainingArguments exist: accelerate's state with the FSDP plugin, for the Trainer to reuse.

    The plugin comes from the fsdp / fsdp_config keys (args.fsdp_plugin_args) or, under `accelerate launch`, from
    its FSDP_* environment variables.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, TorchDynamoPlugin

    plugin = FullyShardedDataParallelPlugin(**(args.fsdp_plugin_args or {}))
    mixed_precision = args.mixed_precision
    state = AcceleratorState(
        cpu=True, mixed_precision=mixed_precision, dynamo_plugin=TorchDynamoPlugin(), _from_accelerator=True
    )
    # what AcceleratorState.__init__ does for FSDP on the devices it lists (MULTI_GPU, MULTI_XPU, ...), for CPU
    state.distributed_type = DistributedType.FSDP
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def check_sharded(model, main: bool) -> None:
    """When training starts under FSDP: the weights must be torch DTensors split over the processes (never a silent
    DDP run); rank 0 says how much of the model this process holds."""
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    sharded = [p for p in params if isinstance(p, DTensor)]
    if not sharded:
        raise ExpertkitError(
            "FSDP was asked for, but accelerate left the model unsharded (every process holds all of it, as in DDP)",
            hint="please report this with `pip list` (accelerate, transformers, torch); meanwhile use "
            "deepspeed=examples/deepspeed/ds_z3_config.json to shard the model",
        )
    if main:
        local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
        total = sum(p.numel() for p in params)
        logger.info(
            "FSDP2: %d of %d weight tensors sharded; this process holds %s of %s values",
            len(sharded),
            len(params),
            f"{local:,}",
            f"{total:,}",
        )
