"""Keyword relevance (BM25, via bm25s) with a tokenizer that splits Chinese into words.

    tokens("Resuming LoRA 微调需要多少显存？")  ->  ['resum', 'lora', '微调', '需要', '多少', '显存']
    index = Bm25Index.build(["first chunk", "second chunk"]);  index.scores("chunk")  ->  array([0.18, 0.18])

Latin text is lowercased, split on word characters and stemmed (English stop words dropped); runs of CJK characters
are segmented with jieba, so a Chinese question matches the words of a Chinese page, not single characters.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

import numpy as np

from expertkit.core.errors import ExpertkitError, MissingExtraError
from expertkit.core.optional import import_optional

logger = logging.getLogger(__name__)

TOKENIZER = "words+jieba+snowball-en/1"  # bumped when `tokens` changes: saved indexes are rebuilt
CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
TOKEN = re.compile(rf"[{CJK}]+|[^\W{CJK}_]+(?:['’][^\W{CJK}_]+)*", re.UNICODE)


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    return frozenset(import_optional("bm25s.stopwords", "bm25s", "rag").STOPWORDS_EN)


@lru_cache(maxsize=1)
def _stem():
    """English Snowball stemming (PyStemmer), so 'resume', 'resuming' and 'resumes' match; absent: no stemming."""
    try:
        pystemmer = import_optional("Stemmer", "PyStemmer", "rag")
    except MissingExtraError:
        return lambda word: word
    except ExpertkitError as e:  # installed but broken: say why, once
        logger.warning("BM25 without English stemming: %s", e.message)
        return lambda word: word
    return pystemmer.Stemmer("english").stemWord


@lru_cache(maxsize=1)
def _jieba():
    jieba = import_optional("jieba", "jieba", "rag")
    jieba.setLogLevel(logging.WARNING)  # it announces its dictionary on stderr
    return jieba


def tokens(text: str) -> list[str]:
    """Words of `text` for BM25: lowercased, stemmed Latin words without stop words, and jieba-segmented Chinese."""
    out: list[str] = []
    stop, stem = _stopwords(), _stem()
    for match in TOKEN.finditer(text.lower()):
        word = match.group(0)
        if "\u3400" <= word[0] <= "\ufaff":
            out += [w for w in _jieba().lcut(word) if w.strip()]
        elif word not in stop:
            out.append(stem(word[:-2] if word.endswith(("'s", "’s")) else word))
    return out


class Bm25Index:
    """BM25 scores of a query against a fixed list of texts (chunks)."""

    def __init__(self, retriever, size: int):
        self.retriever, self.size = retriever, size

    @classmethod
    def build(cls, texts: list[str]) -> Bm25Index:
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build
        retriever = bm25s.BM25()
        if texts:
            retriever.index([tokens(t) or [""] for t in texts], show_progress=False)
        return cls(retriever, len(texts))

    def scores(self, query: str) -> np.ndarray:
        """One score per indexed text (0: no query word in it)."""
        if not self.size:
            return np.zeros(0, dtype=np.float32)
        ids = self.retriever.get_tokens_ids([t for t in tokens(query) if t])
        if not ids:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self.retriever.get_scores_from_ids(ids), dtype=np.float32)

    def top(self, query: str, k: int) -> list[tuple[int, float]]:
        """The k best (index, score) pairs with a score above 0, best first."""
        scores = self.scores(query)
        if not len(scores):
            return []
        order = np.argsort(-scores, kind="stable")[:k]
        return [(int(i), float(scores[i])) for i in order if scores[i] > 0]

    def save(self, folder) -> None:
        if self.size:
            self.retriever.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder, size: int) -> Bm25Index:
        import bm25s

        if not size:
            return cls(bm25s.BM25(), 0)
        return cls(bm25s.BM25.load(str(folder), show_progress=False), size)
