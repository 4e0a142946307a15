"""pref_loss orpo and simpo (stage dpo): LLaMA-Factory's reference-free losses, on TRL's ORPOTrainer and CPOTrainer.

    expertkit train examples/train/qwen2.5-0.5b-instruct_lora_orpo.yaml
    expertkit train examples/train/qwen2.5-0.5b-instruct_lora_dpo.yaml pref_loss=simpo simpo_gamma=0.5

LLaMA-Factory computes both in its DPO trainer, with no reference model, from each answer's *average* token
log-probability (answer tokens only) logp(y); per pair, then averaged over the batch:

    orpo:   -logp(chosen) + pref_beta * -log sigmoid(odds(chosen) - odds(rejected))
            with odds(y) = logp(y) - log(1 - e^logp(y))
    simpo:  -log sigmoid(pref_beta * (logp(chosen) - logp(rejected)) - simpo_gamma)
    both:   + pref_ftx * -logp(chosen);   rewards/chosen = pref_beta * logp(chosen) (rejected alike)

TRL's ORPOTrainer computes the same odds-ratio term (its beta is pref_beta) and its CPOTrainer with loss_type simpo
the same SimPO term (beta, simpo_gamma), with the same rewards. Their SFT terms differ from LLaMA-Factory's: ORPO's
is the cross-entropy over the prompt *and* the answer of the chosen sequences, CPO's (weighted cpo_alpha) the
cross-entropy over all chosen answer tokens of the batch (a mean over tokens, so long answers weigh more). Both are
swapped here for LLaMA-Factory's: the batch mean of -logp(chosen), weighted 1 + pref_ftx (orpo) or pref_ftx (simpo).
The `nll_loss` TRL logs is then that term (orpo: weight included; simpo: before
the pref_ftx weight).

No reference model is loaded. The learning check compares with the starting model, loaded for it after training:
the base with the adapter disabled (a new LoRA adapter), adapter_name_or_path's weights as a second adapter (a
continued one), or a copy of model_name_or_path from disk (full and freeze).
"""

from __future__ import annotations

import warnings

from expertkit.train.config import TrainConfig
from expertkit.train.dpo import PREFERENCE_ARGS, REF_ADAPTER, preference_trainer, reference_copy
from expertkit.train.run import Precision, StageData, training_arguments


def build_trainer(config: TrainConfig, model, tokenizer, data: StageData, precision: Precision):
    trainer_class, args_class, loss_args = trl_trainer(config.pref_loss)
    # no reference, so no reference log-probs to precompute; the pairs are cut already (TRL only warns when unset)
    stage_args = {k: v for k, v in PREFERENCE_ARGS.items() if k != "precompute_ref_log_probs"}
    stage_args["max_length"] = config.cutoff_len
    if config.pref_loss == "simpo":
        loss_args.update(simpo_gamma=config.simpo_gamma, cpo_alpha=config.pref_ftx)
    args = training_arguments(config, precision, args_class, beta=config.pref_beta, **loss_args, **stage_args)
    with quiet_maps():
        trainer = preference_trainer(trainer_class, config, model, tokenizer, data, args, reference=False)
    trainer.sft_weight = 1 + config.pref_ftx if config.pref_loss == "orpo" else 1.0
    return trainer


def trl_trainer(pref_loss: str):
    """The TRL trainer class that computes `pref_loss`, made to read our pairs and use LLaMA-Factory's SFT term."""
    with warnings.catch_warnings():  # the module is experimental in TRL 1.16; the docs say which trainer runs
        warnings.filterwarnings("ignore", message="You are importing from 'trl.experimental'")
        from trl.experimental.cpo import CPOConfig, CPOTrainer
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    class PretokenizedPairs:
        sft_weight = 1.0  # orpo: 1 + pref_ftx; simpo: 1 (CPO weighs the term by cpo_alpha = pref_ftx)
        loss_is_scaled_for_ga = False  # a mean over the micro-batch's pairs: transformers divides by accumulation

        def tokenize_row(self, feature, model=None):
            return pair_columns(feature)  # already prompt_ids / chosen_ids / rejected_ids, cut as LLaMA-Factory cuts

        def concatenated_forward(self, model, batch):
            # (chosen logps, rejected logps, chosen logits, rejected logits, TRL's SFT term[, aux loss]); the logps
            # are per-answer averages for both losses
            out = super().concatenated_forward(model, batch)
            return (*out[:4], self.sft_weight * -out[0].mean(), *out[5:])

        def _track_num_input_tokens(self, inputs):
            # TRL's legacy collator has no input_ids: count both sequences of each pair, as stage dpo counts them
            tokens = inputs["chosen_attention_mask"].sum() + inputs["rejected_attention_mask"].sum()
            super()._track_num_input_tokens({getattr(self.model, "main_input_name", "input_ids"): None,
                                             "attention_mask": tokens})  # fmt: skip

    if pref_loss == "orpo":

        class PretokenizedORPOTrainer(PretokenizedPairs, ORPOTrainer):
            pass

        return PretokenizedORPOTrainer, ORPOConfig, {}

    class PretokenizedCPOTrainer(PretokenizedPairs, CPOTrainer):
        pass

    return PretokenizedCPOTrainer, CPOConfig, {"loss_type": "simpo"}


class quiet_maps:  # noqa: N801  (a context manager named for what it does)
    """The TRL trainers map the dataset three times while they are built (nothing to do for our rows but the
    columns): datasets' progress bars only on a TTY, like the training progress."""

    def __enter__(self):
        import sys

        import datasets

        self.restore = datasets.is_progress_bar_enabled() and not sys.stderr.isatty()
        if self.restore:
            datasets.disable_progress_bars()

    def __exit__(self, *exc):
        import datasets

        if self.restore:
            datasets.enable_progress_bars()
        return False


def pair_columns(example: dict) -> dict:
    """Our pair as the columns TRL's ORPO / CPO collator pads: each side is prompt + answer, labels only the answer."""
    prompt, ignore = example["prompt_ids"], [-100] * len(example["prompt_ids"])
    columns = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side in ("chosen", "rejected"):
        answer = example[f"{side}_ids"]
        columns[f"{side}_input_ids"] = prompt + answer
        columns[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
        columns[f"{side}_labels"] = ignore + answer
    return columns


def describe_loss(config: TrainConfig) -> str:
    """The header's preference line."""
    ftx = f" + {config.pref_ftx:g} x SFT on chosen" if config.pref_ftx else ""
    if config.pref_loss == "orpo":
        return f"orpo (TRL's ORPOTrainer): SFT on chosen + {config.pref_beta:g} x odds-ratio loss{ftx}"
    return f"simpo (TRL's CPOTrainer), beta {config.pref_beta:g}, gamma {config.simpo_gamma:g}{ftx}"


def load_starting_model(trainer, config: TrainConfig) -> None:
    """For the learning check: training kept no starting model, so bring it back (after the result is saved).

    `dpo.starting_model` then finds it where a DPO run keeps its reference: `trainer.ref_model` (full, freeze) or
    the frozen adapter REF_ADAPTER (a continued LoRA adapter); a new adapter's start is the base, adapter disabled.
    """
    if config.finetuning_type != "lora":
        trainer.ref_model = reference_copy(config, trainer.model)
    elif config.adapter_name_or_path and REF_ADAPTER not in trainer.model.peft_config:
        trainer.model.load_adapter(config.adapter_name_or_path, adapter_name=REF_ADAPTER, is_trainable=False)
