"""Text metrics that are right for Chinese as well as English: ROUGE-1/2/L, BLEU-4, exact and contains match.

    rows, means = score_all(["北京是中国的首都。"], ["中国的首都是北京"])
    rows[0]["rouge-1"], means["bleu-4"], means["bleu-4-corpus"]   # every score is 0..100

- ROUGE-1/2/L: F1 as rouge-score defines it (n-gram overlap, longest common subsequence) on `tokens_for_rouge`
  words (jieba for Chinese, lowercased Latin words, punctuation dropped).
- BLEU-4: sacrebleu's `sentence_bleu` with the `zh` tokenizer when either side has Chinese/Japanese/Korean
  characters (each character a token, other text as 13a), else `13a`; `exp` smoothing (NIST geometric smoothing,
  method 3 of Chen & Cherry 2014) so one missing 4-gram does not zero a sentence. `score_all` also gives
  sacrebleu's corpus BLEU as `bleu-4-corpus` (n-gram counts pooled over the set, the figure papers quote).
- exact / contains: after `normalize_text` (NFKC, lowercase, punctuation removed, whitespace collapsed); contains
  only matches Latin words and numbers whole ("4" is not found in "14").

How this compares with LLaMA-Factory (`ComputeSimilarity` in `train/sft/metric.py`, `scripts/eval_bleu_rouge.py`):
it also segments with jieba and scores ROUGE on those words (`rouge-chinese`), and scores BLEU-4 on characters with
NLTK's `sentence_bleu` and smoothing method 3. The differences: our ROUGE drops punctuation and whitespace tokens
and lowercases Latin words (LLaMA-Factory counts "，" and "。" as words, which lifts the overlap of any two Chinese
sentences); our BLEU also splits Chinese into characters, with the same smoothing, but Latin text into words rather
than letters, so an English answer earns no credit for sharing letters. On Chinese-only text the two BLEU-4 figures
agree (a test checks one pair against NLTK). LLaMA-Factory has no exact or contains match.
"""

from __future__ import annotations

import difflib
import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from statistics import fmean

from expertkit.core.errors import ExpertkitError
from expertkit.core.optional import import_optional

TEXT_METRICS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4", "exact", "contains")

# Han, kana, hangul, CJK punctuation and full-width forms: text that has them gets jieba and sacrebleu's zh
CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00020000-\U0002fa1f]")
CJK_RUNS = re.compile(CJK.pattern + "+|(?:(?!" + CJK.pattern + ").)+", re.S)  # jieba sees only the CJK runs
WORD = re.compile(r"[^\W_]+")  # a run of letters or digits, any script
ROUGE_KEYS = {"rouge-1": "rouge1", "rouge-2": "rouge2", "rouge-l": "rougeL"}


def score_pair(prediction: str, reference: str, metrics: Sequence[str] = TEXT_METRICS) -> dict[str, float]:
    """One prediction against its reference: {metric: 0..100}. An empty prediction scores 0 on every metric."""
    metrics = check_metrics(metrics)
    prediction, reference = prediction or "", reference or ""
    if not prediction.strip() or not reference.strip():
        return {m: 0.0 for m in metrics}
    scores: dict[str, float] = {}
    rouge_types = [ROUGE_KEYS[m] for m in metrics if m in ROUGE_KEYS]
    words = tokens_for_rouge(prediction)
    if rouge_types and words and words == tokens_for_rouge(reference):
        scores.update({m: 100.0 for m in metrics if m in ROUGE_KEYS})  # one-word answers have no bigram to match
    elif rouge_types:
        ref_words = tokens_for_rouge(reference)
        scores.update({m: 100.0 * rouge_f1(m, words, ref_words) for m in metrics if m in ROUGE_KEYS})
    if "bleu-4" in metrics:
        scores["bleu-4"] = sentence_bleu4(prediction, reference)
    if "exact" in metrics:
        scores["exact"] = 100.0 if exact_match(prediction, reference) else 0.0
    if "contains" in metrics:
        scores["contains"] = 100.0 if contains_match(prediction, reference) else 0.0
    return {m: scores[m] for m in metrics}


def score_all(
    predictions: list[str], references: list[str], metrics: Sequence[str] = TEXT_METRICS
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Scores per example and their means; with bleu-4, also sacrebleu's corpus BLEU as `bleu-4-corpus`."""
    metrics = check_metrics(metrics)
    if len(predictions) != len(references):
        raise ExpertkitError(
            f"{len(predictions)} predictions for {len(references)} references",
            hint="give one prediction per reference, in the same order",
        )
    rows = [score_pair(p, r, metrics) for p, r in zip(predictions, references, strict=True)]
    means = {m: fmean(row[m] for row in rows) if rows else 0.0 for m in metrics}
    if "bleu-4" in metrics:
        means["bleu-4-corpus"] = corpus_bleu4(predictions, references)
    return rows, means


def check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    """The metric names, refused with a did-you-mean when one is not in TEXT_METRICS."""
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    for m in metrics:
        if m not in TEXT_METRICS:
            close = difflib.get_close_matches(m, TEXT_METRICS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ExpertkitError(f"unknown metric '{m}'", hint=f"{hint}metrics: {', '.join(TEXT_METRICS)}")
    return metrics


def has_cjk(text: str) -> bool:
    return bool(CJK.search(text or ""))


def tokens_for_rouge(text: str) -> list[str]:
    """Words to score ROUGE on: Chinese segmented into words with jieba, the rest split into lowercased runs of letters
    and digits (on English text exactly rouge-score's own words, without stemming); punctuation and spaces dropped.

    Why not rouge-score's default tokenizer: it keeps only [a-z0-9] and drops every other character, so a Chinese
    answer would be empty and score 0 against anything. Chinese is scored per word, not per character, so ROUGE-2
    and ROUGE-L count meaning units, as LLaMA-Factory and the ChatGLM evaluations do.
    """
    text = unicodedata.normalize("NFKC", text or "").lower()
    pieces = [p for run in CJK_RUNS.findall(text) for p in (jieba_cut(run) if has_cjk(run) else [run])]
    return [w for piece in pieces for w in WORD.findall(piece)]


def is_punctuation(c: str) -> bool:
    """Unicode punctuation, Chinese (，。！？、《》“”：) as well as ASCII; symbols such as % + × $ are kept."""
    return unicodedata.category(c).startswith("P")


def rouge_f1(metric: str, prediction: list[str], reference: list[str]) -> float:
    """ROUGE F1 (0..1) on word lists, as rouge-score defines it: rouge-1/2 from clipped n-gram overlap, rouge-l
    from the longest common subsequence. Written here rather than calling rouge-score: that package pulls in
    absl logging, whose handler closes whatever stderr it captured at import (pytest's, a notebook's)."""
    if metric == "rouge-l":
        overlap = lcs_length(prediction, reference)
        p_total, r_total = len(prediction), len(reference)
    else:
        n = 1 if metric == "rouge-1" else 2
        pred, ref = ngrams(prediction, n), ngrams(reference, n)
        overlap = sum((pred & ref).values())
        p_total, r_total = sum(pred.values()), sum(ref.values())
    if not overlap or not p_total or not r_total:
        return 0.0
    precision, recall = overlap / p_total, overlap / r_total
    return 2 * precision * recall / (precision + recall)


def ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


@functools.lru_cache(maxsize=1)
def _jieba():
    jieba = import_optional("jieba", "jieba", "eval")
    import logging

    jieba.setLogLevel(logging.WARNING)  # its "Building prefix dict ..." lines are DEBUG, printed to stderr
    return jieba


def jieba_cut(text: str) -> list[str]:
    return _jieba().lcut(text)


def _sacrebleu():
    return import_optional("sacrebleu", "sacrebleu", "eval")


def bleu_tokenizer(*texts: str) -> str:
    """sacrebleu's `zh` tokenizer when any text has CJK characters, else its default `13a`."""
    return "zh" if any(has_cjk(t) for t in texts) else "13a"


def sentence_bleu4(prediction: str, reference: str) -> float:
    """Sentence BLEU-4, 0..100, `exp` smoothing (Chen & Cherry's method 3, as NLTK's `method3`)."""
    if not prediction.strip() or not reference.strip():
        return 0.0
    sacrebleu = _sacrebleu()
    tokenize = bleu_tokenizer(prediction, reference)
    return float(sacrebleu.sentence_bleu(prediction, [reference], smooth_method="exp", tokenize=tokenize).score)


def corpus_bleu4(predictions: list[str], references: list[str]) -> float:
    """sacrebleu's corpus BLEU-4 over the whole set, 0..100 (n-gram counts pooled, one brevity penalty)."""
    if not predictions or not any(r.strip() for r in references):
        return 0.0
    sacrebleu = _sacrebleu()
    tokenize = bleu_tokenizer(*predictions, *references)
    predictions = [p or "" for p in predictions]
    return float(sacrebleu.corpus_bleu(predictions, [[r or "" for r in references]], tokenize=tokenize).score)


def normalize_text(text: str) -> str:
    """NFKC, lowercase, punctuation removed, whitespace collapsed: "  Paris， France！" -> "paris france"."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = "".join(c for c in text if not is_punctuation(c))
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    ref = normalize_text(reference)
    return bool(ref) and normalize_text(prediction) == ref


def contains_match(prediction: str, reference: str) -> bool:
    """Whether the normalized reference appears in the normalized prediction, Latin words and numbers whole."""
    ref, pred = normalize_text(reference), normalize_text(prediction)
    if not ref:
        return False
    start = pred.find(ref)
    while start >= 0:
        end = start + len(ref)
        before = pred[start - 1] if start else " "
        after = pred[end] if end < len(pred) else " "
        if not (_word_char(ref[0]) and _word_char(before)) and not (_word_char(ref[-1]) and _word_char(after)):
            return True
        start = pred.find(ref, start + 1)
    return False


def _word_char(c: str) -> bool:
    """A letter or digit of a script that separates words with spaces (Chinese and Japanese do not)."""
    return c.isalnum() and not has_cjk(c)
