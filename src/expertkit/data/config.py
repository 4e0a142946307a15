"""Keys that say which data to read and how to cut it (LLaMA-Factory's names), and `expertkit data clean`'s keys."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from expertkit.core.config import StageConfig, split_list  # split_list: train/ and evaluate/ import it from here too
from expertkit.data.language import LANGUAGES
from expertkit.model.config import ModelConfig


class DataConfig(ModelConfig):
    dataset: list[str]
    """Datasets to mix: names from dataset_dir/dataset_info.json, file paths, or hub ids (comma list)."""

    dataset_dir: str = "data"
    """Folder holding dataset_info.json and the data files it names."""

    mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = "concat"
    """How several datasets are mixed (LLaMA-Factory's names): concat (one after the other; training shuffles them),
    interleave_under (one row of each in turn, or drawn by interleave_probs, until the first dataset runs out),
    interleave_over (the same until every dataset has run out, the shorter ones repeated)."""

    interleave_probs: list[float] | None = None
    """With interleave_under / interleave_over: the chance that the next row comes from each dataset (comma list,
    one per dataset, summing to 1; seeded with seed); unset: strict turns. 0.8,0.2 with new data first and
    earlier data second replays a fifth of earlier data."""

    cutoff_len: int = 2048
    """Longest sequence in tokens; longer examples are cut (examples left with no answer token are dropped)."""

    max_samples: int | None = None
    """Use at most this many rows of each dataset (handy for a quick try)."""

    val_size: float = 0.0
    """Held-out share (0-1) or count (>= 1) of rows for evaluation loss."""

    packing: bool = False
    """Pack several short examples into one cutoff_len row (each still attends only to itself). stage pt: on unless
    set, and the documents are concatenated and cut into cutoff_len rows (LLaMA-Factory's pre-training packing)."""

    mask_history: bool = False
    """Train on the last assistant turn only; by default every assistant turn carries loss."""

    train_on_prompt: bool = False
    """Also compute loss on system/user tokens (rarely wanted)."""

    max_invalid_ratio: float = 0.1
    """Refuse to train when more than this share of rows is invalid (invalid rows under it are skipped)."""

    seed: int = 42
    """Random seed for shuffling, splitting and initialisation: same seed, same data -> same loss curve."""

    @field_validator("dataset", mode="before")
    @classmethod
    def _split_dataset(cls, v: object) -> list[str]:
        items = split_list(v)  # type: ignore[arg-type]
        if not items:
            raise ValueError("name at least one dataset")
        return items

    @field_validator("interleave_probs", mode="before")
    @classmethod
    def _split_probs(cls, v: object) -> object:
        if isinstance(v, int | float) and not isinstance(v, bool):
            return [v]  # one number: `interleave_probs=1` parses as a number, not a list
        return split_list(v) or None if isinstance(v, str) else v

    @model_validator(mode="after")
    def _mix(self) -> DataConfig:
        probs = self.interleave_probs
        if probs is None:
            return self
        if self.mix_strategy == "concat":
            raise ValueError("interleave_probs needs mix_strategy interleave_under or interleave_over (it is concat)")
        if len(probs) != len(self.dataset):
            raise ValueError(f"interleave_probs has {len(probs)} numbers for {len(self.dataset)} datasets: one each")
        if any(p < 0 for p in probs) or abs(sum(probs) - 1) > 1e-6:
            raise ValueError(f"interleave_probs must be shares of 0 or more summing to 1 (they sum to {sum(probs):g})")
        return self

    @field_validator("cutoff_len")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 8:
            raise ValueError("must be at least 8 tokens")
        return v

    @field_validator("val_size", "max_invalid_ratio")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if v < 0:
            raise ValueError("must not be negative")
        return v


class CleanConfig(StageConfig):
    input: str
    """The dataset file to clean (JSON Lines or a JSON list of rows)."""

    output: str
    """Where the cleaned rows go (JSON Lines); written atomically."""

    near_dup_threshold: float = 0.7
    """Estimated Jaccard similarity of character n-grams above which a row is a near-duplicate (0-1; 1: exact only)."""

    ngram: int = 3
    """Characters per n-gram for the near-duplicate check (3 suits Chinese, where a word is one to three characters)."""

    num_perm: int = 128
    """MinHash permutations: more is more accurate and slower."""

    min_chars: int = 1
    """Drop rows whose text is shorter than this."""

    max_chars: int | None = None
    """Drop rows whose text is longer than this (unset: no limit)."""

    languages: list[str] = []
    """Keep only rows in these languages, e.g. `zh,en` (guessed by script; empty: every language). Codes: zh ja ko en
    fr de es pt it nl ru ar el he th hi, and `unknown` for rows without letters."""

    pii: Literal["mask", "drop", "keep"] = "mask"
    """E-mail addresses, phone numbers, mainland-China ID-card and bank-card numbers, IPv4 addresses: mask them
    (`[EMAIL]`, `[PHONE]`, `[ID_CARD]`, `[BANK_CARD]`, `[IP]`), drop the row, or keep them."""

    @field_validator("near_dup_threshold")
    @classmethod
    def _share(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError("must be a similarity above 0, at most 1 (1: exact duplicates only), e.g. 0.7")
        return v

    @field_validator("languages", mode="before")
    @classmethod
    def _comma_list(cls, v: object) -> object:
        return split_list(v)

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, v: list[str]) -> list[str]:
        unknown = [x for x in v if x not in (*LANGUAGES, "unknown")]
        if unknown:
            raise ValueError(f"unknown language code(s) {', '.join(unknown)}; known: {' '.join(LANGUAGES)} unknown")
        return v
