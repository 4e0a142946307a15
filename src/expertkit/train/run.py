"""The one run skeleton every training stage shares (LoRA, full or freeze, on transformers' Trainer + peft).

    expertkit train examples/train/qwen2.5-0.5b-instruct_lora_sft.yaml             # stage: sft
    expertkit train examples/train/qwen2.5-0.5b-instruct_lora_dpo.yaml             # stage: dpo
    expertkit train ... stage=kto                                                  # or rm (a reward model)
    expertkit train ... stage=ppo reward_model=saves/my-rm                         # EXPERIMENTAL

`run(config)` reads top to bottom: prepare the run folder -> data -> model -> header -> train -> save -> check.
A stage module (`pt`, `sft`, `dpo`, `kto`, `rm`, `ppo`) holds only what differs: how its data becomes examples, which
trainer trains them, the header lines it adds and its learning check (see `Stage`).
"""

from __future__ import annotations

import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from expertkit.core.errors import ConfigError, DataError, ExpertkitError
from expertkit.core.runs import write_json_atomic
from expertkit.train.config import TrainConfig
from expertkit.train.precision import Precision
from expertkit.train.resume import (
    FINISHED_MARKER,
    finish_from_checkpoint,
    interrupted_message,
    planned_steps,
    prepare_output_dir,
    resume_is_at_end,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: str
    global_step: int
    train_loss: float
    train_runtime: float
    tokens_seen: int
    tokens_per_second: float
    learning_check: object | None = None


@dataclass
class StageData:
    """What a stage's data step hands the skeleton: the examples and the figures the header shows."""

    train_set: list[dict]
    val_set: list[dict]
    header: dict[str, str]  # the header's data lines ("rows", "sequences"), in the stage's own words
    longest: int  # tokens of the longest example before cutting (for the memory estimate)
    check_rows: list  # training items the learning check samples (conversations, pairs)
    stats: object = None  # the stage's token figures, for its learning check


class Stage(Protocol):
    def prepare_data(self, config: TrainConfig, tokenizer) -> StageData: ...

    def build_trainer(self, config: TrainConfig, model, tokenizer, data: StageData, precision: Precision): ...

    def header_lines(self, config: TrainConfig, trainer) -> dict[str, str]: ...

    def check_learning(self, trainer, tokenizer, data: StageData, config: TrainConfig): ...


def load_stage(name: str) -> Stage:
    import importlib

    return importlib.import_module(f"expertkit.train.{name}")  # type: ignore[return-value]


def run(config: TrainConfig) -> TrainResult:
    from expertkit.train.launch import crash_for_test, gather_weights, is_main_process
    from expertkit.train.precision import plan_checkpointing
    from expertkit.train.qlora import check_quantized_run, keep_adapter_float32

    main = is_main_process()  # in a multi-process run only rank 0 prints and writes the run folder
    stage = load_stage(config.stage)
    check_optim(config.optim)
    check_quantized_run(config)  # QLoRA: bitsandbytes there, no ZeRO-3 / FSDP, before anything loads
    resume = prepare_output_dir(config, write=main)
    tokenizer = load_chat_tokenizer(config)
    data = stage.prepare_data(config, tokenizer)
    at_end = resume_is_at_end(config, resume, len(data.train_set))
    model, precision = build_model(config)
    trainer = stage.build_trainer(config, model, tokenizer, data, precision)
    keep_adapter_float32(trainer.model)  # QLoRA: TRL's trainers cast the adapter to bf16
    plan_checkpointing(config, trainer, data, precision)  # unset: on when the estimate says it will not fit
    if main:
        print_header(config, trainer, data, precision, stage.header_lines(config, trainer))
        (Path(config.output_dir) / FINISHED_MARKER).unlink(missing_ok=True)
    crash_for_test()
    try:
        output = finish_from_checkpoint(trainer, resume) if at_end else trainer.train(resume_from_checkpoint=resume)
        weights = gather_weights(trainer)  # ZeRO-3: every rank hands rank 0 its shard
        if not main:
            return finish(config, trainer, output, None, write=False)
        save_final(trainer, tokenizer, config, weights)
        check = stage.check_learning(trainer, tokenizer, data, config) if weights is None else skip_check(config)
        return finish(config, trainer, output, check)
    except KeyboardInterrupt:
        logger.warning("%s", interrupted_message(config, trainer.state.global_step))
        raise


def load_chat_tokenizer(config: TrainConfig):
    from expertkit.model.load import load_tokenizer
    from expertkit.model.templates import apply_template

    tokenizer = load_tokenizer(config.model_name_or_path, config.trust_remote_code)
    apply_template(tokenizer, config.template)
    tokenizer.padding_side = "right"
    return tokenizer


def build_model(config: TrainConfig):
    from transformers import set_seed

    from expertkit.model.load import load_model
    from expertkit.train.precision import (
        check_hardware,
        choose_attention,
        detect_device,
        enable_checkpointing,
        set_attention,
    )
    from expertkit.train.qlora import load_kwargs

    set_seed(config.seed)  # LoRA's A matrices are random: same seed, same initial adapter, same loss curve
    facts = detect_device()
    precision = check_hardware(config, facts)
    head = "score" if config.stage == "rm" else None  # rm: a sequence-classification model, one score per sequence
    quantization = load_kwargs(config, precision.load_dtype, head)  # quantization_bit: bitsandbytes (QLoRA)
    model = load_model(
        config.model_name_or_path, precision.load_dtype, config.trust_remote_code, head=head, quantization=quantization
    )
    model.config.use_cache = False
    set_attention(model, choose_attention(facts, config.flash_attn, precision), config.flash_attn, precision)
    if config.gradient_checkpointing:
        enable_checkpointing(model)
    if config.finetuning_type == "lora":
        model = attach_lora(model, config, head)
    elif config.finetuning_type == "freeze":
        freeze_layers(model, config.freeze_trainable_layers)
        if head:
            getattr(model, head).requires_grad_(True)  # the new head starts random: it always trains
    return model, precision


def attach_lora(model, config: TrainConfig, head: str | None = None):
    from peft import LoraConfig, PeftModel, get_peft_model

    if config.adapter_name_or_path:
        logger.info("continuing training of adapter %s", config.adapter_name_or_path)
        return PeftModel.from_pretrained(model, config.adapter_name_or_path, is_trainable=True)
    targets = "all-linear" if config.lora_target == ["all"] else config.lora_target
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in config.lora_target if t != "all" and t not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise ExpertkitError(
            f"lora_target names modules this model does not have: {', '.join(missing)}",
            hint=f"linear layers of this model: {', '.join(linear)}; or lora_target=all",
        )
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        use_rslora=config.use_rslora,
        use_dora=config.use_dora,
        task_type="SEQ_CLS" if head else "CAUSAL_LM",
        modules_to_save=[head] if head else None,  # the new head trains in full and is saved with the adapter
    )
    return get_peft_model(model, lora)


def freeze_layers(model, n: int) -> None:
    """Train only the last n decoder layers (the first -n when negative)."""
    import re

    layer_ids = sorted(
        {int(m.group(1)) for name, _ in model.named_parameters() if (m := re.search(r"\.layers\.(\d+)\.", name))}
    )
    if not layer_ids:
        raise ExpertkitError(
            "finetuning_type freeze found no decoder layers named '.layers.N.' in this model",
            hint="use finetuning_type=lora or full for this architecture",
        )
    keep = set(layer_ids[-n:] if n > 0 else layer_ids[:-n])
    for name, param in model.named_parameters():
        m = re.search(r"\.layers\.(\d+)\.", name)
        param.requires_grad = bool(m and int(m.group(1)) in keep)


def refuse_empty_after_cut(examples: list, dropped: list[str], config: TrainConfig, split: str, unit: str) -> None:
    """Every stage's cutoff_len outcome: say which items kept no answer token (skipped); refuse when none is left.

    `unit` names the items in the stage's words (example, pair, row); `dropped` holds their sources.
    """
    if dropped:
        logger.warning(
            "%d %s %s(s) keep no answer token after cutoff_len=%d and are skipped (e.g. %s); raise cutoff_len "
            "to keep them",
            len(dropped),
            split,
            unit,
            config.cutoff_len,
            ", ".join(dropped[:3]),
        )
    if not examples:
        raise DataError(
            f"no {split} {unit} keeps an answer token within cutoff_len={config.cutoff_len}",
            hint="raise cutoff_len or shorten the prompts",
        )


def training_arguments(config: TrainConfig, precision: Precision, args_class=None, **stage_args):
    """transformers' TrainingArguments (or a stage's subclass, such as TRL's DPOConfig) from the config."""
    from transformers import TrainingArguments

    from expertkit.train.launch import distributed_arguments, distributed_state

    try:
        args = (args_class or TrainingArguments)(
            output_dir=config.output_dir,
            per_device_train_batch_size=config.per_device_train_batch_size,
            per_device_eval_batch_size=config.per_device_eval_batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            learning_rate=config.learning_rate,
            num_train_epochs=config.num_train_epochs,
            max_steps=config.max_steps,
            lr_scheduler_type=config.lr_scheduler_type,
            warmup_steps=config.warmup_steps or config.warmup_ratio,
            max_grad_norm=config.max_grad_norm,
            weight_decay=config.weight_decay,
            adam_beta1=config.adam_beta1,
            adam_beta2=config.adam_beta2,
            adam_epsilon=config.adam_epsilon,
            optim=config.optim,
            logging_steps=config.logging_steps,
            save_strategy="steps",
            save_steps=config.save_steps,
            save_total_limit=config.save_total_limit,
            eval_strategy=config.eval_strategy,
            eval_steps=config.eval_steps or config.logging_steps,
            bf16=precision.bf16,
            fp16=precision.fp16,
            use_liger_kernel=config.enable_liger_kernel,  # checked before the model loaded (precision.check_liger)
            seed=config.seed,
            report_to=config.report_to,
            remove_unused_columns=False,
            dataloader_num_workers=0,
            include_num_input_tokens_seen="non_padding",
            disable_tqdm=not sys.stderr.isatty(),
            logging_first_step=True,
            save_only_model=False,
            **distributed_arguments(config),
            **stage_args,
        )
    except ValueError as e:  # a combination transformers refuses that the config's own checks let through
        raise ConfigError(f"transformers refused the training settings: {e}") from None
    return distributed_state(args)


def run_callbacks(config: TrainConfig) -> list:
    """The callbacks every stage's trainer gets: trainer_log.jsonl (and its echo without a TTY), checkpoints."""
    from expertkit.train.callbacks import CompleteCheckpointCallback, RunLogCallback, ShardCheckCallback

    log = RunLogCallback(config.output_dir, echo=not sys.stderr.isatty())
    return [log, CompleteCheckpointCallback(), ShardCheckCallback()]


def quiet_printer(trainer):
    """Our RunLogCallback prints a readable line instead of transformers' dict."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def check_optim(name: str) -> None:
    """An optimiser name transformers does not know is a config error with the close names, not a traceback."""
    import difflib

    from transformers.training_args import OptimizerNames

    names = [o.value for o in OptimizerNames]
    if name not in names:
        close = [n for n in names if n.startswith(name)][:3] or difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise ConfigError(
            f"unknown optim '{name}'",
            hint=hint + "common: adamw_torch (the default), adamw_torch_fused, adafactor, sgd",
        )


def print_header(config: TrainConfig, trainer, data: StageData, precision: Precision, stage_lines: dict) -> None:
    from expertkit.model.load import count_parameters
    from expertkit.train.launch import processes_line
    from expertkit.train.precision import run_estimate
    from expertkit.train.report import GIB, log_header, memory_advice

    trainable, total = count_parameters(trainer.model)
    batch = config.per_device_train_batch_size * config.gradient_accumulation_steps * trainer.args.world_size
    est = run_estimate(config, trainer, data, precision, bool(config.gradient_checkpointing))
    kind = config.finetuning_type + (
        f" (r={config.lora_rank}, alpha={config.lora_alpha})" if config.finetuning_type == "lora" else ""
    )
    log_header(
        {
            "model": f"{config.model_name_or_path} ({precision.describe()})"
            + (f", base quantised {config.describe_quantization()}" if config.quantization_bit else ""),
            **precision.notes,
            "stage": config.stage,
            "method": kind,
            **stage_lines,
            "parameters": f"{trainable:,} trainable of {total:,} ({100 * trainable / max(total, 1):.2f}%)",
            **data.header,
            "batch": f"{config.per_device_train_batch_size} x {config.gradient_accumulation_steps} accumulation "
            f"x {trainer.args.world_size} process(es) = {batch} sequences per step",
            **processes_line(trainer.args),
            "learning rate": f"{config.learning_rate:g}, {config.lr_scheduler_type} schedule",
            "steps": f"{planned_steps(config, len(trainer.train_dataset))}",
            "memory": f"~{est.total / GIB:.1f} GiB estimated peak of {est.available / GIB:.1f} GiB {est.device}",
            "output": str(Path(config.output_dir).resolve()),
        }
    )
    if not est.fits():
        logger.warning(
            "this run will probably not fit in memory (~%.1f GiB needed, %.1f GiB available); try: %s",
            est.total / GIB,
            est.available / GIB,
            memory_advice(est, config.per_device_train_batch_size, config.cutoff_len, config.gradient_checkpointing),
        )


def skip_check(config: TrainConfig) -> None:
    if config.learning_check_samples > 0:
        logger.warning(
            "learning check skipped: under ZeRO-3 or FSDP the trained weights are sharded across the processes; try "
            "the result with expertkit chat"
        )


def save_final(trainer, tokenizer, config: TrainConfig, weights: dict | None = None) -> None:
    """Adapter (or model) + tokenizer with the training chat template, written to a temp dir, then moved.

    `weights`: the whole state dict gathered from ZeRO-3's shards (None: the model holds its own weights).
    """
    import os

    out = Path(config.output_dir)
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model = trainer.model
    model.config.use_cache = True  # off during training only (it would also disable padding-free masks)
    generates = getattr(model, "generation_config", None) is not None  # a reward model (rm) has no generation config
    if tokenizer.eos_token_id is not None and config.finetuning_type != "lora" and generates:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    # a PEFT model may also hold the DPO reference's frozen adapter copy: save only the one that trained
    only = {"selected_adapters": [model.active_adapter]} if hasattr(model, "peft_config") else {}
    if weights is not None:
        only["state_dict"] = weights
    model.save_pretrained(tmp, safe_serialization=True, **only)
    tokenizer.save_pretrained(tmp)
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()
    trainer.save_state()


def finish(config: TrainConfig, trainer, output, check, write: bool = True) -> TrainResult:
    """The run's figures; with write (rank 0), also train_results.json, the plots and the finished marker."""
    from expertkit.core.runs import write_text_atomic
    from expertkit.train.callbacks import plot_loss, plot_rewards

    out = Path(config.output_dir)
    metrics = dict(output.metrics)
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    runtime = float(metrics.get("train_runtime", 0.0))
    metrics["train_tokens_per_second"] = tokens / runtime if runtime else 0.0
    if write:
        write_json_atomic(out / "train_results.json", metrics)
        if config.plot_loss:
            plot_loss(trainer.state.log_history, out)
            plot_rewards(trainer.state.log_history, out)
        write_text_atomic(out / FINISHED_MARKER, "finished\n")
        logger.info("saved %s to %s", "adapter" if config.finetuning_type == "lora" else "model", out)
    return TrainResult(
        str(out),
        trainer.state.global_step,
        float(metrics.get("train_loss", float("nan"))),
        runtime,
        tokens,
        metrics["train_tokens_per_second"],
        check,
    )
