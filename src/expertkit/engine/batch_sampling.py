"""Choosing each step's tokens for continuous batching on CPU: greedy rows by argmax, sampled rows sampled.

transformers' manager samples or takes the argmax for all its requests at once (`do_sample` is per manager), so
serving greedy and sampled requests in one batch meant sampling every row: greedy requests went through per-request
temperature / top-k 1 / top-p processors (two sorts of the vocabulary per row) and a softmax + multinomial, 12-17% of
the generation thread at 16 clients (bench/README.md, serve_throughput.py). `BatchSampler` takes the place of the
manager's processor list, and the manager takes the argmax (`do_sample=False`): greedy rows (top_k 1) pass through
untouched; only the sampled rows are warped (temperature, then top-k, then top-p, as `generate` orders them, with
transformers' own per-request warpers) and sampled, and each comes back as a row whose only finite score is the
sampled token, so the argmax picks it. An all-greedy step costs one comparison.
"""

from __future__ import annotations

KEYS = {"temperature": float, "top_k": int, "top_p": float}  # per-request kwargs, as the manager's processors take
DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}  # top_k 0: off


class BatchSampler:
    """Stands in for transformers' `ContinuousBatchingLogitsProcessorList` (the same five members the manager uses):
    one row of the manager's int32 argument storage per key (floats stored as their bits, as transformers does)."""

    tensors_required = len(KEYS)
    do_processing = True

    def __init__(self):
        from transformers import TopKLogitsWarper, TopPLogitsWarper
        from transformers.generation.continuous_batching.cb_logits_processors import (
            ContinuousBatchingTopKLogitsWarper,
            ContinuousBatchingTopPLogitsWarper,
        )

        self.top_k = ContinuousBatchingTopKLogitsWarper(TopKLogitsWarper(top_k=1))
        self.top_p = ContinuousBatchingTopPLogitsWarper(TopPLogitsWarper(top_p=0.5))

    def check_kwargs(self, kwargs: dict) -> None:
        for key, value in kwargs.items():
            if key not in KEYS:
                raise ValueError(f"unknown sampling argument {key!r}; known: {', '.join(KEYS)}")
            if not isinstance(value, KEYS[key]):
                raise TypeError(f"sampling argument {key!r} is {type(value).__name__}, expected {KEYS[key].__name__}")

    def fill_defaults(self, storage) -> None:
        for row, key in enumerate(KEYS):
            storage[row] = as_int32(key, [DEFAULTS[key]], storage.device)

    def prepare_tensor_args(self, requests_in_batch: list, arg_storage):
        """Each request that gets a token this step, in order: its temperature, top_k and top_p."""
        kwargs = [r.state.logit_processor_kwargs for r in requests_in_batch if r.has_new_token]
        if kwargs:
            for row, key in enumerate(KEYS):
                values = [k.get(key, DEFAULTS[key]) for k in kwargs]
                arg_storage[row, : len(values)] = as_int32(key, values, arg_storage.device)
        return arg_storage

    def __call__(self, input_ids, scores, args):
        """`scores` [rows, vocab] -> the same, with each sampled row replaced by its sampled token's one-hot scores."""
        import torch

        n = scores.size(0)
        sampled = (args[1, :n] != 1).nonzero().flatten()
        if sampled.numel() == 0:  # all greedy: the manager's argmax
            return scores
        rows = scores.index_select(0, sampled)
        temperature = args[0, :n].view(torch.float32).index_select(0, sampled)
        if (temperature != 1.0).any():
            rows = rows / temperature.unsqueeze(-1)
        top_k = args[1, :n].index_select(0, sampled)
        if ((top_k > 0) & (top_k < rows.size(-1))).any():
            rows = self.top_k(rows, torch.where(top_k > 0, top_k, rows.size(-1)))
        top_p = args[2, :n].index_select(0, sampled)
        if (top_p.view(torch.float32) < 1.0).any():
            rows = self.top_p(rows, top_p)
        tokens = torch.multinomial(torch.softmax(rows, dim=-1), num_samples=1)
        chosen = torch.full_like(rows, float("-inf")).scatter_(1, tokens, 0.0)
        return scores.index_copy(0, sampled, chosen)


def as_int32(key: str, values: list, device):
    """A key's values as the manager's int32 argument storage holds them: ints as they are, floats as their bits."""
    import torch

    dtype = torch.float32 if KEYS[key] is float else torch.int32
    return torch.tensor(values, dtype=dtype).view(torch.int32).to(device)
