"""The optional cross-encoder reranker, on a tiny random BERT cross-encoder loaded like a real one."""

from __future__ import annotations

import pytest

from expertkit.core.errors import ExpertkitError
from expertkit.rag.config import KbConfig
from expertkit.rag.kb import Hit, KnowledgeBase
from expertkit.rag.rerank import load_reranker

WORDS = "the relay was decommissioned in march zephyr claims need a second reviewer above eur when who".split()


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path_factory.mktemp("rerank")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ",", ".", "?"]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS) + 8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, num_labels=1,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def hit(text: str, i: int) -> Hit:
    return Hit(id=str(i), source=f"doc{i}", title="", text=text, score=0.0)


def test_rerank_orders_by_the_cross_encoder_score(cross_encoder):
    reranker = load_reranker(str(cross_encoder))
    texts = ["the relay was decommissioned in march", "claims above eur need a second reviewer", "who when"]
    query = "when was the zephyr relay decommissioned?"
    expected = reranker.scores(query, texts)
    ranked = reranker.rerank(query, [hit(t, i) for i, t in enumerate(texts)])
    assert [h.score for h in ranked] == sorted(expected, reverse=True)
    assert len({round(s, 6) for s in expected}) == 3  # the scores really differ: the order is the model's
    assert reranker.rerank(query, []) == []


def test_kb_search_with_a_reranker_returns_top_k_in_its_order(tmp_path, cross_encoder):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(["The relay was decommissioned in March.", "Claims above EUR need a second reviewer."]):
        (docs / f"d{i}.txt").write_text(text)
    kb = KnowledgeBase.open(KbConfig(kb_dir=str(tmp_path / "kb"), reranker=str(cross_encoder), top_k=1))
    with kb:
        kb.add([str(docs)])
        hits = kb.search("when was the relay decommissioned?")
        assert len(hits) == 1
        both = load_reranker(str(cross_encoder)).scores(
            "when was the relay decommissioned?", [h.text for h in kb.retrieve("relay", 5, "hybrid")]
        )
        assert hits[0].score == pytest.approx(max(both), abs=1e-5)


def test_a_folder_that_is_not_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(ExpertkitError, match="not a model folder"):
        load_reranker(str(tmp_path))
