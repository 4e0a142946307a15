"""WordLlama's embedding, computed faster and to the same numbers: token ids by word, then one sparse mean per text.

WordLlama (`WordLlamaInference.embed`) tokenizes every text with a Llama-2 BPE tokenizer that has no pre-tokenizer,
so BPE merges run over each whole text, and then pads a batch to its longest text and averages a (batch, longest,
dim) array. On 400-character chunks tokenizing was ~95% of the time. Here:

1. Pieces: the tokenizer's normalizer turns " " into "▁" and prepends one. A BPE merge makes a token of the
   vocabulary, so no merge crosses a boundary between two characters that no token holds side by side. Two such
   boundaries, read off the vocabulary when loading: before a "▁" that follows another character (no token holds
   "x▁"), and after any character that no token holds before another one (in Llama-2's 32,000 tokens only 226
   characters ever do: Latin, Cyrillic, digits, ASCII punctuation; never a CJK character).
   Encoding the text equals encoding its pieces one by one. A text is cut into words by the first rule (a "▁" run
   + a word: a cheap regex), and words repeat, so each word's ids are cached; only unseen ones go to the tokenizer,
   in one batch. A word over 24 characters (a Chinese text has no spaces) is cut further by the second rule (one
   piece per character when all are closing ones), and only its pieces are cached. Without the second rule a
   Chinese text was one piece, never seen before: ~20% of the chunks took over half of the tokenizing time, and
   each filled the cache with a whole text.
2. Mean: a sparse (texts x vocab) count matrix times the embedding matrix, divided by each text's token count:
   no padding, no (batch, tokens, dim) temporary.

Texts holding a special token's text (e.g. "<s>") and tokenizers unlike the one this was checked on go through the
tokenizer whole, as WordLlama does; the results are the same ids either way.
"""

from __future__ import annotations

import copy
import json
import re
from itertools import chain

import numpy as np

SPACE = "\u2581"  # SentencePiece's word boundary, what the normalizer makes of " "
WORD = re.compile(f"{SPACE}*[^{SPACE}]+|{SPACE}+")  # a "▁" run and the word after it: no token spans two
LONG_WORD = 24  # characters: a longer word (a Chinese text has no spaces) is cut into pieces, not cached whole
CROSSING = re.compile(f"[^{SPACE}]{SPACE}")  # a token holding this would span two pieces
EXPECTED_NORMALIZER = [{"type": "Prepend", "prepend": SPACE}, {"type": "Replace", "pattern": {"String": " "}}]
CACHE_MAX = 500_000  # words and pieces remembered (a few tens of MB); cleared when full
BATCH = 2048  # texts per sparse product: bounds the count matrix and the ids held at once


class PieceTokenizer:
    """`ids(texts)` -> (flat token ids, offsets): the ids WordLlama's tokenizer gives, without padding."""

    def __init__(self, tokenizer):
        self.whole = copy.deepcopy(tokenizer)  # WordLlama turned padding on in its tokenizer; ours pads nothing
        self.whole.no_padding()
        self.whole.no_truncation()
        self.special = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        self.raw = None
        self.piece, self.closing = piece_patterns(self.whole) or (None, None)
        if self.piece is not None:
            self.raw = copy.deepcopy(self.whole)  # pieces arrive normalized: the model alone, nothing added
            self.raw.normalizer = None
        self.cache: dict[str, list[int]] = {}

    def ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        per_text = self.piece_ids(texts) if self.raw is not None else self.whole_ids(texts)
        lengths = np.fromiter(map(len, per_text), np.int64, len(per_text))
        offsets = np.zeros(len(per_text) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(chain.from_iterable(per_text), np.int32, int(offsets[-1]))
        return flat, offsets

    def whole_ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.whole.encode_batch(texts, add_special_tokens=False)]

    def piece_ids(self, texts: list[str]) -> list[list[int]]:
        odd = [i for i, t in enumerate(texts) if any(s in t for s in self.special)]
        # words first (a "▁" run + what follows up to the next "▁": the cheap regex); a long one (a Chinese
        # sentence or text) is cut further and resolved through its pieces, never cached itself
        words = [WORD.findall(SPACE + t.replace(" ", SPACE)) if t else [] for t in texts]
        cache = self.cache
        unseen = {w for ws in words for w in ws if w not in cache}
        if len(cache) + len(unseen) > CACHE_MAX:
            cache.clear()  # then every word of this batch is unseen
            unseen = {w for ws in words for w in ws}
        long = {w: self.split(w) for w in unseen if len(w) > LONG_WORD}
        new = list({w for w in unseen if w not in long} | {p for ps in long.values() for p in ps if p not in cache})
        if new:
            encode = getattr(self.raw, "encode_batch_fast", self.raw.encode_batch)  # no offsets: tokenizers>=0.21
            for piece, enc in zip(new, encode(new, add_special_tokens=False), strict=True):
                cache[piece] = enc.ids
        for word, ps in long.items():
            cache[word] = list(chain.from_iterable(map(cache.__getitem__, ps)))
        out = [list(chain.from_iterable(map(cache.__getitem__, ws))) for ws in words]
        for word in long:
            del cache[word]
        if odd:
            for i, ids in zip(odd, self.whole_ids([texts[i] for i in odd]), strict=True):
                out[i] = ids
        return out

    def split(self, word: str) -> list[str]:
        """A word's pieces: one per character when all but its leading "▁"s close a piece (CJK text), else by
        the piece regex."""
        body = word.lstrip(SPACE)
        if body and self.closing.fullmatch(body):
            head = len(word) - len(body) + 1
            return [word[:head], *word[head:]]
        return self.piece.findall(word)


def piece_patterns(tokenizer) -> tuple[re.Pattern, re.Pattern] | None:
    """(the regex that cuts a normalized text into pieces no token spans, the regex matching a run of closing
    characters; see the module docstring) for the tokenizer this rule was derived from; None for any other (texts
    then go to the tokenizer whole)."""
    spec = json.loads(tokenizer.to_str())
    normalizer = spec.get("normalizer") or {}
    steps = [{k: v for k, v in s.items() if k != "content"} for s in normalizer.get("normalizers", [])]
    model = spec.get("model") or {}
    if steps != EXPECTED_NORMALIZER or spec.get("pre_tokenizer") is not None or model.get("type") != "BPE":
        return None
    if model.get("dropout") or any(s.get("content") not in (None, SPACE) for s in normalizer["normalizers"]):
        return None
    vocab = model.get("vocab", {})
    if any(CROSSING.search(token) for token in vocab):
        return None
    # characters some token holds before another one; every other character closes its piece
    opening = "".join(re.escape(c) for c in sorted({c for token in vocab for c in token[:-1]} - {SPACE}))
    closing = re.compile(f"[^{opening}{SPACE}]+" if opening else f"[^{SPACE}]+")
    if not opening:
        return re.compile(f"{SPACE}*+[^{SPACE}]|{SPACE}++"), closing
    # possessive quantifiers: no backtracking, linear in the text's length
    return re.compile(f"{SPACE}*+(?:[{opening}]*+[^{opening}{SPACE}]|[{opening}]++)|{SPACE}++"), closing


def mean_pool(matrix: np.ndarray, flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each text's mean token vector (zeros for a text with no tokens), float32 (texts, dim)."""
    from scipy.sparse import csr_matrix

    n = len(offsets) - 1
    counts = csr_matrix((np.ones(len(flat), np.float32), flat, offsets), shape=(n, matrix.shape[0]))
    sums = np.asarray(counts @ matrix, dtype=np.float32)
    sums /= np.maximum(np.diff(offsets), 1).astype(np.float32)[:, None]
    return sums


def embed_texts(tokenizer: PieceTokenizer, matrix: np.ndarray, texts: list[str], finish=None) -> np.ndarray:
    """WordLlama's un-normalized embedding of texts, BATCH texts at a time; `finish` (a row-wise function, e.g.
    normalizing) applied to each batch while it is still in the CPU cache, not to the whole array at the end."""
    out = np.empty((len(texts), matrix.shape[1]), np.float32)
    for start in range(0, len(texts), BATCH):
        flat, offsets = tokenizer.ids(texts[start : start + BATCH])
        np.clip(flat, 0, matrix.shape[0] - 1, out=flat)  # as WordLlama does
        pooled = mean_pool(matrix, flat, offsets)
        out[start : start + len(offsets) - 1] = pooled if finish is None else finish(pooled)
    return out
