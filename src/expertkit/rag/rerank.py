"""An optional cross-encoder reranker: reads the question and each retrieved chunk together and re-scores them.

    reranker = load_reranker("models/bge-reranker-v2-m3")      # any local sequence-classification cross-encoder
    best = reranker.rerank("how do I reset the relay?", hits)[:5]

Hybrid retrieval finds candidates fast; a cross-encoder (BAAI/bge-reranker-*, cross-encoder/ms-marco-*, Jina's)
orders them better because it sees question and chunk at once. It runs on plain transformers: a model with one
output label gives the relevance logit, two labels the "relevant" minus "not relevant" logit.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from expertkit.core.errors import ExpertkitError
from expertkit.core.optional import import_optional

BATCH = 16
MAX_LENGTH = 512


class CrossEncoderReranker:
    def __init__(self, model, tokenizer, name: str):
        self.model, self.tokenizer, self.name = model, tokenizer, name

    def scores(self, query: str, texts: list[str]) -> list[float]:
        """The relevance of each text to the query (higher is more relevant), in order."""
        import torch

        out: list[float] = []
        for start in range(0, len(texts), BATCH):
            batch = texts[start : start + BATCH]
            enc = self.tokenizer(
                [query] * len(batch), batch, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
            )
            with torch.inference_mode():
                logits = self.model(**enc).logits.float()
            if logits.shape[-1] == 1:
                out += logits[:, 0].tolist()
            else:
                out += (logits[:, -1] - logits[:, 0]).tolist()
        return out

    def rerank(self, query: str, hits: list) -> list:
        """The hits, best first by the cross-encoder; each hit's `score` becomes the reranker's."""
        if not hits:
            return []
        for hit, score in zip(hits, self.scores(query, [h.text for h in hits])):
            hit.score = float(score)
        return sorted(hits, key=lambda h: -h.score)


@lru_cache(maxsize=2)
def load_reranker(path: str) -> CrossEncoderReranker:
    """A cross-encoder from a local folder (config.json + weights + tokenizer), loaded once per process."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ExpertkitError(
            f"reranker '{path}' is not a model folder (no config.json)",
            hint="download one first, e.g. huggingface-cli download BAAI/bge-reranker-v2-m3 --local-dir models/rerank",
        )
    import_optional("transformers", "transformers", "train", needed_for="the reranker")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    except (OSError, ValueError) as e:
        raise ExpertkitError(
            f"reranker '{path}' could not be loaded: {str(e).splitlines()[0]}",
            hint="point reranker= at a sequence-classification cross-encoder such as BAAI/bge-reranker-v2-m3",
        ) from None
    return CrossEncoderReranker(model, tokenizer, folder.name)
