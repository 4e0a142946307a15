"""What a user sees before long work: the run header and a peak-memory estimate with advice."""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)
GIB = 1024**3


@dataclass
class MemoryEstimate:
    weights: float  # bytes
    training_state: float  # gradients + optimiser moments of the trainable parameters
    activations: float
    available: float
    device: str

    @property
    def total(self) -> float:
        return self.weights + self.training_state + self.activations

    def fits(self) -> bool:
        return self.total <= 0.9 * self.available


def estimate_memory(
    model, trainable: int, tokens_per_step: int, gradient_checkpointing: bool, act_bytes: int
) -> MemoryEstimate:
    """Rough peak memory of one training step (weights + grads + Adam + activations of one micro-batch).

    Activations follow Korthikanti et al. 2022 (~34 x hidden bytes-per-element per token per layer without
    recomputation, ~2 x hidden with full checkpointing) plus the logits and their gradient in float32.
    """
    import torch

    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    hidden, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    state = trainable * (4 + 8)  # fp32 gradient + two Adam moments
    per_layer = (2 if gradient_checkpointing else 34) * hidden * act_bytes
    activations = tokens_per_step * (layers * per_layer + 3 * vocab * 4)
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return MemoryEstimate(weights, state, activations, float(free + weights), "GPU")
    import psutil

    return MemoryEstimate(weights, state, activations, float(psutil.virtual_memory().available + weights), "RAM")


def memory_advice(est: MemoryEstimate, batch: int, cutoff_len: int, gradient_checkpointing: bool) -> str:
    tips = []
    if batch > 1:
        tips.append(f"per_device_train_batch_size={max(batch // 2, 1)} with gradient_accumulation_steps doubled")
    if not gradient_checkpointing:
        tips.append("gradient_checkpointing=true")
    if cutoff_len > 512:
        tips.append(f"cutoff_len={cutoff_len // 2}")
    tips.append("finetuning_type=lora" if est.training_state > est.weights else "a smaller model")
    return "; ".join(tips)


def log_header(rows: dict[str, str]) -> None:
    width = max(len(k) for k in rows)
    logger.info("expertkit run\n%s", "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows.items()))
