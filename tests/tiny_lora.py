"""One recipe for the tests' LoRA runs that make a tiny random model memorise a few answers (greedy decoding then
gives them back word for word): the conftest's identity adapter, the adapters tests' second one, the vLLM tests'.

    output_dir = teach(model_dir, "identity", dataset_dir, out_dir, num_train_epochs=60)
"""

from __future__ import annotations

from pathlib import Path


def teach(model_dir, dataset: str, dataset_dir, output_dir, **overrides):
    """(config, result) of `expertkit train`'s LoRA run on `dataset` (in `dataset_dir`) with the recipe's keys."""
    from expertkit.core.config import load_config
    from expertkit.train.config import TrainConfig
    from expertkit.train.run import run

    keys = {
        "model_name_or_path": str(model_dir),
        "dataset": dataset,
        "dataset_dir": str(dataset_dir),
        "output_dir": str(Path(output_dir)),
        "cutoff_len": 128,
        "lora_rank": 16,
        "learning_rate": 5e-3,
        "num_train_epochs": 40,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "logging_steps": 5,
        "save_steps": 1000,
        "learning_check_samples": 4,
        "lr_scheduler_type": "constant",
        "bf16": False,
        **overrides,
    }
    config = load_config(TrainConfig, None, keys)
    return config, run(config)
