"""FSDP2: the fsdp / fsdp_config keys and accelerate FSDP configs, translated and checked before any process starts.

What these settings become is checked down to accelerate's FSDP plugin (the object the Trainer shards with), in
one process. The real 2-process runs on CPU over gloo are in tests/train/test_torchrun.py (EXPERTKIT_MULTIPROC=1).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from expertkit.core.config import load_config
from expertkit.core.errors import ConfigError, ExpertkitError
from expertkit.train import fsdp
from expertkit.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
ACCELERATE_CONFIG = ROOT / "examples" / "accelerate" / "fsdp2_config.yaml"


def config(**keys) -> TrainConfig:
    return load_config(TrainConfig, None, {"model_name_or_path": "m", "dataset": "d", **keys})


@pytest.fixture
def plugin_from(tmp_path, monkeypatch):
    """Our keys -> TrainingArguments (fsdp, fsdp_config) -> accelerate's FullyShardedDataParallelPlugin."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import TrainingArguments

    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")  # both write it; restored after the test

    def build(**keys):
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **fsdp.training_arguments(config(**keys)))
        return FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)

    return build


def test_off_by_default_as_in_llamafactory():
    assert not fsdp.enabled(config())
    assert not fsdp.enabled(config(fsdp=""))
    assert fsdp.enabled(config(fsdp="full_shard"))


def test_full_shard_lora_becomes_fsdp2_with_a_consolidated_save(plugin_from):
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    assert fsdp.training_arguments(config(fsdp="full_shard auto_wrap")) == {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "state_dict_type": "FULL_STATE_DICT",
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        },
    }
    plugin = plugin_from(fsdp="full_shard auto_wrap")
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)  # one whole model / adapter on rank 0
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy  # one shard unit per decoder layer
    # use_orig_params is FSDP1's: FSDP2 always trains the original parameters, as LoRA's frozen base needs
    assert plugin.use_orig_params is None and plugin.cpu_offload.__class__.__name__ != "CPUOffloadPolicy"


def test_shard_grad_op_offload_and_the_settings_reach_accelerate(plugin_from):
    settings = {
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_use_orig_params": False,  # FSDP1 only: accepted, no meaning in FSDP2
        "activation_checkpointing": True,
        "transformer_layer_cls_to_wrap": "Qwen2DecoderLayer",
    }
    plugin = plugin_from(fsdp="shard_grad_op offload", fsdp_config=settings, finetuning_type="full")
    assert plugin.reshard_after_forward is False
    assert type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy"
    assert plugin.cpu_ram_efficient_loading is True and plugin.activation_checkpointing is True
    assert plugin.transformer_cls_names_to_wrap == ["Qwen2DecoderLayer"]


def test_fsdp_config_may_be_a_json_file(tmp_path):
    path = tmp_path / "fsdp.json"
    path.write_text('{"fsdp_state_dict_type": "SHARDED_STATE_DICT", "reshard_after_forward": false}')
    settings = fsdp.training_arguments(config(fsdp=True, fsdp_config=str(path)))["fsdp_config"]
    assert settings["state_dict_type"] == "SHARDED_STATE_DICT" and settings["reshard_after_forward"] is False


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ({"fsdp": "full_shrad"}, "fsdp: unknown option 'full_shrad' (did you mean 'full_shard'?)"),
        ({"fsdp": "hybrid_shard"}, "'hybrid_shard' is an FSDP1 sharding strategy"),
        ({"fsdp": "full_shard shard_grad_op"}, "choose one"),
        ({"fsdp": True, "fsdp_config": {"fsdp_ofload_params": True}}, "unknown key 'ofload_params' (did you mean"),
        ({"fsdp": True, "fsdp_config": {"fsdp_version": 1}}, "FSDP1 is deprecated in transformers 5"),
        ({"fsdp": True, "fsdp_config": {"state_dict_type": "LOCAL"}}, "state_dict_type 'LOCAL' is not one of"),
        ({"fsdp": True, "fsdp_config": "nope.json"}, "fsdp_config: 'nope.json' is not a file"),
        (
            {"fsdp": True, "fsdp_config": {"activation_checkpointing": True}, "gradient_checkpointing": True},
            "both recompute activations: choose one",
        ),
        ({"fsdp": True, "fsdp_config": "[1]"}, "fsdp_config.dict[any,any]: Input should be a valid dictionary"),
    ],
)
def test_bad_fsdp_settings_are_one_clear_error(keys, says):
    with pytest.raises(ConfigError) as e:
        fsdp.check_launch(config(**keys), processes=2, env={})
    assert says in str(e.value)


def test_fsdp_with_deepspeed_is_refused():
    with pytest.raises(ConfigError, match="fsdp and deepspeed both shard the model: choose one"):
        fsdp.check_launch(config(fsdp="full_shard", deepspeed={"zero_optimization": {"stage": 3}}), 2, env={})
    accelerate = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
    with pytest.raises(ConfigError, match="this accelerate FSDP config and deepspeed"):
        fsdp.check_launch(config(deepspeed={"zero_optimization": {"stage": 3}}), 2, env=accelerate)


def test_fsdp_needs_several_processes():
    with pytest.raises(ConfigError, match="FSDP shards the model over several processes; this run has 1") as e:
        fsdp.check_launch(config(fsdp="full_shard"), processes=1, env={})
    assert "FORCE_TORCHRUN=1 NPROC_PER_NODE=2" in str(e.value)
    fsdp.check_launch(config(fsdp="full_shard"), processes=2, env={})
    fsdp.check_launch(config(), processes=1, env={})  # no FSDP: nothing to check


def test_accelerate_fsdp_configs_must_be_fsdp2():
    with pytest.raises(ConfigError, match="asks for FSDP version 1") as e:
        fsdp.check_launch(config(), 2, env={"ACCELERATE_USE_FSDP": "true"})
    assert "fsdp_version: 2" in str(e.value)
    fsdp.check_launch(config(), 2, env={"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"})


def test_the_cli_refuses_fsdp_in_one_process_before_loading_anything(capsys, monkeypatch):
    from expertkit.cli.main import main

    for name in ("FORCE_TORCHRUN", "NPROC_PER_NODE", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    # model m does not exist: the FSDP error comes first, before anything is loaded or spawned
    assert main(["train", "model_name_or_path=m", "dataset=d", "fsdp=full_shard"]) == 1
    assert "FSDP shards the model over several processes; this run has 1" in capsys.readouterr().err


def test_an_unsharded_model_under_fsdp_stops_the_run():
    # accelerate (1.16) drops FSDP on a CPU without a word and trains DDP: never let that pass as FSDP
    import torch

    with pytest.raises(ExpertkitError, match="accelerate left the model unsharded"):
        fsdp.check_sharded(torch.nn.Linear(4, 4), main=True)


def test_the_shipped_accelerate_config_is_fsdp2_with_settings_our_keys_accept():
    shipped = yaml.safe_load(ACCELERATE_CONFIG.read_text())
    assert shipped["distributed_type"] == "FSDP" and shipped["fsdp_config"]["fsdp_version"] == 2
    assert shipped["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    # the same settings work as the fsdp_config key of a training YAML
    settings = fsdp.training_arguments(config(fsdp=True, fsdp_config=shipped["fsdp_config"]))["fsdp_config"]
    assert settings["cpu_offload"] is False and settings["reshard_after_forward"] is True
    assert "accelerate launch --config_file examples/accelerate/fsdp2_config.yaml -m expertkit train" in (
        ACCELERATE_CONFIG.read_text()
    )
