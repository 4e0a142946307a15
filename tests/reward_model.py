"""One recipe for the tests' reward models (stage rm on the tiny model, LoRA): test_rm.py's and the reward that
test_ppo.py's PPO runs score with. Pairs in LLaMA-Factory's ranking format, under the dataset name "pairs".

    (d / "dataset_info.json").write_text(json.dumps({"pairs": RANKED_PAIRS}))
    config, result = train_reward_model(model_dir, d, out_dir, learning_check_samples=0)
"""

from __future__ import annotations

from pathlib import Path

RANKED_PAIRS = {
    "file_name": "pairs.json",
    "ranking": True,
    "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"},
}


def train_reward_model(model_dir, dataset_dir, output_dir, **overrides):
    """(config, result) of `expertkit train stage=rm` on dataset "pairs" in `dataset_dir` with the recipe's keys."""
    from expertkit.core.config import load_config
    from expertkit.train.config import TrainConfig
    from expertkit.train.run import run

    keys = {
        "stage": "rm",
        "model_name_or_path": str(model_dir),
        "dataset": "pairs",
        "dataset_dir": str(dataset_dir),
        "output_dir": str(Path(output_dir)),
        "cutoff_len": 128,
        "lora_rank": 16,
        "learning_rate": 5e-3,
        "num_train_epochs": 8,
        "per_device_train_batch_size": 2,
        "save_steps": 1000,
        "bf16": False,
        **overrides,
    }
    config = load_config(TrainConfig, None, keys)
    return config, run(config)
