"""Our PPO loop for stage ppo (EXPERIMENTAL). TRL 1.x removed its PPOTrainer, so this is a compact one that reads
top to bottom. One step, `PPOTrainer.ppo_step`:

1. rollout: the policy (the LoRA adapter on) samples an answer to each of the step's prompts;
2. score: the reward model scores prompt + answer, one number per answer, read at its last token;
3. KL penalty: on every answer token, reward = -kl_coef * (log p_policy - log p_reference), the reference being the
   same model with the adapter off (no second copy); the score is added on the answer's last token;
4. advantages: GAE (gamma 1, lambda 0.95) over a value head's estimates, then whitened;
5. ppo_epochs passes over the step's rollouts in minibatches: clipped policy loss + 0.1 x clipped value loss;
6. the adaptive KL controller moves kl_coef so that the KL drifts towards ppo_target.

The constants are TRL 0.x PPOConfig's defaults, as LLaMA-Factory's PPO uses them (it does not expose them).
Checkpoints hold the adapter, value head, optimiser, schedule, RNG and controller state, so a killed run resumes
where it stopped; trainer_log.jsonl and the progress lines come from the same callbacks as every other stage.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

logger = logging.getLogger(__name__)

CLIP_RANGE = 0.2  # how far one update may move an answer token's probability ratio from 1
CLIP_RANGE_VALUE = 0.2
VALUE_COEF = 0.1  # weight of the value loss in the total loss
GAMMA, LAM = 1.0, 0.95  # GAE discount and bias-variance trade-off
INIT_KL_COEF = 0.2
KL_HORIZON = 10_000  # the adaptive controller's time constant, in rollouts
VALUE_HEAD = "value_head.safetensors"
PPO_STATE = "ppo_state.pt"


class RewardScorer(Protocol):
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor):
        """One score per row (a float tensor of shape [rows])."""


# --- the pieces of one step, as plain functions of tensors ------------------------------------------------------


@dataclass
class Batch:
    """Prompts left-padded to `width` columns, answers right-padded after them: every answer starts at `width`."""

    input_ids: torch.Tensor  # [rows, width + answer columns]
    attention_mask: torch.Tensor
    position_ids: torch.Tensor  # as generate() counts them: padding does not shift the positions
    width: int
    answer_mask: torch.Tensor  # [rows, answer columns], 1.0 on answer tokens

    @property
    def answer_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.width :]


def build_batch(prompts: list[list[int]], answers: list[list[int]], pad_id: int, device) -> Batch:
    width, longest = max(map(len, prompts)), max(map(len, answers))
    rows, masks, answer_masks = [], [], []
    for p, a in zip(prompts, answers):
        left, right = width - len(p), longest - len(a)
        rows.append([pad_id] * left + p + a + [pad_id] * right)
        masks.append([0] * left + [1] * (len(p) + len(a)) + [0] * right)
        answer_masks.append([1.0] * len(a) + [0.0] * right)
    mask = torch.tensor(masks, device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(torch.tensor(rows, device=device), mask, positions, width, torch.tensor(answer_masks, device=device))


def policy_forward(model, value_head, batch: Batch, temperature: float):
    """(log-probabilities of the answer tokens, value estimates before each of them), each [rows, answer columns].

    One pass through the backbone serves both: the LM head gives the token log-probabilities, the value head the
    values. Logits are divided by the sampling temperature, so the log-probabilities are those we sampled from.
    """
    backbone = model.get_base_model().base_model  # LoRA layers sit inside it: disable_adapter() applies here too
    hidden = backbone(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
    ).last_hidden_state
    n = batch.answer_mask.shape[1]
    h = hidden[:, batch.width - 1 : batch.width - 1 + n]  # the state that predicts each answer token
    logits = model.get_output_embeddings()(h).float() / temperature
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, batch.answer_ids[..., None]).squeeze(-1)
    values = value_head(h.float()).squeeze(-1) if value_head is not None else None
    return logprobs, values


def token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef: float):
    """Per-token rewards: the KL penalty on every answer token, plus the score on the answer's last token."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = mask.sum(-1).long() - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl.sum(-1)


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x, mask, shift_mean: bool = True):
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def gae(rewards, values, mask):
    """Generalised advantage estimation backwards over the answer tokens; (advantages whitened, returns)."""
    values = values * mask
    advantages, running = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        delta = rewards[:, t] + GAMMA * next_value - values[:, t]
        running = delta + GAMMA * LAM * running
        advantages[:, t] = running
    returns = advantages + values
    return whiten(advantages, mask), returns


def ppo_losses(logprobs, values, old_logprobs, old_values, advantages, returns, mask):
    """(policy loss, value loss): PPO's clipped surrogate and the clipped squared error of the values."""
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = torch.clamp(ratio, 1 - CLIP_RANGE, 1 + CLIP_RANGE)
    policy_loss = masked_mean(torch.max(-advantages * ratio, -advantages * clipped), mask)
    values_clipped = old_values + torch.clamp(values - old_values, -CLIP_RANGE_VALUE, CLIP_RANGE_VALUE)
    value_loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (values_clipped - returns) ** 2), mask)
    return policy_loss, value_loss


@dataclass
class KLController:
    """Adaptive KL penalty (Ziegler et al. 2019): raise kl_coef while the KL is above target, lower it below."""

    target: float
    value: float = INIT_KL_COEF

    def update(self, kl: float, rollouts: int) -> None:
        error = max(min(kl / self.target - 1, 0.2), -0.2)
        self.value *= 1 + error * rollouts / KL_HORIZON


@dataclass
class RunningMoments:
    """Running mean and standard deviation of the scores (ppo_score_norm), merged batch by batch."""

    mean: float = 0.0
    var: float = 1.0
    count: float = 1e-24

    def normalise(self, scores):
        n = len(scores)
        batch_mean, batch_var = float(scores.mean()), float(scores.var(unbiased=False))
        delta, total = batch_mean - self.mean, self.count + n
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.mean, self.count = self.mean + delta * n / total, total
        return (scores - self.mean) / (math.sqrt(self.var * total / max(total - 1, 1)) + 1e-8)


# --- the loop ------------------------------------------------------------------------------------------------------


class PPOTrainer:
    """Trains the policy's LoRA adapter and a value head with PPO; the run skeleton drives it like a Trainer
    (`train`, `state`, `args`, `model`, `save_state`, `_load_from_checkpoint`)."""

    is_deepspeed_enabled = False  # multi-process PPO is refused (train/config.py): never under DeepSpeed
    is_fsdp_enabled = False  # nor under FSDP

    def __init__(self, config, model, value_head, tokenizer, prompts, reward: RewardScorer, args, callbacks):
        from transformers import DefaultFlowCallback, Trainer, TrainerControl, TrainerState, get_scheduler
        from transformers.trainer_callback import CallbackHandler

        from expertkit.train.resume import planned_steps

        self.config, self.model, self.value_head, self.tokenizer = config, model, value_head, tokenizer
        self.train_dataset, self.reward, self.args = prompts, reward, args
        self.rollouts_per_step = (
            config.per_device_train_batch_size * config.gradient_accumulation_steps * config.ppo_buffer_size
        )
        self.steps_per_epoch = math.ceil(len(prompts) / self.rollouts_per_step)
        max_steps = planned_steps(config, len(prompts))
        params = [p for p in model.parameters() if p.requires_grad] + list(value_head.parameters())
        optim_class, optim_kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
        self.optimizer = optim_class([{"params": params, "weight_decay": config.weight_decay}], **optim_kwargs)
        warmup = config.warmup_steps or math.ceil(config.warmup_ratio * max_steps)
        self.scheduler = get_scheduler(config.lr_scheduler_type, self.optimizer, warmup, max_steps)
        self.kl = KLController(config.ppo_target)
        self.moments = RunningMoments()
        self.state = TrainerState(
            max_steps=max_steps, logging_steps=config.logging_steps, save_steps=config.save_steps, train_batch_size=1
        )
        self.control = TrainerControl()
        # transformers' flow callback only sets flags this loop does not read; without it the handler warns
        handlers = [DefaultFlowCallback, *callbacks]
        self.callback_handler = CallbackHandler(handlers, model, tokenizer, self.optimizer, self.scheduler)
        generation_eos = model.generation_config.eos_token_id
        eos = {tokenizer.eos_token_id, *(generation_eos if isinstance(generation_eos, list) else [generation_eos])}
        self.eos_ids = sorted(eos - {None})  # the tokenizer's and the model's end tokens (a chat's end of turn)
        self.autocast = torch.autocast(model.device.type, torch.bfloat16 if args.bf16 else torch.float16)
        self.mixed = args.bf16 or args.fp16

    # the run skeleton's view ---------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | None = None):
        from transformers.trainer_utils import TrainOutput

        if resume_from_checkpoint:
            self._load_from_checkpoint(resume_from_checkpoint, with_training_state=True)
        start, started = self.state.global_step, time.time()
        self.callback_handler.on_train_begin(self.args, self.state, self.control)
        for step in range(start, self.state.max_steps):
            stats = self.ppo_step(self.prompts_of_step(step))
            self.state.global_step = step + 1
            self.state.epoch = (step + 1) / self.steps_per_epoch
            self.callback_handler.on_step_end(self.args, self.state, self.control)
            if (step + 1) % self.config.logging_steps == 0 or step == start:
                self.log(stats)
            if (step + 1) % self.config.save_steps == 0 or step + 1 == self.state.max_steps:
                self.save_checkpoint()
        self.callback_handler.on_train_end(self.args, self.state, self.control)
        losses = [h["loss"] for h in self.state.log_history if "loss" in h]
        runtime = time.time() - started
        train_loss = sum(losses) / len(losses) if losses else float("nan")
        return TrainOutput(self.state.global_step, train_loss, {"train_loss": train_loss, "train_runtime": runtime})

    def prompts_of_step(self, step: int) -> list[list[int]]:
        """The same prompts for a step whether the run was resumed or not: a fresh shuffle per epoch, by seed."""
        epoch, index = divmod(step, self.steps_per_epoch)
        order = list(range(len(self.train_dataset)))
        random.Random(self.config.seed + epoch).shuffle(order)
        picked = order[index * self.rollouts_per_step : (index + 1) * self.rollouts_per_step]
        return [self.train_dataset[i]["prompt_ids"] for i in picked]

    # one PPO step ------------------------------------------------------------------------------------------------

    def ppo_step(self, prompts: list[list[int]]) -> dict[str, float]:
        self.model.eval()
        answers = self.sample_answers(prompts)
        batch = build_batch(prompts, answers, self.tokenizer.pad_token_id, self.model.device)
        with torch.no_grad(), self.mixed_precision():
            old_logprobs, old_values = policy_forward(self.model, self.value_head, batch, self.config.temperature)
            with self.model.disable_adapter():
                ref_logprobs, _ = policy_forward(self.model, None, batch, self.config.temperature)
            raw_scores = self.reward(batch.input_ids, batch.attention_mask, batch.position_ids).float()
        scores = self.moments.normalise(raw_scores) if self.config.ppo_score_norm else raw_scores
        mask = batch.answer_mask
        rewards, kl = token_rewards(scores, old_logprobs, ref_logprobs, mask, self.kl.value)
        if self.config.ppo_whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, old_values, mask)
        self.model.train()
        stats = self.optimise(batch, old_logprobs, old_values, advantages, returns)
        self.scheduler.step()  # once per PPO step, as LLaMA-Factory does
        mean_kl = float(kl.mean())
        stats.update(
            {
                "rewards/score": float(raw_scores.mean()),
                "kl": mean_kl,
                "kl_coef": self.kl.value,
                "answer_length": float(mask.sum(-1).mean()),
            }
        )
        self.kl.update(mean_kl, len(prompts))
        self.state.num_input_tokens_seen += int(batch.attention_mask.sum())
        return stats

    @torch.no_grad()
    def sample_answers(self, prompts: list[list[int]]) -> list[list[int]]:
        """Sample one answer per prompt; each ends at its first end-of-turn token (kept) or at max_new_tokens."""
        pad = self.tokenizer.pad_token_id
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device)
        c = self.config
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            max_new_tokens=c.max_new_tokens,
            top_k=c.top_k,
            top_p=c.top_p,
            temperature=c.temperature,
            pad_token_id=pad,
            eos_token_id=self.eos_ids,
            use_cache=True,
        )
        answers = []
        for row in out[:, width:].tolist():
            end = next((i + 1 for i, t in enumerate(row) if t in self.eos_ids), len(row))
            answers.append(row[:end])
        return answers

    def optimise(self, batch: Batch, old_logprobs, old_values, advantages, returns) -> dict[str, float]:
        """ppo_epochs passes over the rollouts, shuffled; an optimiser step per effective batch."""
        c = self.config
        rows, micro = batch.input_ids.shape[0], c.per_device_train_batch_size
        totals = {"loss": 0.0, "policy_loss": 0.0, "value_loss": 0.0, "grad_norm": 0.0}
        updates = micros = 0
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for _ in range(c.ppo_epochs):
            order = torch.randperm(rows).tolist()
            for start in range(0, rows, micro * c.gradient_accumulation_steps):
                group = order[start : start + micro * c.gradient_accumulation_steps]
                for i in range(0, len(group), micro):
                    idx = torch.tensor(group[i : i + micro], device=batch.input_ids.device)
                    part = Batch(
                        batch.input_ids[idx],
                        batch.attention_mask[idx],
                        batch.position_ids[idx],
                        batch.width,
                        batch.answer_mask[idx],
                    )
                    with self.mixed_precision():
                        logprobs, values = policy_forward(self.model, self.value_head, part, c.temperature)
                    policy_loss, value_loss = ppo_losses(
                        logprobs, values, old_logprobs[idx], old_values[idx], advantages[idx], returns[idx],
                        part.answer_mask,
                    )  # fmt: skip
                    loss = policy_loss + VALUE_COEF * value_loss
                    (loss * len(idx) / len(group)).backward()
                    totals["loss"] += loss.item()
                    totals["policy_loss"] += policy_loss.item()
                    totals["value_loss"] += value_loss.item()
                    micros += 1
                norm = torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm if c.max_grad_norm > 0 else math.inf)
                totals["grad_norm"] += float(norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                updates += 1
        stats = {k: v / max(micros, 1) for k, v in totals.items() if k != "grad_norm"}
        stats["grad_norm"] = totals["grad_norm"] / max(updates, 1)
        return stats

    def mixed_precision(self):
        return self.autocast if self.mixed else contextlib.nullcontext()

    # logs and checkpoints ----------------------------------------------------------------------------------------

    def log(self, stats: dict[str, float]) -> None:
        logs = {**{k: round(v, 6) for k, v in stats.items()}, "learning_rate": self.scheduler.get_last_lr()[0]}
        self.state.log_history.append(
            {**logs, "epoch": round(self.state.epoch or 0.0, 4), "step": self.state.global_step}
        )
        self.callback_handler.on_log(self.args, self.state, self.control, logs)

    def save_checkpoint(self) -> None:
        """checkpoint-N: adapter, value head, optimiser, schedule, RNG and controller state, trainer_state.json;
        the callbacks then mark it complete and the oldest beyond save_total_limit go."""
        from safetensors.torch import save_file

        folder = Path(self.config.output_dir) / f"checkpoint-{self.state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder, selected_adapters=["default"])
        save_file(self.value_head.state_dict(), str(folder / VALUE_HEAD))
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")
        rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save({"kl": self.kl, "moments": self.moments, "rng": rng}, folder / PPO_STATE)
        self.state.save_to_json(str(folder / "trainer_state.json"))
        self.callback_handler.on_save(self.args, self.state, self.control)
        self.rotate_checkpoints()

    def rotate_checkpoints(self) -> None:
        import shutil

        from expertkit.train.checkpoints import list_checkpoints

        limit = self.config.save_total_limit
        complete = [d for _, d, ok in list_checkpoints(self.config.output_dir) if ok]
        for old in complete[:-limit] if limit else []:
            shutil.rmtree(old, ignore_errors=True)

    def _load_from_checkpoint(self, checkpoint: str, with_training_state: bool = False) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        from transformers import TrainerState

        folder = Path(checkpoint)
        set_peft_model_state_dict(self.model, load_file(str(folder / "adapter_model.safetensors")), "default")
        self.value_head.load_state_dict(load_file(str(folder / VALUE_HEAD)))
        if not with_training_state:
            return
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        saved = torch.load(folder / PPO_STATE, weights_only=False)  # our own file: dataclasses and RNG states
        self.kl, self.moments = saved["kl"], saved["moments"]
        random.setstate(saved["rng"]["python"])
        torch.set_rng_state(saved["rng"]["torch"])
        if "cuda" in saved["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        max_steps = self.state.max_steps
        self.state = TrainerState.load_from_json(str(folder / "trainer_state.json"))
        self.state.max_steps = max_steps  # a resumed run may plan more steps than the killed one

    def save_state(self) -> None:
        self.state.save_to_json(str(Path(self.config.output_dir) / "trainer_state.json"))
