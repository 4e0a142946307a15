"""Stage ppo (EXPERIMENTAL): reinforcement learning of a LoRA adapter against a reward model from stage rm.

    expertkit train examples/train/qwen2.5-0.5b-instruct_lora_ppo.yaml
    expertkit train ... stage=ppo reward_model=saves/qwen2.5-0.5b/lora/reward dataset=identity

TRL 1.x no longer ships a PPOTrainer; the loop is ours (`expertkit.train.ppo_loop`). Only what differs from the
run skeleton (`expertkit.train.run`):
- the data is the prompts of instruction (sft-format) data: each conversation up to its last answer;
- the reward model (`reward_model`) is checked from its files before any weights load, then: with
  reward_model_type lora, its adapter goes onto the policy's own base beside the policy's adapter (no second copy)
  and its score head is read from the adapter file; with full, the whole reward model loads beside the policy;
- the reference is the policy with its adapter disabled; a value head (initialised from the score head) trains
  with the adapter;
- the learning check: the reward model's mean score of greedy answers to a few training prompts, start vs tuned.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from expertkit.core.errors import ExpertkitError
from expertkit.core.runs import LEARNING_CHECK, write_json_atomic
from expertkit.train.config import TrainConfig
from expertkit.train.run import Precision, StageData, refuse_empty_after_cut

logger = logging.getLogger(__name__)
REWARD_ADAPTER = "reward"
_TRAIN_ONE = "train one with stage: rm on the same model_name_or_path, then set reward_model to its output_dir"


# --- the reward model, checked from its files --------------------------------------------------------------------


def check_reward_model(config: TrainConfig) -> None:
    """Refuse a reward_model that cannot score this policy's answers, reading only small files (no weights)."""
    path = Path(config.reward_model or "").expanduser()
    if not path.is_dir():
        raise ExpertkitError(f"reward_model '{config.reward_model}' is not a folder", hint=_TRAIN_ONE)
    adapter, full = path / "adapter_config.json", path / "config.json"
    if config.reward_model_type == "lora" and not adapter.is_file():
        if full.is_file():
            raise ExpertkitError(
                f"reward_model '{path}' is a full model folder (config.json), not a LoRA adapter",
                hint="set reward_model_type: full for a whole reward model",
            )
        raise ExpertkitError(
            f"reward_model '{path}' is not a reward model run (no adapter_config.json)", hint=_TRAIN_ONE
        )
    if config.reward_model_type == "full" and not full.is_file():
        if adapter.is_file():
            raise ExpertkitError(
                f"reward_model '{path}' is a LoRA adapter, not a full model (reward_model_type is full)",
                hint="set reward_model_type: lora for a reward model trained with finetuning_type lora",
            )
        raise ExpertkitError(f"reward_model '{path}' is not a model folder (no config.json)", hint=_TRAIN_ONE)
    stage = _run_key(path, "stage")
    if stage is not None and stage != "rm":
        raise ExpertkitError(
            f"reward_model '{path}' is a stage {stage} run, not a reward model (stage rm)", hint=_TRAIN_ONE
        )
    if config.reward_model_type == "lora":
        _check_lora_reward(path, config)
    else:
        _check_full_reward(path, config)


def _check_lora_reward(path: Path, config: TrainConfig) -> None:
    from safetensors import safe_open

    cfg = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise ExpertkitError(f"reward_model '{path}' has no adapter_model.safetensors", hint=_TRAIN_ONE)
    with safe_open(str(weights), "pt") as f:
        has_head = any(k.endswith("score.weight") for k in f.keys())  # reads the header only
    if cfg.get("task_type") != "SEQ_CLS" or not has_head:
        raise ExpertkitError(
            f"reward_model '{path}' is a LoRA adapter without a score head (task_type {cfg.get('task_type')}): it "
            "generates text, it does not score it",
            hint=_TRAIN_ONE,
        )
    base = cfg.get("base_model_name_or_path") or ""
    if base and not _same_model(base, config.model_name_or_path):
        raise ExpertkitError(
            f"reward_model '{path}' was trained on another base model ({base}), not on model_name_or_path "
            f"({config.model_name_or_path}); a LoRA reward model only scores on its own base",
            hint="train the reward model on the same base (stage: rm), or point model_name_or_path at its base",
        )


def _check_full_reward(path: Path, config: TrainConfig) -> None:
    cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    archs = cfg.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs) or len(cfg.get("id2label") or [0]) != 1:
        raise ExpertkitError(
            f"reward_model '{path}' is not a reward model (architectures {', '.join(archs) or 'unknown'}); a reward "
            "model is a ...ForSequenceClassification with one output",
            hint="train one with stage: rm finetuning_type: full (or lora, with reward_model_type: lora)",
        )
    base = _run_key(path, "model_name_or_path")
    policy = Path(config.model_name_or_path).expanduser() / "config.json"
    ours = json.loads(policy.read_text(encoding="utf-8")) if policy.is_file() else {}
    differs = [k for k in ("vocab_size", "hidden_size") if k in ours and ours[k] != cfg.get(k)]
    if differs or (base and not _same_model(base, config.model_name_or_path)):
        what = f"its {differs[0]} is {cfg.get(differs[0])}, the policy's {ours[differs[0]]}" if differs else base
        raise ExpertkitError(
            f"reward_model '{path}' was trained on another base model ({what}), not on {config.model_name_or_path}",
            hint="train the reward model on the same base (stage: rm), or point model_name_or_path at its base",
        )


def _run_key(path: Path, key: str):
    """A key of the run's expertkit_config.yaml (None when the folder is not an expertkit run)."""
    import yaml

    from expertkit.core.runs import RESOLVED_CONFIG

    f = path / RESOLVED_CONFIG
    return (yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get(key) if f.is_file() else None


def _same_model(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.resolve() == pb.resolve() if pa.exists() and pb.exists() else a.rstrip("/") == b.rstrip("/")


# --- data: the prompts of instruction data -----------------------------------------------------------------------


def prepare_data(config: TrainConfig, tokenizer) -> StageData:
    from expertkit.model.render import render_pair
    from expertkit.train.sft import load_conversations

    check_reward_model(config)  # before anything heavy: the data and the model wait for a usable reward model
    train_rows, val_rows = load_conversations(config)
    if val_rows:
        logger.warning("stage ppo has no validation: the %d validation rows (val_size) are not used", len(val_rows))
    examples, dropped, longest, check_rows = [], [], 0, []
    for conv in train_rows:
        answer = next(i for i in range(len(conv.messages) - 1, -1, -1) if conv.messages[i].role == "assistant")
        prompt_ids, _ = render_pair(tokenizer, conv.messages[:answer], conv.messages[answer], conv.tools, conv.source)
        longest = max(longest, len(prompt_ids))
        if len(prompt_ids) >= config.cutoff_len:  # a cut prompt would lose its generation prompt
            dropped.append(conv.source or "?")
            continue
        examples.append({"prompt_ids": prompt_ids})
        check_rows.append((conv.source, prompt_ids))
    refuse_empty_after_cut(examples, dropped, config, "train", "prompt")
    header = {
        "rows": f"{len(examples)} prompts ({len(dropped)} longer than cutoff_len dropped), from {len(train_rows)} "
        "conversations (their answers are not used)",
        "sequences": f"longest prompt {longest} tokens + up to max_new_tokens {config.max_new_tokens} sampled",
    }
    return StageData(examples, [], header, longest + config.max_new_tokens, check_rows)


# --- model: policy + value head, reference and reward model ------------------------------------------------------


def build_trainer(config: TrainConfig, model, tokenizer, data: StageData, precision: Precision):
    import torch

    from expertkit.train.ppo_loop import PPOTrainer
    from expertkit.train.run import run_callbacks, training_arguments

    reward, head_weight = load_reward(config, model, tokenizer, precision)
    hidden = head_weight.shape[-1]
    value_head = torch.nn.Linear(hidden, 1).to(model.device)
    with torch.no_grad():  # start from the score head: values begin on the reward's scale (TRL's advice)
        value_head.weight.copy_(head_weight.float())
        value_head.bias.zero_()
    trainer = PPOTrainer(
        config, model, value_head, tokenizer, data.train_set, reward, training_arguments(config, precision),
        run_callbacks(config),
    )  # fmt: skip
    data.stats = starting_answers(trainer, data, config)  # before training: what the learning check compares to
    return trainer


def load_reward(config: TrainConfig, model, tokenizer, precision: Precision):
    """(scorer, score head weight): a callable giving one score per row, and the head the value head starts from."""
    pad = tokenizer.pad_token_id  # stage rm read its score at the last token that is not this one
    if config.reward_model_type == "lora":
        head = attach_reward_adapter(model, Path(config.reward_model))
        backbone = model.get_base_model().base_model

        def score_lora(input_ids, attention_mask, position_ids):
            model.set_adapter(REWARD_ADAPTER, inference_mode=True)
            try:
                out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
            finally:
                model.set_adapter("default")  # the policy's adapter trains again, the reward's stays frozen
            return _at_last_token(head(out.last_hidden_state.float()).squeeze(-1), input_ids, pad)

        return score_lora, head.weight.detach()

    from expertkit.model.load import load_model

    rm = load_model(config.reward_model, precision.load_dtype, config.trust_remote_code, str(model.device), "score")
    rm.eval().requires_grad_(False)

    def score_full(input_ids, attention_mask, position_ids):
        out = rm.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return _at_last_token(rm.score(out.last_hidden_state).float().squeeze(-1), input_ids, pad)

    return score_full, rm.score.weight.detach()


def _at_last_token(scores, input_ids, pad_id: int):
    """The score at each row's last token that is not padding: where stage rm (transformers) read it in training."""
    import torch

    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = (positions * (input_ids != pad_id)).argmax(-1)
    return scores[torch.arange(len(scores), device=scores.device), last]


def attach_reward_adapter(model, path: Path):
    """The stage rm adapter as a second, frozen adapter of the policy's model, and its score head (a Linear)."""
    import torch
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file

    lora = LoraConfig.from_pretrained(str(path))
    lora.task_type, lora.modules_to_save, lora.inference_mode = "CAUSAL_LM", None, True
    weights = load_file(str(path / "adapter_model.safetensors"))
    head_keys = [k for k in weights if ".score." in k]
    model.add_adapter(REWARD_ADAPTER, lora)
    set_peft_model_state_dict(model, {k: v for k, v in weights.items() if k not in head_keys}, REWARD_ADAPTER)
    model.set_adapter("default")
    w = next(weights[k] for k in head_keys if k.endswith("weight"))
    bias = next((weights[k] for k in head_keys if k.endswith("bias")), None)
    head = torch.nn.Linear(w.shape[1], 1, bias=bias is not None).to(model.device)
    head.requires_grad_(False)
    with torch.no_grad():
        head.weight.copy_(w.float())
        if bias is not None:
            head.bias.copy_(bias.float())
    return head


def header_lines(config: TrainConfig, trainer) -> dict[str, str]:
    kind = "LoRA adapter on this base" if config.reward_model_type == "lora" else "full model"
    return {
        "EXPERIMENTAL": "stage ppo is our own compact PPO loop (TRL 1.x has none); check the rewards plot",
        "reward model": f"{config.reward_model} ({kind})",
        "reference": "the same model with the adapter disabled",
        "rollouts": f"{trainer.rollouts_per_step} prompts per step, answers sampled with max_new_tokens "
        f"{config.max_new_tokens}, top_k {config.top_k}, top_p {config.top_p:g}, temperature {config.temperature:g}",
        "ppo": f"{config.ppo_epochs} epochs per step, adaptive KL to ppo_target {config.ppo_target:g}, clip 0.2, "
        f"value loss weight 0.1, score norm {'on' if config.ppo_score_norm else 'off'}, whitened rewards "
        f"{'on' if config.ppo_whiten_rewards else 'off'}",
    }


# --- learning check ----------------------------------------------------------------------------------------------


@dataclass
class PromptScore:
    source: str
    start_answer: str
    tuned_answer: str
    start_score: float
    tuned_score: float


@dataclass
class PPOCheck:
    prompts: int
    mean_score_start: float
    mean_score_tuned: float
    samples: list[PromptScore] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        line = (
            f"reward model's mean score of greedy answers to {self.prompts} training prompts: start "
            f"{self.mean_score_start:+.3f} -> tuned {self.mean_score_tuned:+.3f}"
        )
        return "\n".join([line] + [f"warning: {w}" for w in self.warnings])


def _picked(data: StageData, config: TrainConfig) -> list:
    import random

    n = min(config.learning_check_samples, len(data.check_rows))
    return random.Random(config.seed).sample(data.check_rows, n)


def greedy_scores(trainer, prompts: list[list[int]]) -> list[tuple[str, float]]:
    """(answer text, reward model score) of the policy's greedy answer to each prompt."""
    import torch

    from expertkit.train.ppo_loop import build_batch

    model, tokenizer = trainer.model, trainer.tokenizer
    was_training = model.training
    model.eval()
    results = []
    for prompt in prompts:
        ids = torch.tensor([prompt], device=model.device)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, use_cache=True,
                max_new_tokens=trainer.config.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=trainer.eos_ids,
            )[0, len(prompt) :].tolist()  # fmt: skip
            answer = out[: next((i + 1 for i, t in enumerate(out) if t in trainer.eos_ids), len(out))]
            batch = build_batch([prompt], [answer], tokenizer.pad_token_id, model.device)
            score = float(trainer.reward(batch.input_ids, batch.attention_mask, batch.position_ids)[0])
        results.append((tokenizer.decode(answer, skip_special_tokens=True), score))
    model.train(was_training)
    return results


def starting_answers(trainer, data: StageData, config: TrainConfig) -> list[tuple[str, float]]:
    if config.learning_check_samples <= 0:
        return []
    return greedy_scores(trainer, [prompt for _, prompt in _picked(data, config)])


def check_learning(trainer, tokenizer, data: StageData, config: TrainConfig):
    if config.learning_check_samples <= 0:
        return None
    picked = _picked(data, config)
    tuned = greedy_scores(trainer, [prompt for _, prompt in picked])
    samples = [
        PromptScore(source, a0, a1, s0, s1) for (source, _), (a0, s0), (a1, s1) in zip(picked, data.stats or [], tuned)
    ]
    n = max(len(samples), 1)
    check = PPOCheck(
        prompts=len(samples),
        mean_score_start=sum(s.start_score for s in samples) / n,
        mean_score_tuned=sum(s.tuned_score for s in samples) / n,
        samples=samples,
    )
    if samples and check.mean_score_tuned <= check.mean_score_start:
        check.warnings.append(
            f"the reward model scores the tuned answers no higher than the starting ones ({check.mean_score_start:+.3f}"
            f" -> {check.mean_score_tuned:+.3f}): train longer (max_steps), raise learning_rate (now "
            f"{config.learning_rate:g}), or check the reward model (its learning_check.json)"
        )
    write_json_atomic(Path(config.output_dir) / LEARNING_CHECK, asdict(check))
    logger.info("learning check (saved to learning_check.json):\n%s", check.summary())
    return check
