"""Batches: padding-free (every example of a batch concatenated into one row) or padded, and packing.

Padding-free rows carry `position_ids` that restart at 0 for each example and no attention mask;
transformers then builds a block-diagonal causal mask (or uses flash-attention's varlen path), so each
example attends only to itself and no compute is spent on padding.

`loss_logits_only`: the row also says which positions have a label after them (`logits_to_keep`) and those
labels (`shift_labels`), so the model runs its LM head and the loss on those positions alone, not on the prompt
tokens, whose logits the loss never reads: the same loss, less work (bench/README.md "where the time goes").
"""

from __future__ import annotations

from typing import Any

from expertkit.model.render import IGNORE_INDEX


def _segments(feature: dict[str, Any]) -> list[tuple[list[int], list[int]]]:
    """A feature is one example, or a packed group of examples (`segments` holds their lengths)."""
    ids, labels = feature["input_ids"], feature["labels"]
    out, start = [], 0
    for length in feature.get("segments") or [len(ids)]:
        out.append((ids[start : start + length], labels[start : start + length]))
        start += length
    return out


class PaddingFreeCollator:
    """Concatenate a batch into one row; position ids restart per example."""

    def __init__(self, loss_logits_only: bool = False, pad_to_multiple_of: int = 0, pad_token_id: int = 0):
        self.loss_logits_only = loss_logits_only
        self.multiple, self.pad_token_id = pad_to_multiple_of, pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids, labels, positions = [], [], []
        for feature in features:
            for seg_ids, seg_labels in _segments(feature):
                ids += seg_ids
                # the first token of an example must not be predicted from the previous example
                labels += [IGNORE_INDEX] + seg_labels[1:]
                positions += range(len(seg_ids))
        if self.multiple and len(ids) % self.multiple:
            # a segment of padding of its own (positions restart: nothing attends across it): rows of a few
            # lengths only, so that oneDNN reuses its kernels instead of making (and caching) new ones per length
            extra = self.multiple - len(ids) % self.multiple
            ids += [self.pad_token_id] * extra
            labels += [IGNORE_INDEX] * extra
            positions += range(extra)
        batch = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
        }
        if self.loss_logits_only:
            add_loss_positions(batch, self.multiple)
        return batch


def add_loss_positions(batch: dict[str, Any], multiple: int = 0) -> None:
    """Logits only where a label follows: `logits_to_keep` (positions) and `shift_labels` (their targets), which
    transformers' causal-LM loss takes instead of shifting `labels` itself; the Trainer counts tokens from them.
    With `multiple`, the count is rounded up with the last position, whose target is ignored."""
    import torch

    targets = batch["labels"][0, 1:]
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    if multiple and len(keep) % multiple:
        last = batch["labels"].shape[1] - 1  # its target would be past the row: IGNORE_INDEX below
        keep = torch.cat([keep, torch.full((multiple - len(keep) % multiple,), last, dtype=keep.dtype)])
        targets = torch.cat([targets, torch.tensor([IGNORE_INDEX], dtype=targets.dtype)])
    batch["logits_to_keep"] = keep
    batch["shift_labels"] = targets[keep].unsqueeze(0)


class PaddedCollator:
    """Right-pad to the longest example of the batch (packed groups are flattened as padding-free)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if any(f.get("segments") for f in features):
            return PaddingFreeCollator()(features)
        longest = max(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            pad = longest - len(f["input_ids"])
            ids.append(f["input_ids"] + [self.pad_token_id] * pad)
            labels.append(f["labels"] + [IGNORE_INDEX] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def pack_examples(examples: list[dict[str, Any]], cutoff_len: int) -> list[dict[str, Any]]:
    """Greedy first-fit-decreasing packing into rows of at most cutoff_len tokens."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i]["input_ids"])
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(cutoff_len - n)
    packed = []
    for members in sorted(bins, key=lambda m: min(m)):  # keep the original order roughly stable
        members.sort()
        packed.append(
            {
                "input_ids": [t for i in members for t in examples[i]["input_ids"]],
                "labels": [t for i in members for t in examples[i]["labels"]],
                "segments": [len(examples[i]["input_ids"]) for i in members],
            }
        )
    return packed
