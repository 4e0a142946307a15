"""The knowledge base end to end: real extraction, chunking, WordLlama vectors, the default vector store, BM25."""

from __future__ import annotations

import json
import sys

import pytest

from expertkit.cli.main import main
from expertkit.core.errors import ExpertkitError
from expertkit.rag.bm25 import tokens
from expertkit.rag.config import KbConfig
from expertkit.rag.kb import MANIFEST, KnowledgeBase

RELAY = """# Zephyr-9 relay

The Zephyr-9 relay links the northern substations to the control room.

## Retirement

The Zephyr-9 relay was decommissioned on 14 March 2026, after the fibre ring replaced it.
Its spare parts went to the museum in Tromsø.
"""

POLICY = """Claims handling policy

A claim above 10,000 EUR needs a second reviewer. Photos of the damage must be attached before the adjuster visits.
Flood damage in basements is excluded unless the policy lists the basement rider.
"""

ZH = """# 保险理赔流程

客户需要在事故发生后三十天内提交理赔申请。理赔金额超过一万欧元时，需要第二位审核员复核。
地下室的水灾损失不在保障范围内，除非保单包含地下室附加条款。
"""

PAGE = """<html><head><title>On-call handbook</title></head><body>
<nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<main><article><h1>On-call handbook</h1>
<p>When the pager fires at night, the on-call engineer acknowledges within five minutes and opens an incident.</p>
<p>Escalate to the duty manager when the outage lasts longer than thirty minutes.</p>
</article></main>
<footer>Copyright 2026 Example Corp. All rights reserved.</footer></body></html>"""


@pytest.fixture
def docs(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "relay.md").write_text(RELAY, encoding="utf-8")
    (root / "policy.txt").write_text(POLICY, encoding="utf-8")
    (root / "sub" / "claims_zh.md").write_text(ZH, encoding="utf-8")
    (root / "sub" / "oncall.html").write_text(PAGE, encoding="utf-8")
    return root


def open_kb(tmp_path, **keys) -> KnowledgeBase:
    return KnowledgeBase.open(KbConfig(kb_dir=str(tmp_path / "kb"), **keys))


def test_tokens_split_chinese_into_words_and_drop_english_stop_words():
    assert tokens("The relay's LoRA 微调需要多少显存？") == ["relay", "lora", "微调", "需要", "多少", "显存"]
    assert tokens("resume resuming resumes") == ["resum"] * 3


def test_add_a_folder_then_again_updates_in_place(tmp_path, docs):
    with open_kb(tmp_path, chunk_size=120, chunk_overlap=30) as kb:
        first = kb.add([str(docs)])
        assert sorted(r.status for r in first) == ["added"] * 4
        chunks = kb.store.count()
        assert chunks == sum(r.chunks for r in first) and chunks > 4
        again = kb.add([str(docs)])
        assert [r.status for r in again] == ["unchanged"] * 4
        assert kb.store.count() == chunks
        (docs / "relay.md").write_text(RELAY + "\nA second spare went to Bergen.\n", encoding="utf-8")
        changed = {r.source.rsplit("/", 1)[-1]: r.status for r in kb.add([str(docs / "relay.md")])}
        assert changed == {"relay.md": "updated"}
        listed = {s["source"].rsplit("/", 1)[-1]: s["chunks"] for s in kb.sources()}
        assert kb.store.count() == sum(listed.values())  # replaced, not duplicated
    with open_kb(tmp_path) as kb:  # reopened from disk: same sources and chunks
        assert {s["source"].rsplit("/", 1)[-1]: s["chunks"] for s in kb.sources()} == listed


@pytest.mark.parametrize("mode", ["hybrid", "bm25", "vector"])
def test_search_finds_the_chunk_that_answers(tmp_path, docs, mode):
    with open_kb(tmp_path) as kb:
        kb.add([str(docs)])
        hits = kb.search("When was the Zephyr-9 relay decommissioned?", k=3, mode=mode)
        assert hits and hits[0].source.endswith("relay.md")
        assert "14 March 2026" in hits[0].text
        assert hits[0].title == "Zephyr-9 relay"
        zh = kb.search("地下室水灾损失保障吗？", k=2, mode=mode)
        assert zh and zh[0].source.endswith("claims_zh.md")


def test_html_navigation_and_footer_are_not_indexed(tmp_path, docs):
    with open_kb(tmp_path) as kb:
        kb.add([str(docs / "sub" / "oncall.html")])
        text = " ".join(t for _, t, _ in kb.store.records())
        assert "acknowledges within five minutes" in text
        assert "All rights reserved" not in text and "About" not in text


def test_remove_by_path_drops_its_chunks(tmp_path, docs):
    with open_kb(tmp_path) as kb:
        kb.add([str(docs)])
        before = kb.store.count()
        source, removed = kb.remove(str(docs / "policy.txt"))
        assert source.endswith("policy.txt") and removed > 0
        assert kb.store.count() == before - removed
        assert not any(s["source"].endswith("policy.txt") for s in kb.sources())
        assert all(not h.source.endswith("policy.txt") for h in kb.search("claim above 10,000 EUR reviewer"))
        with pytest.raises(ExpertkitError, match="not in the knowledge base"):
            kb.remove("no-such-source")


def test_another_embedder_is_refused(tmp_path, docs):
    with open_kb(tmp_path) as kb:
        kb.add([str(docs / "relay.md")])
    manifest = tmp_path / "kb" / MANIFEST
    data = json.loads(manifest.read_text())
    data["embedder"] = "openai:text-embedding-3-small:1536"
    manifest.write_text(json.dumps(data))
    with pytest.raises(ExpertkitError, match="built with the embedder openai:text-embedding-3-small"):
        open_kb(tmp_path)


def test_a_folder_that_is_not_a_kb_is_never_written_into(tmp_path):
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "thesis.docx").write_bytes(b"mine")
    with pytest.raises(ExpertkitError, match="exists and is not a knowledge base"):
        open_kb(tmp_path)


def test_cli_add_list_search_remove_json(tmp_path, docs, capsys):
    kb_dir = f"kb_dir={tmp_path / 'kb'}"
    assert main(["kb", "add", str(docs), kb_dir, "--json"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["added"] == 4 and added["chunks"] > 0
    assert main(["kb", "list", kb_dir, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed["sources"]) == 4 and all(s["chunks"] > 0 for s in listed["sources"])
    assert main(["kb", "search", "who reviews a claim above 10,000 EUR?", kb_dir, "top_k=2", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert len(found["results"]) == 2
    assert {"source", "score", "text"} <= set(found["results"][0])
    assert found["results"][0]["source"].endswith("policy.txt")
    assert main(["kb", "remove", str(docs / "policy.txt"), kb_dir]) == 0
    assert "removed" in capsys.readouterr().out
    assert main(["kb", "list", kb_dir]) == 0
    assert "3 source(s)" in capsys.readouterr().out


def test_cli_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    assert main(["kb", "list", f"kb_dir={tmp_path / 'nothing'}"]) == 1
    assert "is not a knowledge base" in capsys.readouterr().err
    assert main(["kb", "add", str(tmp_path / "missing.md"), f"kb_dir={tmp_path / 'kb'}"]) == 1
    err = capsys.readouterr().err
    assert "missing.md" in err and "Traceback" not in err
    assert main(["kb", "search", "x", "chunk_size=10", f"kb_dir={tmp_path / 'kb'}"]) == 1
    assert "chunk_size" in capsys.readouterr().err


def test_cli_add_html_with_trafilatura_broken_says_why_not_not_installed(tmp_path, docs, capsys, monkeypatch):
    """Issue 11: under lxml 6 without lxml_html_clean, trafilatura is installed but its import fails."""
    fake = tmp_path / "broken_site"  # a trafilatura whose import fails as it did, found before the real one
    (fake / "trafilatura").mkdir(parents=True)
    (fake / "trafilatura" / "__init__.py").write_text(
        "raise ImportError('lxml.html.clean module is now a separate project lxml_html_clean')\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(fake))
    for module in [m for m in sys.modules if m == "trafilatura" or m.startswith("trafilatura.")]:
        monkeypatch.delitem(sys.modules, module)
    assert main(["kb", "add", str(docs / "sub" / "oncall.html"), f"kb_dir={tmp_path / 'kb'}"]) == 1
    err = capsys.readouterr().err
    assert "oncall.html" in err and "trafilatura" in err and "is installed but could not be imported" in err
    assert "ImportError: lxml.html.clean module is now a separate project lxml_html_clean" in err
    assert "pip install --upgrade 'expertkit[rag]'" in err
    assert "not installed" not in err and "Traceback" not in err


def test_later_commands_reuse_the_embedder_the_kb_was_built_with(tmp_path, docs, capsys):
    kb_dir = f"kb_dir={tmp_path / 'kb'}"
    assert main(["kb", "add", str(docs / "relay.md"), kb_dir, "embedder=wordllama:64"]) == 0
    assert main(["kb", "search", "Zephyr-9 decommissioned", kb_dir, "--json"]) == 0  # embedder left unset
    assert json.loads(capsys.readouterr().out.split("\n", 2)[-1])["results"]
    assert main(["kb", "search", "Zephyr-9", kb_dir, "embedder=wordllama"]) == 1
    assert "leave embedder unset (it is wordllama:64)" in capsys.readouterr().err


def test_searches_from_many_threads_at_once(tmp_path, docs):
    from concurrent.futures import ThreadPoolExecutor

    with open_kb(tmp_path) as kb:
        kb.add([str(docs)])  # the BM25 index is built by the first search: all of them race for it
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: kb.search("Zephyr-9 decommissioned", k=1)[0].source, range(16)))
    assert len(set(results)) == 1 and results[0].endswith("relay.md")


@pytest.mark.parametrize("backend", ["sqlite-vec", "lancedb", "chroma"])
def test_adding_many_documents_embeds_and_upserts_them_together(tmp_path, backend, monkeypatch):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(30):
        (root / f"note{i:02d}.txt").write_text(f"Note {i}: relay {i} feeds substation {i % 7}.\n", encoding="utf-8")
    (root / "empty.txt").write_text("   \n", encoding="utf-8")
    with open_kb(tmp_path, vector_store=backend) as kb:
        calls = []
        upsert, embed_texts = kb.store.upsert, kb.embedder.embed
        monkeypatch.setattr(
            kb.store, "upsert", lambda ids, *rest: calls.append(("upsert", len(ids))) or upsert(ids, *rest)
        )
        monkeypatch.setattr(
            kb.embedder, "embed", lambda texts: calls.append(("embed", len(texts))) or embed_texts(texts)
        )
        seen = []
        results = kb.add([str(root)], on_result=seen.append)
        assert seen == results and [r.source.rsplit("/", 1)[-1] for r in results] == sorted(
            [f"note{i:02d}.txt" for i in range(30)] + ["empty.txt"]
        )
        assert sorted(r.status for r in results) == ["added"] * 30 + ["failed"]
        assert calls == [("embed", 30), ("upsert", 30)]  # one of each for 30 documents, not 30
        assert kb.store.count() == 30 and len(kb.manifest.sources) == 30
        assert kb.search("relay 17", k=1, mode="bm25")[0].source.endswith("note17.txt")
        (root / "note03.txt").write_text("Note 3 now says the relay was retired.\n", encoding="utf-8")
        calls.clear()
        again = {r.source.rsplit("/", 1)[-1]: r.status for r in kb.add([str(root)])}
        assert again["note03.txt"] == "updated" and list(again.values()).count("unchanged") == 29
        assert calls == [("embed", 1), ("upsert", 1)] and kb.store.count() == 30
        assert "retired" in kb.search("retired relay", k=1, mode="vector")[0].text
