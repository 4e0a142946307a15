"""Stage dpo: preference tuning on chosen / rejected pairs, on TRL's DPOTrainer (`pref_loss` picks the loss).

    expertkit train examples/train/qwen2.5-0.5b-instruct_lora_dpo.yaml
    expertkit train ... stage=dpo adapter_name_or_path=saves/sft      # a preference round on top of SFT

Only what differs from the run skeleton (`expertkit.train.run`):
- pairs are rendered with the same chat template as SFT and cut to cutoff_len as LLaMA-Factory cuts them
  (`expertkit.model.render.cut_pair`); a pair left with an empty answer is dropped and counted (it would train on
  nothing and sit at loss ln 2 = 0.693);
- the reference model: with LoRA never a second copy of the weights. A fresh adapter's reference is the base (the
  adapter starts at zero); an adapter continued from `adapter_name_or_path` (an SFT round) keeps a frozen copy of
  its LoRA weights as the reference, so DPO measures against the SFT model, not the bare base
  (LLaMA-Factory#8459, #8974: loss 0 and accuracy 1.0 from step 1). Full and freeze load a frozen copy;
- the learning check compares the log-probability margin chosen - rejected of the tuned model with the
  starting model's on training pairs, and how many greedy answers moved towards the chosen one.

pref_loss orpo and simpo are reference-free and computed by other TRL trainers: `expertkit.train.reference_free`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from expertkit.core.runs import LEARNING_CHECK, write_json_atomic
from expertkit.core.schema import PreferencePair
from expertkit.train.config import TrainConfig
from expertkit.train.run import Precision, StageData, refuse_empty_after_cut

logger = logging.getLogger(__name__)
LN2 = math.log(2)
REF_ADAPTER = "ref"  # the name TRL's DPOTrainer gives the frozen copy of a continued adapter


# LLaMA-Factory's pref_loss -> TRL's DPOConfig.loss_type (pref_ftx adds TRL's "sft" loss on the chosen answers)
TRL_LOSS = {"sigmoid": "sigmoid", "hinge": "hinge", "ipo": "ipo"}
# LLaMA-Factory's reference-free losses: no reference model; TRL computes them in other trainers (reference_free.py)
REFERENCE_FREE = ("orpo", "simpo")


def prepare_data(config: TrainConfig, tokenizer) -> StageData:
    train_pairs, val_pairs = load_pairs(config)
    train_set, stats, kept = tokenize_pairs(train_pairs, tokenizer, config, "train")
    val_set, _, _ = tokenize_pairs(val_pairs, tokenizer, config, "validation") if val_pairs else ([], None, [])
    header = {
        "rows": f"{stats.rows} pairs ({stats.dropped} dropped: an answer cut to nothing) + {len(val_pairs)} "
        f"validation, from {len(train_pairs) + len(val_pairs)} valid",
        "sequences": f"longest prompt + answer {stats.longest} tokens vs cutoff_len {config.cutoff_len} "
        f"({stats.truncated} cut)",
    }
    return StageData(train_set, val_set, header, stats.longest, kept, stats)


def load_pairs(config: TrainConfig) -> tuple[list[PreferencePair], list[PreferencePair]]:
    from expertkit.data.load import load_preference_datasets, require_usable, split_validation

    datasets = load_preference_datasets(config, "pairs")
    pairs = require_usable(datasets, config.max_invalid_ratio, mix=config)
    return split_validation(pairs, config.val_size, config.seed)


@dataclass
class PairStats:
    rows: int
    dropped: int  # pairs whose cut left an answer with no token
    truncated: int
    longest: int  # prompt + longer answer, before cutting
    tokens: int


def tokenize_pairs(pairs: list[PreferencePair], tokenizer, config: TrainConfig, split: str):
    """prompt_ids / chosen_ids / rejected_ids per pair, cut to cutoff_len; pairs with an empty answer dropped."""
    from expertkit.model.render import cut_pair, render_preference

    examples, kept, dropped, truncated, longest = [], [], [], 0, 0
    for pair in pairs:
        r = render_preference(tokenizer, pair)
        longest = max(longest, len(r.prompt_ids) + max(len(r.chosen_ids), len(r.rejected_ids)))
        cut = cut_pair(r.prompt_ids, r.chosen_ids, r.rejected_ids, config.cutoff_len)
        truncated += cut.truncated
        if cut.empty_answer:
            dropped.append(pair.source or "?")
            continue
        examples.append({"prompt_ids": cut.prompt_ids, "chosen_ids": cut.chosen_ids, "rejected_ids": cut.rejected_ids})
        kept.append((pair, examples[-1]))
    refuse_empty_after_cut(examples, dropped, config, split, "pair")
    tokens = sum(len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
    return examples, PairStats(len(examples), len(dropped), truncated, longest, tokens), kept


def build_trainer(config: TrainConfig, model, tokenizer, data: StageData, precision: Precision):
    from trl import DPOConfig, DPOTrainer

    from expertkit.train.run import training_arguments

    if config.pref_loss in REFERENCE_FREE:
        from expertkit.train import reference_free

        return reference_free.build_trainer(config, model, tokenizer, data, precision)

    class PretokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # already prompt_ids / chosen_ids / rejected_ids, cut as LLaMA-Factory cuts them

    loss_types, weights = [TRL_LOSS[config.pref_loss]], [1.0]
    if config.pref_ftx > 0:
        loss_types, weights = loss_types + ["sft"], weights + [config.pref_ftx]
    args = training_arguments(
        config,
        precision,
        DPOConfig,
        beta=config.pref_beta,
        loss_type=loss_types,
        loss_weights=weights,
        label_smoothing=config.dpo_label_smoothing,
        padding_free=False,
        **PREFERENCE_ARGS,
    )
    return preference_trainer(PretokenizedDPOTrainer, config, model, tokenizer, data, args)


# what every preference stage (dpo, kto) sets on TRL's config
PREFERENCE_ARGS = {
    "max_length": None,  # cut already, to cutoff_len
    "gradient_checkpointing": False,  # build_model turns it on when asked; TRL's own default is on
    "disable_dropout": True,  # as LLaMA-Factory's preference trainers do: policy and reference see the same net
    "precompute_ref_log_probs": False,
}


def preference_trainer(
    trainer_class, config: TrainConfig, model, tokenizer, data: StageData, args, reference: bool = True
):
    """A TRL preference trainer on our pre-tokenized rows, with the run's callbacks and the right reference (none
    for a reference-free trainer)."""
    from datasets import Dataset

    from expertkit.train.run import quiet_printer, run_callbacks

    ref = {"ref_model": reference_copy(config, model) if config.finetuning_type != "lora" else None}
    trainer = trainer_class(
        model=model,
        **(ref if reference else {}),
        args=args,
        train_dataset=Dataset.from_list(data.train_set),
        eval_dataset=Dataset.from_list(data.val_set) if data.val_set else None,
        processing_class=tokenizer,
        callbacks=run_callbacks(config),
    )
    return quiet_printer(trainer)


def reference_copy(config: TrainConfig, model):
    """Full and freeze: a frozen copy of the starting model (the only way to keep it; LoRA needs none)."""
    from expertkit.model.load import load_model

    ref = load_model(config.model_name_or_path, model.dtype, config.trust_remote_code, device=str(model.device))
    ref.eval().requires_grad_(False)
    return ref


def header_lines(config: TrainConfig, trainer) -> dict[str, str]:
    if config.pref_loss in REFERENCE_FREE:
        from expertkit.train.reference_free import describe_loss

        loss = describe_loss(config)
    else:
        loss = config.pref_loss + (f" + {config.pref_ftx:g} x SFT on chosen" if config.pref_ftx else "")
        loss = f"{loss}, beta {config.pref_beta:g}"
    return {"preference": loss, "reference": describe_reference(config, trainer)}


def describe_reference(config: TrainConfig, trainer) -> str:
    if config.stage == "dpo" and config.pref_loss in REFERENCE_FREE:
        return f"none: {config.pref_loss} is reference-free (no reference model is loaded)"
    if config.finetuning_type != "lora":
        return f"a frozen copy of {config.model_name_or_path} (the weights are in memory twice)"
    if REF_ADAPTER in getattr(trainer.model, "peft_config", {}):
        if config.adapter_name_or_path:
            return (
                f"the starting adapter {config.adapter_name_or_path} (base + its frozen LoRA copy; "
                "no second copy of the base)"
            )
        return "the base model (the new adapter starts at zero; no second copy of the weights)"
    return "the base model with the adapter disabled (no second copy of the weights)"


# --- learning check -----------------------------------------------------------------------------------------------


@dataclass
class PairCheck:
    source: str
    prompt: str  # the last prompt turn
    expected: str  # the chosen answer
    margin_start: float  # log p(chosen) - log p(rejected) under the starting (reference) model
    margin_tuned: float
    greedy_start: str
    greedy_tuned: str
    start_gives_chosen: bool
    tuned_gives_chosen: bool


@dataclass
class PreferenceCheck:
    pairs: int
    mean_margin_start: float
    mean_margin_tuned: float
    margin_grew: int  # pairs whose margin grew
    tuned_chosen: int  # greedy answers that are the chosen one
    start_chosen: int
    first_loss: float | None
    last_loss: float | None
    first_accuracy: float | None
    samples: list[PairCheck] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    no_preference_loss: float | None = LN2  # the loss while chosen and rejected rank alike (None: no such level)

    def summary(self) -> str:
        lines = [
            f"margin log p(chosen) - log p(rejected) on {self.pairs} training pairs: start "
            f"{self.mean_margin_start:+.3f} -> tuned {self.mean_margin_tuned:+.3f} (grew on {self.margin_grew}/"
            f"{self.pairs})",
            f"greedy answers that are the chosen one: tuned {self.tuned_chosen}/{self.pairs}, start "
            f"{self.start_chosen}/{self.pairs}",
        ]
        if self.first_loss is not None and self.last_loss is not None:
            level = "" if self.no_preference_loss is None else f" ({self.no_preference_loss:.4f} is no preference)"
            lines.append(f"loss: {self.first_loss:.4f} -> {self.last_loss:.4f}{level}")
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


def check_learning(trainer, tokenizer, data: StageData, config: TrainConfig):
    import random

    if config.learning_check_samples <= 0:
        return None
    picked = random.Random(config.seed).sample(
        data.check_rows, min(config.learning_check_samples, len(data.check_rows))
    )
    if config.pref_loss in REFERENCE_FREE:
        from expertkit.train.reference_free import load_starting_model

        load_starting_model(trainer, config)
    model = trainer.model
    model.eval()
    samples = []
    for pair, ex in picked:
        with starting_model(trainer) as start:
            m_start = pair_margin(start, ex)
            g_start = greedy(start, tokenizer, ex["prompt_ids"], len(ex["chosen_ids"]))
        m_tuned = pair_margin(model, ex)
        g_tuned = greedy(model, tokenizer, ex["prompt_ids"], len(ex["chosen_ids"]))
        chosen = tokenizer.decode(ex["chosen_ids"], skip_special_tokens=True)
        samples.append(
            PairCheck(
                pair.source,
                pair.prompt[-1].content,
                pair.chosen.content,
                m_start,
                m_tuned,
                g_start,
                g_tuned,
                _same(g_start, chosen),
                _same(g_tuned, chosen),
            )
        )
    check = summarise(samples, trainer.state.log_history, config)
    write_json_atomic(Path(config.output_dir) / LEARNING_CHECK, asdict(check))
    logger.info("learning check (saved to learning_check.json):\n%s", check.summary())
    return check


class starting_model:  # noqa: N801  (a context manager named for what it yields)
    """The model as it was before training: the reference copy, the frozen LoRA copy, or the adapter disabled."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.model = trainer.model
        self.restore = None

    def __enter__(self):
        if getattr(self.trainer, "ref_model", None) is not None:  # reference-free trainers have no such attribute
            return self.trainer.ref_model
        if REF_ADAPTER in getattr(self.model, "peft_config", {}):
            self.restore = self.model.active_adapter
            self.model.set_adapter(REF_ADAPTER)
            return self.model
        self.restore = self.model.disable_adapter()
        self.restore.__enter__()
        return self.model

    def __exit__(self, *exc):
        if isinstance(self.restore, str):
            self.model.set_adapter(self.restore)
        elif self.restore is not None:
            self.restore.__exit__(*exc)
        return False


def answer_logp(model, prompt_ids: list[int], answer_ids: list[int]) -> float:
    """log p(answer | prompt), summed over the answer's tokens."""
    import torch

    ids = torch.tensor([prompt_ids + answer_ids], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(1, ids[0, len(prompt_ids) :, None])
    return float(logps.sum())


def pair_margin(model, ex: dict) -> float:
    return answer_logp(model, ex["prompt_ids"], ex["chosen_ids"]) - answer_logp(
        model, ex["prompt_ids"], ex["rejected_ids"]
    )


def greedy(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> str:
    import torch

    ids = torch.tensor([prompt_ids], device=model.device)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max(max_new_tokens, 1),
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, len(prompt_ids) :], skip_special_tokens=True)


def _same(output: str, expected: str) -> bool:
    from expertkit.train.learning_check import answers_as_trained

    return answers_as_trained(output, expected)


def summarise(samples: list[PairCheck], log_history: list[dict], config: TrainConfig) -> PreferenceCheck:
    n = max(len(samples), 1)
    losses = [h["loss"] for h in log_history if "loss" in h]
    accuracies = [h["rewards/accuracies"] for h in log_history if "rewards/accuracies" in h]
    check = PreferenceCheck(
        pairs=len(samples),
        mean_margin_start=sum(s.margin_start for s in samples) / n,
        mean_margin_tuned=sum(s.margin_tuned for s in samples) / n,
        margin_grew=sum(s.margin_tuned > s.margin_start for s in samples),
        tuned_chosen=sum(s.tuned_gives_chosen for s in samples),
        start_chosen=sum(s.start_gives_chosen for s in samples),
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
        first_accuracy=accuracies[0] if accuracies else None,
        samples=samples,
        no_preference_loss=no_preference_loss(config),
    )
    check.warnings = preference_warnings(check, losses, config)
    return check


def no_preference_loss(config: TrainConfig) -> float | None:
    """The loss while the model ranks chosen and rejected alike: ln 2 for DPO (policy = reference at step 1),
    log(1 + e^simpo_gamma) for simpo at equal average log-probabilities; none for orpo (its SFT term is in it)."""
    if config.pref_loss == "simpo":
        return None if config.pref_ftx else math.log1p(math.exp(config.simpo_gamma))
    return None if config.pref_loss == "orpo" else LN2


def preference_warnings(check: PreferenceCheck, losses: list[float], config: TrainConfig) -> list[str]:
    """Likely causes when preference tuning did not work, each with the key to change."""
    warnings = []
    reference = config.pref_loss not in REFERENCE_FREE
    # DPO's beta holds the model near the reference; orpo's and simpo's scales the preference term itself
    beta = "lower pref_beta" if reference else "raise pref_beta (it scales the preference term)"
    if check.pairs and check.margin_grew <= check.pairs // 2:
        warnings.append(
            f"the margin chosen - rejected grew on only {check.margin_grew}/{check.pairs} checked pairs "
            f"({check.mean_margin_start:+.3f} -> {check.mean_margin_tuned:+.3f}): train longer (num_train_epochs="
            f"{config.num_train_epochs * 3:g}) or raise learning_rate (now {config.learning_rate:g}; try "
            f"{config.learning_rate * 4:g}), or {beta} (now {config.pref_beta:g})"
        )
    level = check.no_preference_loss
    if level is not None and len(losses) >= 2 and all(abs(x - level) < 0.01 for x in losses):
        name = "ln 2 = " if level == LN2 else ""
        warnings.append(
            f"the loss stayed at {name}{level:.3f} (no preference learnt): answers cut to nothing by cutoff_len "
            f"({config.cutoff_len}; raise it), identical chosen and rejected answers, or a learning_rate too low "
            f"(now {config.learning_rate:g})"
        )
    # without a reference, accuracy 1.0 at step 1 is only the starting model's own ranking
    if reference and check.first_accuracy == 1.0 and losses and losses[0] < LN2 - 0.05:
        warnings.append(
            "accuracy was 1.0 and the loss below ln 2 at the first step: the reference is not the starting policy, "
            "or the chosen answers leak into the prompts; check the header's reference line and the data"
        )
    return warnings
