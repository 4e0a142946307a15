"""`expertkit demo`: the whole loop offline, in minutes, on a tiny random model built on the spot.

1. build a tiny random Qwen2-style model and tokenizer (no download; labelled as such everywhere);
2. LoRA-tune it on the bundled data (an assistant identity + a few dozen support Q&A in Chinese and English);
3. print base vs tuned answers to questions from that data.

A random 1M-parameter model cannot learn language: it memorises the answers, which is enough to see every
stage work end to end. Point the same commands at a real model for real results (README: quickstart).
"""

from __future__ import annotations

import json
import logging
from importlib.resources import files
from pathlib import Path

logger = logging.getLogger(__name__)


def demo_data_dir() -> Path:
    return Path(str(files("expertkit") / "resources" / "demo"))


def demo_texts(data_dir: Path) -> list[str]:
    """Every string of the demo data, so that the tiny tokenizer knows its words."""
    texts = []
    for row in json.loads((data_dir / "identity.json").read_text(encoding="utf-8")):
        texts += [row.get("instruction", ""), row.get("input", ""), row.get("output", "")]
    for line in (data_dir / "support_qa.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            texts += [m["content"] for m in json.loads(line)["messages"]]
    return [t for t in texts if t]


def build_demo_model(output_dir: str | Path) -> Path:
    from expertkit.model.tiny import TINY_LABEL, build_tiny_model

    model_dir = Path(output_dir) / "tiny-model"
    if (model_dir / "config.json").is_file():
        logger.info("using the %s in %s", TINY_LABEL, model_dir)
        return model_dir
    logger.info("building a %s in %s ...", TINY_LABEL, model_dir)
    return build_tiny_model(model_dir, demo_texts(demo_data_dir()), size="demo")


def demo_config(model_dir: Path, output_dir: str | Path):
    from expertkit.train.config import TrainConfig

    return TrainConfig(
        model_name_or_path=str(model_dir),
        dataset=["identity", "support_qa"],
        dataset_dir=str(demo_data_dir()),
        cutoff_len=256,
        finetuning_type="lora",
        lora_rank=32,
        lora_alpha=64,
        lora_target=["all"],
        learning_rate=3e-3,
        num_train_epochs=40,
        lr_scheduler_type="cosine",
        warmup_ratio=0.05,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        logging_steps=50,
        save_steps=200,
        save_total_limit=1,
        output_dir=str(Path(output_dir) / "lora"),
        overwrite_output_dir=True,
        learning_check_samples=6,
        seed=42,
    )


def run_demo(output_dir: str = "saves/demo", build_only: bool = False) -> None:
    from expertkit.model.tiny import TINY_LABEL
    from expertkit.train.run import run

    model_dir = build_demo_model(output_dir)
    if build_only:
        print(f"built the {TINY_LABEL} in {model_dir}")
        return
    result = run(demo_config(model_dir, output_dir))
    print(f"\n=== base vs tuned ({TINY_LABEL}) ===")
    check = result.learning_check
    for s in check.samples:
        print(f"\nQ: {s.prompt}\n  expected: {s.expected}\n  base:     {s.base[:120]!r}\n  tuned:    {s.tuned[:120]}")
    n = len(check.samples)
    print(f"\nanswered as trained: tuned {check.tuned_matches}/{n}, base {check.base_matches}/{n}")
    print(f"run folder: {result.output_dir} (adapter, trainer_log.jsonl, training_loss.png, learning_check.json)")
    print(
        f"chat with it: expertkit chat model_name_or_path={model_dir} adapter_name_or_path={result.output_dir} "
        "temperature=0"
    )
    print("next: point `expertkit train` at a real model: see README.md, 'The 5-minute path with a real model'")
