"""Exact and near-duplicate texts, found as rows stream past: `data clean` drops them, `data check` shows them.

    index = DuplicateIndex(threshold=0.7)
    index.first_copy(1, "Send the report within 30 days.")      -> None (new: remembered as row 1)
    index.first_copy(2, "Send the report within thirty days.")  -> ("near duplicate", 1)

Near-duplicates: MinHash (`datasketch`) of the text's character n-grams (so Chinese needs no word segmentation),
banded as LSH: two texts whose n-gram Jaccard similarity is above `threshold` share a band with high probability.
The bands' count and width are datasketch's own choice for the threshold (`MinHashLSH.b`, `.r`). The buckets are
plain dicts holding the first row of each band value: about 1 KB per remembered row at threshold 0.7 (datasketch's
`MinHashLSH` keeps a set and a bytes key per band and row, about five times more), so ten million distinct rows fit
in about 10 GB; corpora beyond that go to datatrove or NeMo Curator (docs/data.md).
"""

from __future__ import annotations

import hashlib
from typing import Literal

from expertkit.core.optional import import_optional

DuplicateKind = Literal["exact duplicate", "near duplicate"]


class DuplicateIndex:
    """The rows remembered so far, by key (an int: a row number), to compare each new text with."""

    def __init__(self, threshold: float = 0.7, ngram: int = 3, num_perm: int = 128) -> None:
        self.ngram, self.num_perm = ngram, num_perm
        self._exact: dict[bytes, int] = {}
        self._datasketch = None
        self._bands: list[dict[int, int]] = []
        if threshold < 1:  # 1: exact duplicates only (datasketch's LSH needs a threshold below 1)
            self._datasketch = import_optional("datasketch", "datasketch", "train", needed_for="near-duplicate search")
            params = self._datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm)
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
        band_values = self._band_values(normal) if self._bands else []
        for band, value in zip(self._bands, band_values):
            if value in band:
                return "near duplicate", band[value]
        self._exact[digest] = key
        for band, value in zip(self._bands, band_values):
            band[value] = key
        return None

    def _band_values(self, normal: str) -> list[int]:
        text = normal.lower()
        grams = {text[i : i + self.ngram] for i in range(max(len(text) - self.ngram + 1, 1))}
        signature = self._datasketch.MinHash(num_perm=self.num_perm)
        signature.update_batch([g.encode("utf-8") for g in grams])
        values = signature.hashvalues
        return [hash(values[start:end].tobytes()) for start, end in self._ranges]


def _digest(normal: str) -> bytes:
    return hashlib.blake2b(normal.encode("utf-8"), digest_size=12).digest()
