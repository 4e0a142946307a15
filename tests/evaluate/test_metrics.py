"""Text metrics on hand-checked pairs, English and Chinese; the expected numbers are worked out in the comments."""

from __future__ import annotations

import pytest

from expertkit.core.errors import ExpertkitError
from expertkit.evaluate.metrics import (
    TEXT_METRICS,
    contains_match,
    exact_match,
    normalize_text,
    score_all,
    score_pair,
    tokens_for_rouge,
)


def test_english_pair_by_hand():
    # words: the cat sat on the mat / the cat is on the mat (6 each)
    # ROUGE-1: shared the x2, cat, on, mat = 5 -> P = R = 5/6 -> F1 83.33
    # ROUGE-2: bigrams shared: "the cat", "on the", "the mat" = 3 of 5 -> 60
    # ROUGE-L: LCS "the cat on the mat" = 5 -> 5/6 -> 83.33
    # BLEU-4: precisions 5/6, 3/5, 1/4 ("on the mat"), 0/3 -> exp smoothing 1/(2*3); BP 1 (same length)
    #         (5/6 * 3/5 * 1/4 * 1/6) ** (1/4) = 0.020833 ** 0.25 = 0.3799
    s = score_pair("the cat sat on the mat", "the cat is on the mat")
    assert s["rouge-1"] == pytest.approx(83.33, abs=0.01)
    assert s["rouge-2"] == pytest.approx(60.0)
    assert s["rouge-l"] == pytest.approx(83.33, abs=0.01)
    assert s["bleu-4"] == pytest.approx(37.99, abs=0.01)
    assert s["exact"] == 0 and s["contains"] == 0
    # ROUGE lowercases and drops punctuation; BLEU is sacrebleu's own: case and "." count
    t = score_pair("The cat sat on the mat.", "the cat is on the mat")
    assert t["rouge-1"] == s["rouge-1"] and t["bleu-4"] < s["bleu-4"]


def test_chinese_pair_overlapping_two_of_three_words():
    # jieba: 我 / 爱 / 北京 against 我 / 爱 / 上海: 2 of 3 words shared
    # ROUGE-1: P = R = 2/3 -> 66.67; ROUGE-2: "我 爱" shared of 2 bigrams -> 50; ROUGE-L: LCS 我 爱 = 2 -> 66.67
    # BLEU-4 on characters 我 爱 北 京 / 我 爱 上 海: 2/4, 1/3, then 0/2 -> 1/(2*2), 0/1 -> 1/(4*1)
    #         (1/2 * 1/3 * 1/4 * 1/4) ** (1/4) = 0.0104167 ** 0.25 = 0.3195
    assert tokens_for_rouge("我爱北京") == ["我", "爱", "北京"]
    s = score_pair("我爱北京", "我爱上海")
    assert s["rouge-1"] == pytest.approx(66.67, abs=0.01)
    assert s["rouge-2"] == pytest.approx(50.0)
    assert s["rouge-l"] == pytest.approx(66.67, abs=0.01)
    assert s["bleu-4"] == pytest.approx(31.95, abs=0.01)


def test_chinese_reordered_sentence():
    # 北京 是 中国 的 首都 (。dropped) against 中国 的 首都 是 北京: the same 5 words
    # ROUGE-1 100; ROUGE-2: 中国的, 的首都 shared of 4 bigrams -> 50; ROUGE-L: LCS 中国 的 首都 = 3 of 5 -> 60
    s = score_pair("北京是中国的首都。", "中国的首都是北京")
    assert (s["rouge-1"], s["rouge-2"], s["rouge-l"]) == pytest.approx((100.0, 50.0, 60.0))
    assert 0 < s["bleu-4"] < 100


def test_chinese_is_not_scored_zero_by_mistake():
    assert score_pair("我喜欢吃苹果", "我喜欢吃苹果")["rouge-1"] == 100
    # 我 喜欢 吃 苹果 / 我 爱 吃 苹果: 3 of 4 words -> 75
    assert score_pair("我喜欢吃苹果", "我爱吃苹果")["rouge-1"] == pytest.approx(75.0)


def test_bleu_matches_llama_factory_character_bleu_on_chinese():
    """LLaMA-Factory scores BLEU-4 with NLTK on characters, smoothing method 3; sacrebleu's zh + exp is the same."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    pred, ref = "云帆科技的助手可以回答关于帆船的问题", "我是云帆科技的助手，专门回答帆船问题"
    theirs = 100 * sentence_bleu([list(ref)], list(pred), smoothing_function=SmoothingFunction().method3)
    # both count every character, "，" included; NLTK's method 3 is sacrebleu's exp smoothing
    assert score_pair(pred, ref)["bleu-4"] == pytest.approx(theirs, abs=0.01)


@pytest.mark.parametrize("text", ["The cat sat on the mat.", "我是小帆，云帆科技的助手。", "Sail 是 expertkit 做的"])
def test_identical_text_scores_100(text):
    assert score_pair(text, text) == pytest.approx({m: 100.0 for m in TEXT_METRICS})


def test_one_word_identical_answer_scores_100_on_rouge_2():
    assert score_pair("北京", "北京。")["rouge-2"] == 100  # no bigram on either side; the words are the same


@pytest.mark.parametrize(("pred", "ref"), [("apple pie", "banana split"), ("苹果", "香蕉"), ("blue sky", "蓝天")])
def test_disjoint_text_scores_0(pred, ref):
    assert score_pair(pred, ref) == {m: 0.0 for m in TEXT_METRICS}


@pytest.mark.parametrize("pred", ["", "   ", None])
def test_empty_prediction_scores_0(pred):
    assert score_pair(pred, "the answer") == {m: 0.0 for m in TEXT_METRICS}
    rows, means = score_all([pred or "", "the answer"], ["the answer", "the answer"])
    assert rows[0]["rouge-l"] == 0 and means["rouge-l"] == 50.0


def test_exact_and_contains_after_normalisation():
    assert normalize_text("  Paris，  FRANCE！ ") == "paris france"
    assert exact_match("ＰＡＲＩＳ!", "paris")  # NFKC folds full-width letters
    assert exact_match("北京。", "北京") and not exact_match("是北京", "北京")
    assert contains_match("答案是：北京。", "北京")
    assert contains_match("The capital is Paris.", "paris")
    assert contains_match("7 × 8 = 56", "56")
    assert not contains_match("The answer is 14", "4")  # Latin words and numbers match whole
    assert not contains_match("comparison", "paris")
    assert not contains_match("anything", "")


def test_score_all_means_and_corpus_bleu():
    preds = ["the cat sat on the mat", "我爱北京", ""]
    refs = ["the cat is on the mat", "我爱上海", "北京"]
    rows, means = score_all(preds, refs)
    assert len(rows) == 3 and rows[2]["rouge-1"] == 0
    assert means["rouge-1"] == pytest.approx((250 / 3 + 200 / 3 + 0) / 3)
    assert means["exact"] == 0
    assert 0 < means["bleu-4-corpus"] < 100
    _, only = score_all(["a"], ["a"], ["exact"])
    assert only == {"exact": 100.0}


def test_mistakes_are_explained():
    with pytest.raises(ExpertkitError, match="2 predictions for 1 references"):
        score_all(["a", "b"], ["a"])
    with pytest.raises(ExpertkitError, match="unknown metric 'rougel'") as e:
        score_pair("a", "a", ["rougel"])
    assert "rouge-l" in e.value.hint


def test_rouge_equals_rouge_score_on_english(tmp_path):
    """Our ROUGE is rouge-score's numbers (checked in a subprocess: rouge-score's absl logging breaks pytest's
    captured stderr when imported in-process)."""
    import json
    import random
    import subprocess
    import sys

    from expertkit.evaluate.metrics import score_pair

    rng = random.Random(0)
    vocab = "the relay was decommissioned in march after fibre ring replaced it a claim needs reviewer".split()
    pairs = [(" ".join(rng.choices(vocab, k=rng.randint(3, 12))), " ".join(rng.choices(vocab, k=rng.randint(3, 12))))
             for _ in range(30)]  # fmt: skip
    pairs.append(("Paris is the capital of France, isn't it?", "The capital of France is Paris."))
    ours = [[score_pair(p, r)[m] for m in ("rouge-1", "rouge-2", "rouge-l")] for p, r in pairs]
    code = (
        "import json, sys\nfrom rouge_score import rouge_scorer\n"
        "s = rouge_scorer.RougeScorer(['rouge1', 'rouge2', 'rougeL'])\n"
        "pairs = json.loads(sys.stdin.read())\n"
        "keys = ('rouge1', 'rouge2', 'rougeL')\n"
        "print(json.dumps([[100 * s.score(r, p)[k].fmeasure for k in keys] for p, r in pairs]))"
    )
    try:
        import rouge_score  # noqa: F401
    except ImportError:
        import pytest

        pytest.skip("rouge-score is not installed")
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(pairs), capture_output=True, text=True)
    theirs = json.loads(done.stdout)
    for a, b, (p, r) in zip(ours, theirs, pairs):
        if p.split() == r.split():
            continue  # identical texts: 100 for all three here, also for one word (rouge-score gives rouge-2 0)
        assert all(abs(x - y) < 1e-9 for x, y in zip(a, b)), (p, r, a, b)
