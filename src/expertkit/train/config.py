"""The supervised fine-tuning config: LLaMA-Factory's keys, so its users bring their YAML files unchanged.

Each field's docstring is its documentation (`expertkit config keys`, docs/reference/train.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ValidationInfo, field_validator, model_validator

from expertkit.data.config import DataConfig, split_list
from expertkit.model.quant import QuantizationKeys
from expertkit.train.lf_keys import LF_REFUSED, LF_UNSUPPORTED

# (key, lowest allowed, whether the lowest itself is allowed, what the key means): checked before transformers,
# peft or torch see the value, so that a mistake is a located config error instead of a traceback mid-run
_AT_LEAST_ONE = "a whole number, 1 or more"
_RANGES: tuple[tuple[str, float, bool, str], ...] = (
    ("learning_rate", 0, False, "a positive number such as 1e-4 (LoRA) or 2e-5 (full)"),
    ("lora_rank", 1, True, _AT_LEAST_ONE + " (8-64 is typical)"),
    ("lora_alpha", 0, False, "a positive number (unset: 2 x lora_rank)"),
    ("per_device_train_batch_size", 1, True, _AT_LEAST_ONE),
    ("per_device_eval_batch_size", 1, True, _AT_LEAST_ONE),
    ("gradient_accumulation_steps", 1, True, _AT_LEAST_ONE),
    ("logging_steps", 1, True, _AT_LEAST_ONE),
    ("save_steps", 1, True, _AT_LEAST_ONE),
    ("eval_steps", 1, True, _AT_LEAST_ONE + " (unset: logging_steps)"),
    ("save_total_limit", 1, True, _AT_LEAST_ONE + " (unset: keep every checkpoint)"),
    ("warmup_steps", 0, True, "0 or more steps"),
    ("weight_decay", 0, True, "0 or more"),
    ("max_grad_norm", 0, True, "0 (no clipping) or more"),
    ("learning_check_samples", 0, True, "0 (skip the check) or more"),
    ("pref_beta", 0, False, "a positive number such as 0.1"),
    ("pref_ftx", 0, True, "0 (no SFT loss) or more"),
    ("kto_chosen_weight", 0, False, "a positive number such as 1.0"),
    ("kto_rejected_weight", 0, False, "a positive number such as 1.0"),
    ("ppo_epochs", 1, True, _AT_LEAST_ONE),
    ("ppo_buffer_size", 1, True, _AT_LEAST_ONE),
    ("ppo_target", 0, False, "a positive KL such as 6.0"),
    ("max_new_tokens", 1, True, _AT_LEAST_ONE),
    ("top_k", 0, True, "0 (no limit) or more"),
    ("top_p", 0, False, "a share above 0, at most 1, e.g. 0.7"),
    ("temperature", 0, False, "a positive number such as 0.95"),
)
_RANGE_OF = {key: rest for key, *rest in _RANGES}


class TrainConfig(QuantizationKeys, DataConfig):
    lf_unsupported = LF_UNSUPPORTED
    lf_refused = LF_REFUSED
    lf_differs = {
        "logging_steps": "`500` (transformers' default). 10 shows a loss curve on small runs; logging only.",
        "plot_loss": "`false`. The plot is only a picture of trainer_log.jsonl.",
        "bf16": "`false`, with the weights' dtype inferred from the model and GPU. Unset here turns bf16 on where the "
        "hardware computes it natively (a GPU with bf16, a CPU with AVX512-BF16 or AMX), otherwise float32.",
        "optim": "`adamw_torch_fused` under transformers 5. The same AdamW update; the unfused kernel runs everywhere.",
        "gradient_checkpointing": "on unless `disable_gradient_checkpointing`. Off here unless the run would not "
        "fit in GPU memory without it: the same result, ~30% faster.",
        "fp16": "`false`. Unset here picks fp16 on GPUs without bf16, as bf16 is picked where it is native.",
        "padding_free": "padding (`false`). The loss is the same (attention stays per example); less compute.",
        "template": "required there. Unset uses the tokenizer's own chat template.",
        "learning_check_samples": "no such check in LLaMA-Factory.",
        "max_invalid_ratio": "LLaMA-Factory skips broken rows silently.",
    }

    stage: Literal["pt", "sft", "dpo", "kto", "rm", "ppo"] = "sft"
    """Training stage: pt (continued pre-training on raw domain text, loss on every token; packing on unless set),
    sft (supervised fine-tuning on instruction data), dpo (preference tuning on chosen /
    rejected pairs: DPO and its variants, picked by pref_loss), kto (preference tuning on single answers labelled
    good or bad, kto_tag), rm (a reward model scoring answers, trained on chosen / rejected pairs) or ppo
    (EXPERIMENTAL: reinforcement learning against a reward model from stage rm, reward_model, on the prompts of
    instruction data)."""

    do_train: bool = True
    """Kept for LLaMA-Factory compatibility; `expertkit train` always trains."""

    finetuning_type: Literal["lora", "full", "freeze"] = "lora"
    """lora: small adapter (cheap, the usual choice); full: every weight; freeze: only the last layers."""

    lora_rank: int = 8
    """LoRA rank r: capacity of the adapter. 8-64 is typical."""

    lora_alpha: int | None = None
    """LoRA scaling; unset means 2 x lora_rank."""

    lora_dropout: float = 0.0
    """Dropout on the LoRA input (0-0.1)."""

    lora_target: list[str] = ["all"]
    """Modules that get adapters: `all` (every linear layer but the output head) or a comma list (q_proj,v_proj)."""

    use_rslora: bool = False
    """Rank-stabilised LoRA scaling (alpha / sqrt(r)); helps at high ranks."""

    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA): a bit better quality, slower."""

    freeze_trainable_layers: int = 2
    """finetuning_type freeze: train the last N layers (negative: the first N)."""

    learning_rate: float = 5e-5
    """Peak learning rate (LLaMA-Factory's default, 5e-5, suits full fine-tuning; LoRA usually wants 1e-4 to 5e-4)."""

    num_train_epochs: float = 3.0
    """Passes over the training data (ignored when max_steps > 0)."""

    max_steps: int = -1
    """Stop after this many optimiser steps (-1: use num_train_epochs)."""

    per_device_train_batch_size: int = 8
    """Sequences per forward pass and device."""

    gradient_accumulation_steps: int = 1
    """Forward passes per optimiser step; effective batch = batch x accumulation x devices."""

    lr_scheduler_type: Literal[
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
        "reduce_lr_on_plateau",
        "cosine_with_min_lr",
        "warmup_stable_decay",
    ] = "linear"
    """Learning-rate schedule after warm-up."""

    warmup_ratio: float = 0.0
    """Share of the steps spent warming the learning rate up."""

    warmup_steps: int = 0
    """Warm-up in steps (wins over warmup_ratio when > 0)."""

    max_grad_norm: float = 1.0
    """Clip the gradient norm to this."""

    weight_decay: float = 0.0
    """AdamW weight decay."""

    adam_beta1: float = 0.9
    """AdamW beta1 (first-moment decay)."""

    adam_beta2: float = 0.999
    """AdamW beta2 (second-moment decay)."""

    adam_epsilon: float = 1e-8
    """AdamW epsilon."""

    optim: str = "adamw_torch"
    """Optimiser name as transformers knows it (adamw_torch, adamw_torch_fused, sgd, ...)."""

    logging_steps: int = 10
    """Log loss and learning rate every N optimiser steps."""

    save_steps: int = 500
    """Write a resumable checkpoint every N optimiser steps."""

    save_total_limit: int | None = None
    """Keep at most N checkpoints (oldest deleted)."""

    output_dir: str = "saves/run"
    """Run folder: resolved config, logs, loss plot, checkpoints and the adapter (or model)."""

    overwrite_output_dir: bool = False
    """Allow training into a folder that already holds a finished run (its checkpoints are removed)."""

    resume_from_checkpoint: bool | str | None = None
    """true: continue from the newest complete checkpoint in output_dir; or a checkpoint folder."""

    plot_loss: bool = True
    """Save training_loss.png (and eval loss when there is a validation split)."""

    bf16: bool | None = None
    """bfloat16 mixed precision. Unset: on for GPUs and CPUs that support it natively."""

    fp16: bool | None = None
    """float16 mixed precision with loss scaling, for GPUs without bf16 (T4, V100); needs a GPU. Unset: on for such
    GPUs when bf16 is unset too."""

    gradient_checkpointing: bool | None = None
    """Recompute activations in the backward pass: much less memory, ~30% slower. Unset: off, except on a GPU
    where the header's memory estimate says the run will not fit without it."""

    disable_gradient_checkpointing: bool | None = None
    """LLaMA-Factory's switch; true forces gradient_checkpointing off."""

    flash_attn: Literal["auto", "disabled", "sdpa", "fa2"] = "auto"
    """Attention kernel (LLaMA-Factory's key): auto (transformers' choice, sdpa where available), disabled (eager),
    sdpa (PyTorch's scaled_dot_product_attention) or fa2 (FlashAttention-2: an Ampere or newer GPU and
    `pip install flash-attn`)."""

    enable_liger_kernel: bool = False
    """Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) for stage sft / pt on a
    GPU: less memory, faster. Needs `pip install liger-kernel`; an error on a CPU."""

    padding_free: bool = True
    """Concatenate each batch into one row without padding (faster; attention stays per example)."""

    report_to: list[str] = ["none"]
    """Experiment trackers (none, tensorboard, wandb, ...); comma list."""

    deepspeed: str | dict | None = None
    """DeepSpeed config (LLaMA-Factory's key): a JSON file such as examples/deepspeed/ds_z3_config.json, or the
    config inline. Trains under torchrun (relaunched as with FORCE_TORCHRUN=1); needs `pip install deepspeed`."""

    fsdp: bool | str | list[str] | None = None
    """FSDP2 (torch's fully_shard; LLaMA-Factory's and transformers' key): shard weights, gradients and optimiser state
    over the processes of a multi-process run (FORCE_TORCHRUN=1 NPROC_PER_NODE=N). full_shard (or true),
    shard_grad_op (keep gathered weights until backward), plus offload (parameters in CPU RAM); unset or '' is off."""

    fsdp_config: str | dict | None = None
    """With fsdp: transformers' FSDP settings, inline or a JSON file (transformer_layer_cls_to_wrap,
    cpu_ram_efficient_loading, state_dict_type, activation_checkpointing, reshard_after_forward, ...; the fsdp_ prefix
    is optional). The final save is always one consolidated model or adapter."""

    eval_strategy: Literal["no", "steps", "epoch"] = "no"
    """When to compute validation loss (needs val_size > 0)."""

    eval_steps: int | None = None
    """With eval_strategy steps: every N steps (unset: logging_steps)."""

    per_device_eval_batch_size: int = 8
    """Sequences per forward pass during evaluation."""

    pref_beta: float = 0.1
    """stage dpo: beta, how far the tuned model may move from the reference (lower: further). 0.1 is usual. orpo:
    the weight of the odds-ratio loss beside the SFT loss; simpo: the scale of the reward margin."""

    pref_loss: Literal["sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo"] = "sigmoid"
    """stage dpo: the preference loss. sigmoid (DPO), hinge (SLiC), ipo (IPO); orpo (ORPO) and simpo (SimPO) need no
    reference model; kto_pair is gone from TRL (use stage kto)."""

    kto_chosen_weight: float = 1.0
    """stage kto: weight of the loss on desirable (good) answers; raise it when they are fewer than the bad ones."""

    kto_rejected_weight: float = 1.0
    """stage kto: weight of the loss on undesirable (bad) answers; raise it when they are fewer than the good ones."""

    pref_ftx: float = 0.0
    """stage dpo: weight of an SFT loss on the chosen answers added to the preference loss (0: none; orpo has one of
    weight 1 already)."""

    dpo_label_smoothing: float = 0.0
    """stage dpo, pref_loss sigmoid: robust DPO (cDPO) label smoothing, the assumed share of flipped labels (0-0.5)."""

    simpo_gamma: float = 0.5
    """pref_loss simpo: the target reward margin gamma, subtracted from pref_beta x (average log p(chosen) - average
    log p(rejected))."""

    reward_model: str | None = None
    """stage ppo: the reward model, a run folder of stage rm (a LoRA adapter with its score head over the same
    base, reward_model_type lora) or a full reward model folder (reward_model_type full)."""

    reward_model_type: Literal["lora", "full", "api"] = "lora"
    """stage ppo: lora (reward_model is a LoRA reward adapter, applied to the policy's own base: no second copy) or
    full (a whole reward model, loaded beside the policy). api is not supported."""

    ppo_epochs: int = 4
    """stage ppo: optimisation passes over each step's rollouts."""

    ppo_buffer_size: int = 1
    """stage ppo: rollouts per step, in effective batches (prompts per step = batch x accumulation x this)."""

    ppo_target: float = 6.0
    """stage ppo: the KL (to the reference, summed over an answer's tokens) the adaptive KL penalty steers
    towards."""

    ppo_score_norm: bool = False
    """stage ppo: normalise the reward model's scores with their running mean and standard deviation."""

    ppo_whiten_rewards: bool = False
    """stage ppo: whiten the per-token rewards (scale to unit variance) before computing advantages."""

    max_new_tokens: int = 1024
    """stage ppo: longest answer the policy samples per prompt, in tokens."""

    top_k: int = 50
    """stage ppo: sample each answer token among the k likeliest (0: no limit)."""

    top_p: float = 0.7
    """stage ppo: sample each answer token among the likeliest whose probabilities add up to top_p (nucleus)."""

    temperature: float = 0.95
    """stage ppo: sampling temperature of the answers (higher: more varied)."""

    learning_check_samples: int = 5
    """After training, greedy-decode this many training prompts with base and tuned model (0: skip)."""

    @field_validator("lora_target", "report_to", mode="before")
    @classmethod
    def _split_lists(cls, v: object) -> list[str]:
        return split_list(v)  # type: ignore[arg-type]

    @field_validator(*(key for key, *_ in _RANGES))
    @classmethod
    def _in_range(cls, v: float | None, info: ValidationInfo) -> float | None:
        low, inclusive, meaning = _RANGE_OF[info.field_name]
        if v is not None and (v < low or (v == low and not inclusive)):
            raise ValueError(f"must be {meaning}")
        return v

    @field_validator("lora_dropout")
    @classmethod
    def _dropout(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError("must be a share from 0 up to (not including) 1, e.g. 0.05")
        return v

    @field_validator("warmup_ratio")
    @classmethod
    def _warmup_ratio(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError("must be a share of the steps from 0 up to (not including) 1, e.g. 0.1")
        return v

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps={self.max_steps}: use -1 (train num_train_epochs) or a positive step count")
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            raise ValueError(
                f"num_train_epochs={self.num_train_epochs:g} trains nothing: use a positive number (e.g. 3), "
                "or set max_steps"
            )
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_rank
        if self.stage == "pt" and "packing" not in self.model_fields_set:
            self.packing = True  # LLaMA-Factory: packing unset means on for pt
        if self.disable_gradient_checkpointing:
            self.gradient_checkpointing = False
        if self.bf16 and self.fp16:
            raise ValueError("bf16 and fp16 are both on: choose one")
        if self.freeze_trainable_layers == 0:
            raise ValueError("freeze_trainable_layers must not be 0: the last N layers (N > 0) or the first N (N < 0)")
        if self.adapter_name_or_path and self.finetuning_type != "lora":
            raise ValueError(
                f"adapter_name_or_path continues a LoRA adapter, but finetuning_type is "
                f"'{self.finetuning_type}': set finetuning_type=lora, or merge the adapter first"
            )
        if self.pref_loss == "kto_pair":
            raise ValueError(
                "pref_loss kto_pair is gone from TRL: train unpaired good / bad answers with stage: kto, or pairs "
                "with pref_loss: sigmoid"
            )
        if self.stage == "kto" and self.per_device_train_batch_size < 2:
            raise ValueError(
                "stage kto needs per_device_train_batch_size of at least 2: TRL's KL estimate pairs each answer with "
                "another prompt of the same batch, so a batch of 1 has no other prompt (raise it to 2 or more and "
                "lower gradient_accumulation_steps to keep the effective batch)"
            )
        if self.stage == "kto" and self.pref_ftx > 0:
            raise ValueError(
                "pref_ftx is not supported with stage kto yet (TRL's KTOTrainer has no SFT loss term): set pref_ftx: 0"
            )
        if not 0 <= self.dpo_label_smoothing < 0.5:
            raise ValueError("dpo_label_smoothing must be from 0 up to (not including) 0.5")
        if self.dpo_label_smoothing and self.pref_loss != "sigmoid":
            raise ValueError("dpo_label_smoothing applies to pref_loss: sigmoid only")
        if self.stage == "ppo":
            self._check_ppo()
        if self.eval_strategy != "no" and self.val_size <= 0:
            raise ValueError(f"eval_strategy is '{self.eval_strategy}' but val_size is 0: set val_size (e.g. 0.1)")
        return self

    def _check_ppo(self) -> None:
        if self.reward_model_type == "api":
            raise ValueError(
                "reward_model_type api (scores from an HTTP server) is not supported: train a reward model with "
                "stage: rm and set reward_model to its run folder with reward_model_type: lora"
            )
        if not self.reward_model:
            raise ValueError(
                "stage ppo needs reward_model: train one first with stage: rm (same model_name_or_path, pairs of "
                "chosen / rejected answers), then set reward_model to its output_dir"
            )
        if self.finetuning_type != "lora":
            raise ValueError(
                f"stage ppo trains a LoRA adapter only (finetuning_type is '{self.finetuning_type}'): the reference is "
                "the same model with the adapter disabled; set finetuning_type: lora"
            )
        if self.top_p > 1:
            raise ValueError(f"top_p={self.top_p:g} must be at most 1 (1: no nucleus cut)")
        if self.eval_strategy != "no":
            raise ValueError("stage ppo has no validation loss: set eval_strategy: no")
