"""`expertkit demo`: the whole loop offline, in minutes, on a tiny random model built on the spot.

1. build a tiny random Qwen2-style model and tokenizer (no download; labelled as such everywhere);
2. LoRA-tune it on the bundled data (an assistant identity + a few dozen support Q&A in Chinese and English);
3. print base vs tuned answers to questions from that data;
4. with `stage=dpo`: a preference round (DPO) on top of that SFT adapter, on a few bundled chosen / rejected
   pairs whose chosen answers differ from what SFT taught for some prompts, then base / SFT / DPO answers side
   by side and the margin log p(chosen) - log p(rejected) before and after.

A random 1M-parameter model cannot learn language: it memorises the answers, which is enough to see every
stage work end to end. Point the same commands at a real model for real results (README: quickstart).
"""

from __future__ import annotations

import json
import logging
from importlib.resources import files
from pathlib import Path

logger = logging.getLogger(__name__)
DPO_LEARNING_RATE = 1e-3  # far above real-model DPO rates (5e-6): fine for a random tiny model
DPO_EPOCHS = 10
SFT_EPOCHS = 40
STAGES = ("sft", "dpo")


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
        num_train_epochs=SFT_EPOCHS,
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


def dpo_config(model_dir: Path, output_dir: str | Path, sft_adapter: str):
    """The preference round: the SFT adapter continued (so the reference is the SFT model) on the demo pairs."""
    from expertkit.train.config import TrainConfig

    return TrainConfig(
        stage="dpo",
        model_name_or_path=str(model_dir),
        adapter_name_or_path=sft_adapter,
        dataset=["preference"],
        dataset_dir=str(demo_data_dir()),
        cutoff_len=256,
        finetuning_type="lora",
        pref_beta=0.1,
        pref_ftx=1.0,  # + the SFT loss on the chosen answers: without it the tiny model lowers both answers
        learning_rate=DPO_LEARNING_RATE,
        num_train_epochs=DPO_EPOCHS,
        lr_scheduler_type="constant",
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        logging_steps=10,
        save_steps=1000,
        output_dir=str(Path(output_dir) / "dpo"),
        overwrite_output_dir=True,
        learning_check_samples=100,  # every pair
        seed=42,
    )


def parse_stage(args: list[str]) -> str:
    """`stage=dpo` (or `--stage dpo`) from the demo's arguments; anything else is a config error."""
    from expertkit.core.config import split_cli_args
    from expertkit.core.errors import ConfigError

    path, keys = split_cli_args(args)
    unknown = ([path] if path else []) + [k for k in keys if k != "stage"]
    if unknown:
        raise ConfigError(
            f"expertkit demo takes only stage=sft|dpo, not {', '.join(unknown)}",
            hint="expertkit demo stage=dpo  (SFT, then a DPO round on top of it)",
        )
    stage = keys.get("stage", "sft")
    if stage not in STAGES:
        raise ConfigError(f"unknown demo stage '{stage}'", hint="the demo runs stage=sft (default) or stage=dpo")
    return stage


def run_demo(output_dir: str = "saves/demo", build_only: bool = False, stage: str = "sft") -> None:
    from expertkit.model.tiny import TINY_LABEL
    from expertkit.train.run import run

    model_dir = build_demo_model(output_dir)
    if build_only:
        print(f"built the {TINY_LABEL} in {model_dir}")
        return
    result = run(demo_config(model_dir, output_dir))
    print_sft(result)
    if stage == "dpo":
        pref = run(dpo_config(model_dir, output_dir, result.output_dir))
        print_dpo(pref, base_answers(model_dir, pref))
    adapter = pref.output_dir if stage == "dpo" else result.output_dir
    print(f"chat with it: expertkit chat model_name_or_path={model_dir} adapter_name_or_path={adapter} temperature=0")
    print("next: point `expertkit train` at a real model: see README.md, 'The 5-minute path with a real model'")


def print_sft(result) -> None:
    from expertkit.model.tiny import TINY_LABEL

    print(f"\n=== base vs tuned ({TINY_LABEL}) ===")
    check = result.learning_check
    for s in check.samples:
        print(f"\nQ: {s.prompt}\n  expected: {s.expected}\n  base:     {s.base[:120]!r}\n  tuned:    {s.tuned[:120]}")
    n = len(check.samples)
    print(f"\nanswered as trained: tuned {check.tuned_matches}/{n}, base {check.base_matches}/{n}")
    print(f"run folder: {result.output_dir} (adapter, trainer_log.jsonl, training_loss.png, learning_check.json)")


def print_dpo(result, base: dict[str, str]) -> None:
    check = result.learning_check
    print("\n=== base vs SFT vs DPO (preference round on top of the SFT adapter; reference: the SFT model) ===")
    for s in sorted(check.samples, key=lambda s: s.source):
        print(
            f"\nQ: {s.prompt}\n  chosen:   {s.expected}\n  base:     {base.get(s.prompt, '')[:120]!r}\n"
            f"  SFT:      {s.greedy_start[:120]}\n  DPO:      {s.greedy_tuned[:120]}\n"
            f"  margin log p(chosen) - log p(rejected): SFT {s.margin_start:+.2f} -> DPO {s.margin_tuned:+.2f}"
        )
    n = check.pairs
    print(
        f"\ngives the chosen answer: DPO {check.tuned_chosen}/{n}, SFT {check.start_chosen}/{n}; mean margin "
        f"{check.mean_margin_start:+.2f} -> {check.mean_margin_tuned:+.2f} (grew on {check.margin_grew}/{n})"
    )
    print(f"run folder: {result.output_dir} (adapter, trainer_log.jsonl, training_rewards.png, learning_check.json)")


def base_answers(model_dir: Path, result) -> dict[str, str]:
    """The untuned model's greedy answers to the preference prompts (the third column of the comparison)."""
    from expertkit.core.schema import Conversation, Message
    from expertkit.model.load import load_model, load_tokenizer
    from expertkit.train.learning_check import greedy_answer

    tokenizer = load_tokenizer(result.output_dir)  # the run's tokenizer: the chat template it trained with
    model = load_model(str(model_dir)).eval()
    return {
        s.prompt: greedy_answer(
            model, tokenizer, Conversation([Message("user", s.prompt), Message("assistant", "")]), 48
        )
        for s in result.learning_check.samples
    }
