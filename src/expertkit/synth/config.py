"""Keys of `expertkit data synth`: documents -> grounded question/answer rows through a teacher model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from expertkit.core.config import split_list
from expertkit.rag.config import FetchConfig


class SynthConfig(FetchConfig):
    inputs: list[str] = Field(default_factory=list)
    """Documents to read: files (md, txt, html, pdf, docx), folders (recursively) and http(s) URLs (fetched through
    the knowledge base's robots-respecting, SSRF-guarded reader). Given on the command line before the keys."""

    output_dir: str = ""
    """Folder for the dataset (train.json, eval.jsonl, dataset_info.json, failed.jsonl) and the state file that makes
    a run resumable (synth_state.sqlite)."""

    teacher_base_url: str | None = None
    """The teacher's OpenAI-compatible /v1 URL: vLLM, Ollama (http://127.0.0.1:11434/v1), DeepSeek's API, another
    `expertkit serve` ..."""

    teacher_model: str | None = None
    """The teacher's model name on that server; unset: the server's first model."""

    teacher_api_key: str | None = Field(None, repr=False)
    """The teacher server's key (or set OPENAI_API_KEY). Never logged."""

    teacher_model_name_or_path: str | None = None
    """Instead of a URL: a local model folder run here through expertkit's engine (transformers)."""

    format: Literal["alpaca", "sharegpt"] = "alpaca"
    """Format of train.json: alpaca (instruction/output) or sharegpt (conversations); dataset_info.json says which."""

    dataset_name: str | None = None
    """The dataset's name in dataset_info.json; unset: the output folder's name."""

    questions_per_chunk: int = Field(3, ge=1, le=20)
    """Questions the teacher writes about each chunk."""

    min_score: float = Field(7.0, ge=1, le=10)
    """Rows the judge scores below this (1-10) are left out of the dataset (they stay in the state file, so raising or
    lowering it later needs no teacher calls)."""

    near_dup_threshold: float = Field(0.8, gt=0, le=1)
    """Questions at least this similar (MinHash estimate of character 3-gram Jaccard, as `data clean`) to one kept
    before are dropped as near-duplicates; 1: exact duplicates only."""

    eval_size: float = Field(0.1, ge=0, lt=1)
    """Share of chunks whose rows go to the held-out eval.jsonl instead of train.json (chosen by chunk, so no eval
    question is about a chunk the model trained on)."""

    chunk_size: int = Field(1500, ge=50, le=20000)
    """Largest chunk in characters (the knowledge base's chunker: structure first, then sentences)."""

    chunk_overlap: int = Field(100, ge=0)
    """Characters a chunk repeats from the one before."""

    concurrency: int = Field(8, ge=1, le=512)
    """Requests to the teacher in flight at once."""

    max_retries: int = Field(5, ge=0, le=20)
    """Retries of a request that got 429, a 5xx or no connection, with exponential backoff (Retry-After honoured)."""

    retry_backoff: float = Field(1.0, ge=0, le=120)
    """Seconds before the first retry; doubled each time, at most 60 s."""

    max_tokens: int = Field(1024, ge=16)
    """Longest teacher reply in tokens (reasoning models need more: their <think> counts)."""

    temperature: float = Field(0.7, ge=0, le=2)
    """Sampling temperature of the question and answer requests (the judge decodes greedily)."""

    prompts: str | None = None
    """A YAML file replacing some or all of the prompts (see `expertkit data synth --show-prompts` and
    docs/synth.md#prompts)."""

    language: Literal["auto", "en", "zh"] = "auto"
    """Prompt language: auto picks Chinese for chunks whose letters are mostly CJK, else English."""

    raft: bool = False
    """Write RAFT rows (Zhang et al. 2024) to train.json: the question with its source chunk among distractor chunks,
    the answer citing the quote between ##begin_quote## and ##end_quote##."""

    raft_distractors: int = Field(3, ge=0, le=20)
    """raft=true: distractor chunks (from other places in the corpus) per row."""

    raft_p: float = Field(0.8, ge=0, le=1)
    """raft=true: the share of rows WITH the source (oracle) chunk among the distractors (the paper's P; it found 0.8
    a good value); the other rows have distractors only, and teach the model to rely on what it learned."""

    price_per_million_input: float = Field(0.0, ge=0)
    """Teacher price per million prompt tokens, for the cost shown beside the token counts (0: cost not shown)."""

    price_per_million_output: float = Field(0.0, ge=0)
    """Teacher price per million completion tokens."""

    retry_failed: bool = True
    """Ask the teacher again for chunks that failed in an earlier run (false: keep them failed, zero calls)."""

    seed: int = 42
    """Seed of the eval split and the RAFT distractors: same inputs, same seed -> same files."""

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, v):
        return split_list(v)

    @model_validator(mode="after")
    def _teacher_and_chunks(self) -> SynthConfig:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})"
            )
        if self.teacher_base_url and self.teacher_model_name_or_path:
            raise ValueError("give teacher_base_url or teacher_model_name_or_path, not both")
        return self
