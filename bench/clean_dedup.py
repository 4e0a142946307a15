"""Near-duplicate removal: `expertkit data clean` (MinHash LSH) against a straightforward pairwise baseline (the exact
Jaccard similarity of every row with every kept row), on a generated corpus with planted near-duplicates.

    python bench/clean_dedup.py                          # 1,000 and 2,000 rows, both systems (~4 min)
    python bench/clean_dedup.py --sizes 20000,100000 --pairwise-limit 0   # larger sizes: data clean alone
    python bench/clean_dedup.py --quick                  # smoke run: 500 rows (~10 s)

The corpus (fixed seed, built in memory, written as JSON Lines): half English-like rows (sentences of generated
words), half Chinese rows (runs of common Han characters with Chinese punctuation), 200-500 characters each. Into
it are planted:
- **near-duplicates**: a share (`--dup-share`, 20%) of rows are copies of an earlier row with character-level
  edits (substitutions, insertions, deletions) on 1-8% of its characters, put at a random later position;
- **hard negatives**: as many rows that share about half their text with an earlier row (the same opening, a new
  ending): similar, but below the threshold, so removing them is a false positive.

Both systems read the rows in order and keep the first of each group (data clean's rule), at the same threshold
(`--threshold`, 0.7) on the same character 3-grams of the same lower-cased, whitespace-normalised text:
- **data clean**: `expertkit.data.clean.run` on the JSON Lines file (`pii=keep`: dedup only), end to end: reading,
  MinHash of each row, the LSH index, writing the kept rows and the report;
- **pairwise**: the exact Jaccard similarity of each row's 3-gram set with every row kept so far (Python sets),
  dropped when one reaches the threshold. It is exact, and quadratic.

Figures per size and system: recall (planted near-duplicates removed / planted), precision (planted removed /
all removed), removed hard negatives, rows/s (rows / wall time of the dedup). Then the ratios data clean /
pairwise, and how many planted pairs truly reach the threshold (the pairwise system's recall is bounded by it:
an edit can push a pair below 0.7). `--memory` adds the bytes held per distinct row by data clean's index and by
datasketch's own `MinHashLSH` (tracemalloc, on 2,000 rows).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import busy_cpu_seconds  # noqa: E402

EN_SYLLABLES = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ou", "ea")] + [
    "ing",
    "tion",
    "er",
]
HAN = [chr(c) for c in range(0x4E00, 0x4E00 + 3500)]  # a common-character-sized pool
ZH_PUNCT = "，。、；"


@dataclass
class Corpus:
    rows: list[str]
    planted: set[int]  # positions of planted near-duplicates
    negatives: set[int]  # positions of hard negatives
    pairs: list[tuple[int, int]]  # (duplicate, original) positions
    negative_pairs: list[tuple[int, int]]  # (hard negative, the row it shares half its text with) positions


def build_corpus(n: int, dup_share: float, seed: int) -> Corpus:
    rng = random.Random(seed)
    words = ["".join(rng.choices(EN_SYLLABLES, k=rng.randint(1, 4))) for _ in range(8000)]
    n_dups = int(n * dup_share)
    n_base = n - 2 * n_dups
    base = [english(rng, words) if i % 2 else chinese(rng) for i in range(n_base)]
    rows: list[tuple[float, str, str, int]] = [(i, t, "base", i) for i, t in enumerate(base)]  # (order, text, kind, of)
    for _ in range(n_dups):  # each after its original, at a random later place
        i = rng.randrange(n_base)
        rows.append((rng.uniform(i + 0.5, n_base), edit(rng, base[i], rng.uniform(0.01, 0.08)), "dup", i))
        j = rng.randrange(n_base)
        fresh = english(rng, words) if j % 2 else chinese(rng)
        rows.append((rng.uniform(j + 0.5, n_base), base[j][: len(base[j]) // 2] + fresh[len(fresh) // 2 :], "neg", j))
    rows.sort(key=lambda r: r[0])
    where = {r[3]: p for p, r in enumerate(rows) if r[2] == "base"}
    planted = {p for p, r in enumerate(rows) if r[2] == "dup"}
    return Corpus(
        rows=[r[1] for r in rows],
        planted=planted,
        negatives={p for p, r in enumerate(rows) if r[2] == "neg"},
        pairs=[(p, where[rows[p][3]]) for p in sorted(planted)],
        negative_pairs=[(p, where[r[3]]) for p, r in enumerate(rows) if r[2] == "neg"],
    )


def english(rng: random.Random, words: list[str]) -> str:
    out: list[str] = []
    while sum(len(w) + 1 for w in out) < rng.randint(200, 500):
        sentence = rng.choices(words, k=rng.randint(5, 14))
        out.append(sentence[0].capitalize() + " " + " ".join(sentence[1:]) + ".")
    return " ".join(out)


def chinese(rng: random.Random) -> str:
    length = rng.randint(200, 500)
    return "".join(rng.choice(HAN) if rng.random() > 0.06 else rng.choice(ZH_PUNCT) for _ in range(length))


def edit(rng: random.Random, text: str, rate: float) -> str:
    chars = list(text)
    pool = HAN if any("\u4e00" <= c <= "\u9fff" for c in text[:20]) else list("abcdefghijklmnopqrstuvwxyz")
    for _ in range(max(1, round(len(chars) * rate))):
        at, op = rng.randrange(len(chars)), rng.choice("sid")
        if op == "s":
            chars[at] = rng.choice(pool)
        elif op == "i":
            chars.insert(at, rng.choice(pool))
        elif len(chars) > 1:
            del chars[at]
    return "".join(chars)


def grams(text: str, n: int = 3) -> set[str]:
    normal = " ".join(text.lower().split())  # as data/dedup.py normalises
    return {normal[i : i + n] for i in range(max(len(normal) - n + 1, 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def run_pairwise(rows: list[str], threshold: float) -> set[int]:
    kept: list[set[str]] = []
    removed = set()
    for i, text in enumerate(rows):
        g = grams(text)
        if any(jaccard(g, k) >= threshold for k in kept):
            removed.add(i)
        else:
            kept.append(g)
    return removed


def run_data_clean(rows: list[str], threshold: float, work: Path) -> set[int]:
    from expertkit.data.clean import CleanConfig, run

    src, out = work / "corpus.jsonl", work / "clean.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(rows)))
    run(CleanConfig(input=str(src), output=str(out), near_dup_threshold=threshold, pii="keep"))
    kept = {json.loads(line)["id"] for line in out.read_text().splitlines()}
    return set(range(len(rows))) - kept


@dataclass
class Result:
    system: str
    rows: int
    seconds: float
    recall: float
    precision: float
    negatives_removed: int
    others_cpu: float | None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    def line(self) -> str:
        others = "n/a" if self.others_cpu is None else f"{self.others_cpu:.2f}"
        return (
            f"  {self.system:<11} recall {self.recall:6.1%}  precision {self.precision:6.1%}  hard negatives removed "
            f"{self.negatives_removed:3d}  {self.rows_per_s:9,.0f} rows/s  ({self.seconds:.1f} s, others' CPU "
            f"{others} cores)"
        )


def measure(system: str, corpus: Corpus, threshold: float, work: Path) -> Result:
    busy0, own0, t0 = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    if system == "data clean":
        removed = run_data_clean(corpus.rows, threshold, work)
    else:
        removed = run_pairwise(corpus.rows, threshold)
    seconds = time.perf_counter() - t0
    busy1, own1 = busy_cpu_seconds(), time.process_time()
    others = None if busy0 is None or busy1 is None else max(0.0, ((busy1 - busy0) - (own1 - own0)) / seconds)
    hits = len(removed & corpus.planted)
    return Result(
        system,
        len(corpus.rows),
        seconds,
        recall=hits / len(corpus.planted) if corpus.planted else 1.0,
        precision=hits / len(removed) if removed else 1.0,
        negatives_removed=len(removed & corpus.negatives),
        others_cpu=others,
    )


def index_bytes_per_row(rows: list[str], threshold: float) -> dict[str, float]:
    """tracemalloc-measured bytes each index holds per remembered row: ours against datasketch's MinHashLSH."""
    import tracemalloc

    import datasketch

    from expertkit.data.dedup import DuplicateIndex

    ours = DuplicateIndex(threshold)
    signatures = []
    for text in rows:  # the signatures are computed outside the measured window
        m = datasketch.MinHash(num_perm=128)
        m.update_batch([g.encode("utf-8") for g in grams(text)])
        signatures.append(m)
    tracemalloc.start()
    lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=128)
    for i, m in enumerate(signatures):
        lsh.insert(i, m)
    theirs = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del lsh
    tracemalloc.start()
    for i, text in enumerate(rows):
        ours.first_copy(i, text)
    mine = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"data clean index": mine / len(rows), "datasketch MinHashLSH": theirs / len(rows)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,2000", help="comma-separated corpus sizes (rows)")
    p.add_argument("--threshold", type=float, default=0.7)
    p.add_argument("--dup-share", type=float, default=0.2, help="planted near-duplicates a row (as many negatives)")
    p.add_argument("--pairwise-limit", type=int, default=5000, help="skip the quadratic baseline above this many rows")
    p.add_argument("--memory", action="store_true", help="also measure each index's bytes per row")
    p.add_argument("--quick", action="store_true", help="500 rows only")
    p.add_argument("--seed", type=int, default=20261207)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    sizes = [500] if args.quick else [int(x) for x in args.sizes.split(",")]
    results = []
    import expertkit.data.clean  # noqa: F401  imported before timing: datasketch and scipy take seconds to load
    from expertkit.data.dedup import DuplicateIndex

    DuplicateIndex(args.threshold)
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            corpus = build_corpus(n, args.dup_share, args.seed)
            dup_j = [jaccard(grams(corpus.rows[a]), grams(corpus.rows[b])) for a, b in corpus.pairs]
            neg_j = [jaccard(grams(corpus.rows[a]), grams(corpus.rows[b])) for a, b in corpus.negative_pairs]
            reach = sum(j >= args.threshold for j in dup_j)
            print(f"\n{n:,} rows: {len(corpus.planted)} planted near-duplicates (3-gram Jaccard with their original "
                  f"{min(dup_j):.2f}-{max(dup_j):.2f}, {reach} reach {args.threshold}), {len(corpus.negatives)} hard "
                  f"negatives (Jaccard {min(neg_j):.2f}-{max(neg_j):.2f})", flush=True)  # fmt: skip
            systems = ["data clean"] + (["pairwise"] if n <= args.pairwise_limit else [])
            done = {s: measure(s, corpus, args.threshold, Path(tmp)) for s in systems}
            for r in done.values():
                print(r.line(), flush=True)
            if "pairwise" in done:
                ours, base = done["data clean"], done["pairwise"]
                print(f"  ratios data clean / pairwise: rows/s {ours.rows_per_s / base.rows_per_s:.1f}x, recall "
                      f"{ours.recall / base.recall:.3f}, precision {ours.precision / base.precision:.3f}")  # fmt: skip
            results += [{**r.__dict__, "rows_per_s": r.rows_per_s, "planted_reaching": reach} for r in done.values()]
    if args.memory:
        corpus = build_corpus(2000, 0.0, args.seed)
        per_row = index_bytes_per_row(corpus.rows, args.threshold)
        print("\nindex memory per distinct row: " + ", ".join(f"{k} {v:,.0f} B" for k, v in per_row.items()))
        results.append({"index_bytes_per_row": per_row})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
