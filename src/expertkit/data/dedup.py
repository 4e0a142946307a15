"""Exact and near-duplicate texts, found as rows stream past: `data clean` drops them, `data check` shows them.

    index = DuplicateIndex(threshold=0.7)
    index.first_copy(1, "Send the report within 30 days.")      -> None (new: remembered as row 1)
    index.first_copy(2, "Send the report within thirty days.")  -> ("near duplicate", 1)

Near-duplicates: MinHash (`datasketch`) of the text's character n-grams (so Chinese needs no word segmentation),
banded as LSH, then checked. The bands are datasketch's own choice for the threshold (`MinHashLSH.b`, `.r`),
weighted towards recall (a pair at Jaccard 0.75 shares a band 98% of the time at threshold 0.7, against 67% with
datasketch's even weights); a row that shares a band with a remembered one is a near-duplicate only when their
signatures agree on at least `threshold` of the permutations (the MinHash estimate of their Jaccard similarity), which
removes the extra candidates. The buckets are plain dicts holding the first row of each band value, and each row's
signature is kept as 32-bit values: about 2 KB per remembered row at threshold 0.7 (datasketch's `MinHashLSH`
keeps a set and a bytes key per band and row: 4.7 KB, without the signatures; bench/clean_dedup.py --memory), so
ten million distinct rows need about 20 GB; corpora beyond that go to datatrove or NeMo Curator (docs/data.md).
"""

from __future__ import annotations

import hashlib
from typing import Literal

from expertkit.core.optional import import_optional

DuplicateKind = Literal["exact duplicate", "near duplicate"]
BAND_WEIGHTS = (0.1, 0.9)  # (false positive, false negative) weights for datasketch's band choice: favour recall


class DuplicateIndex:
    """The rows remembered so far, by key (an int: a row number), to compare each new text with."""

    def __init__(self, threshold: float = 0.7, ngram: int = 3, num_perm: int = 128) -> None:
        self.threshold, self.ngram, self.num_perm = threshold, ngram, num_perm
        self._exact: dict[bytes, int] = {}
        self._datasketch = None
        self._bands: list[dict[int, int]] = []
        self._signatures: dict[int, bytes] = {}
        if threshold < 1:  # 1: exact duplicates only (datasketch's LSH needs a threshold below 1)
            self._datasketch = import_optional("datasketch", "datasketch", "train", needed_for="near-duplicate search")
            params = self._datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm, weights=BAND_WEIGHTS)
            self._ranges = [(i * params.r, (i + 1) * params.r) for i in range(params.b)]
            self._bands = [{} for _ in self._ranges]

    def exact_copy(self, text: str) -> int | None:
        """The key of a remembered row with the same text (up to whitespace), without remembering this one."""
        return self._exact.get(_digest(" ".join(text.split())))

    def first_copy(self, key: int, text: str) -> tuple[DuplicateKind, int] | None:
        """(kind, key of the remembered row) when `text` duplicates one; otherwise remember it under `key`: None."""
        normal = " ".join(text.split())
        digest = _digest(normal)
        if digest in self._exact:
            return "exact duplicate", self._exact[digest]
        self._exact[digest] = key
        if not self._bands:
            return None
        signature = self._signature(normal)
        band_values = [hash(signature[start:end].tobytes()) for start, end in self._ranges]
        for candidate in dict.fromkeys(band[v] for band, v in zip(self._bands, band_values) if v in band):
            if self._similarity(signature, candidate) >= self.threshold:
                del self._exact[digest]
                return "near duplicate", candidate
        for band, value in zip(self._bands, band_values):
            band.setdefault(value, key)
        self._signatures[key] = signature.tobytes()
        return None

    def _signature(self, normal: str):
        text = normal.lower()
        grams = {text[i : i + self.ngram] for i in range(max(len(text) - self.ngram + 1, 1))}
        minhash = self._datasketch.MinHash(num_perm=self.num_perm)
        minhash.update_batch([g.encode("utf-8") for g in grams])
        return minhash.hashvalues.astype("uint32")  # 32-bit values: affine32 in datasketch 2, below 2**32 in 1.x

    def _similarity(self, signature, key: int) -> float:
        import numpy as np

        return float(np.mean(signature == np.frombuffer(self._signatures[key], dtype=np.uint32)))


def _digest(normal: str) -> bytes:
    return hashlib.blake2b(normal.encode("utf-8"), digest_size=12).digest()
