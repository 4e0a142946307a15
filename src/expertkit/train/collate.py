"""Batches: padding-free (every example of a batch concatenated into one row) or padded, and packing.

Padding-free rows carry `position_ids` that restart at 0 for each example and no attention mask;
transformers then builds a block-diagonal causal mask (or uses flash-attention's varlen path), so each
example attends only to itself and no compute is spent on padding.
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

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids, labels, positions = [], [], []
        for feature in features:
            for seg_ids, seg_labels in _segments(feature):
                ids += seg_ids
                # the first token of an example must not be predicted from the previous example
                labels += [IGNORE_INDEX] + seg_labels[1:]
                positions += range(len(seg_ids))
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
        }


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
