"""After training: did it learn anything? (LLaMA-Factory#7486: "training finished but it learned nothing".)

Checks, printed and saved as learning_check.json in the run folder:
- the loss fell (first vs last logged training loss);
- the adapter is really applied (the tuned model's logits differ from the base's);
- how many of a few training prompts the tuned model answers as trained, against the base;
- the share of tokens that carried loss;
- whether the learning rate or the number of epochs look too low for the data size;
- when the tuned model answers few of them as trained: the likely causes from this run's figures (steps taken,
  learning rate, loss curve, loss tokens, cut examples), each with the key to change and a value to try
  (train/advice.py), saved under `advice`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from expertkit.core.runs import LEARNING_CHECK, write_json_atomic
from expertkit.core.schema import Conversation
from expertkit.train.advice import Advice, RunFigures, advise, learned_too_little

logger = logging.getLogger(__name__)
MATCH_CHARS = 64  # an answer counts as "as trained" when its first 64 characters match the training answer


@dataclass
class SampleCheck:
    prompt: str
    expected: str
    base: str
    tuned: str
    base_matches: bool
    tuned_matches: bool


@dataclass
class LearningCheck:
    first_loss: float | None
    last_loss: float | None
    loss_fell: bool
    adapter_applied: bool
    max_logit_change: float
    loss_token_share: float
    tuned_matches: int
    base_matches: int
    samples: list[SampleCheck] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # every advice message too, for readers of the old field
    global_step: int = 0  # optimiser steps taken
    effective_batch: int = 0  # sequences per optimiser step (batch x accumulation x devices)
    learned_too_little: bool = False
    advice: list[Advice] = field(default_factory=list)

    def summary(self) -> str:
        n = len(self.samples)
        lines = [
            f"loss: {self.first_loss:.4f} -> {self.last_loss:.4f} ({'fell' if self.loss_fell else 'DID NOT FALL'})"
            if self.first_loss is not None and self.last_loss is not None
            else "loss: not logged",
            f"weights changed: {'yes' if self.adapter_applied else 'NO'} "
            f"(max logit change {self.max_logit_change:.3g})",
            f"training prompts answered as trained: tuned {self.tuned_matches}/{n}, base {self.base_matches}/{n}",
            f"tokens carrying loss: {100 * self.loss_token_share:.1f}%",
            f"optimiser steps: {self.global_step} (effective batch {self.effective_batch})",
        ]
        advised = {a.message for a in self.advice}
        lines += [f"warning: {w}" for w in self.warnings if w not in advised]
        if self.advice:
            lines.append(
                "learned too little; likely causes in this run:"
                if self.learned_too_little
                else "warning: settings that often make a run learn nothing:"
            )
            lines += [f"  - {a.message}" for a in self.advice]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["advice"] = [a.to_dict() for a in self.advice]
        return out


def _normalise(text: str) -> str:
    return " ".join(text.split())


def answers_as_trained(output: str, expected: str) -> bool:
    out, exp = _normalise(output), _normalise(expected)
    n = min(len(exp), MATCH_CHARS)
    return n > 0 and out[:n] == exp[:n]


def greedy_answer(model, tokenizer, conv: Conversation, max_new_tokens: int) -> str:
    import torch

    prompt_ids = tokenizer.apply_chat_template(
        conv.to_dicts()[:-1], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    prompt_ids = {k: v.to(model.device) for k, v in prompt_ids.items()}
    with torch.no_grad():
        out = model.generate(
            **prompt_ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, prompt_ids["input_ids"].shape[1] :], skip_special_tokens=True)


def _logits(model, tokenizer, conv: Conversation):
    import torch

    ids = tokenizer.apply_chat_template(conv.to_dicts(), return_dict=True, return_tensors="pt")
    with torch.no_grad():
        return model(**{k: v.to(model.device) for k, v in ids.items()}).logits.float()


def run_learning_check(
    model,
    tokenizer,
    samples: list[Conversation],
    log_history: list[dict],
    config,
    rows: int,
    loss_token_share: float,
    base_model=None,
    *,
    global_step: int | None = None,
    world_size: int = 1,
    truncated: int = 0,
    dropped: int = 0,
    longest: int = 0,
) -> LearningCheck:
    """`model` is the tuned model; for LoRA the base is the same model with its adapter disabled. The keywords are
    run figures for the advice (global_step: else the last logged step; examples cut / dropped at cutoff_len)."""
    losses = [h["loss"] for h in log_history if "loss" in h]
    first, last = (losses[0], losses[-1]) if losses else (None, None)
    loss_fell = first is not None and last is not None and last < first
    checks, change = compare_samples(model, tokenizer, samples, base_model)
    steps = global_step if global_step is not None else max((h.get("step", 0) for h in log_history), default=0)
    figures = RunFigures.from_config(
        config,
        rows=rows,
        steps=steps,
        losses=losses,
        loss_token_share=loss_token_share,
        world_size=world_size,
        truncated=truncated,
        dropped=dropped,
        longest=longest,
    )
    tuned, base = sum(c.tuned_matches for c in checks), sum(c.base_matches for c in checks)
    poor = learned_too_little(tuned, base, len(checks))
    found = advise(figures, poor)
    result = LearningCheck(
        first_loss=first,
        last_loss=last,
        loss_fell=loss_fell,
        adapter_applied=change > 1e-5,
        max_logit_change=change,
        loss_token_share=loss_token_share,
        tuned_matches=tuned,
        base_matches=base,
        samples=checks,
        warnings=[a.message for a in found],
        global_step=steps,
        effective_batch=figures.effective_batch,
        learned_too_little=poor,
        advice=found,
    )
    if not result.adapter_applied and samples:
        result.warnings.insert(0, "the tuned model's outputs equal the base's: the weights did not change")
    write_json_atomic(Path(config.output_dir) / LEARNING_CHECK, result.to_dict())
    return result


def compare_samples(model, tokenizer, samples: list[Conversation], base_model=None) -> tuple[list[SampleCheck], float]:
    """Greedy answers of the tuned and the base model to each sample, and the largest logit change between them."""
    model.eval()
    checks, change = [], 0.0
    for conv in samples:
        expected = conv.messages[-1].content
        max_new = len(tokenizer(expected, add_special_tokens=False)["input_ids"]) + 8
        tuned = greedy_answer(model, tokenizer, conv, max_new)
        tuned_logits = _logits(model, tokenizer, conv)
        with _base_of(model, base_model) as base:
            base_answer = greedy_answer(base, tokenizer, conv, max_new)
            change = max(change, float((tuned_logits - _logits(base, tokenizer, conv)).abs().max()))
        checks.append(
            SampleCheck(
                conv.messages[-2].content,
                expected,
                base_answer,
                tuned,
                answers_as_trained(base_answer, expected),
                answers_as_trained(tuned, expected),
            )
        )
    return checks, change


class _base_of:
    """Context manager giving the base model: the LoRA model with adapters disabled, or a separate base."""

    def __init__(self, model, base_model):
        self.model, self.base_model, self.ctx = model, base_model, None

    def __enter__(self):
        if self.base_model is not None:
            return self.base_model
        self.ctx = self.model.disable_adapter()
        self.ctx.__enter__()
        return self.model

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)
