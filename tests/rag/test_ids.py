"""Canonical sources and chunk ids: spellings of one page agree, different pages never collide."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from expertkit.core.errors import ExpertkitError
from expertkit.rag.ids import canonical_source, chunk_id, content_hash, source_key


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("HTTP://A.com:80/x#frag", "http://a.com/x"),
        ("https://a.com", "https://a.com/"),
        ("https://a.com:443/x", "https://a.com/x"),
        ("https://a.com:8443/x", "https://a.com:8443/x"),
        ("http://a.com/a/./b/../c/", "http://a.com/a/c/"),
        ("http://a.com/../../x", "http://a.com/x"),
        ("http://a.com/%7euser/%41bc", "http://a.com/~user/Abc"),  # unreserved escapes decoded
        ("http://a.com/a%2fb/%c3%a9", "http://a.com/a%2Fb/%C3%A9"),  # others kept, in upper case
        ("http://a.com/café menu", "http://a.com/caf%C3%A9%20menu"),
        ("http://a.com/x?b=2&a=1", "http://a.com/x?a=1&b=2"),
        ("http://a.com/x?tag=b&tag=a", "http://a.com/x?tag=b&tag=a"),  # one name's values keep their order
        ("http://a.com/x?utm_source=news&id=7&fbclid=abc&gclid=1&UTM_Medium=m", "http://a.com/x?id=7"),
        ("http://a.com/x?", "http://a.com/x"),
        ("http://user:secret@a.com/x", "http://a.com/x"),
        ("http://Bücher.example/", "http://xn--bcher-kva.example/"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("  https://a.com/x  ", "https://a.com/x"),
    ],
)
def test_urls_are_normalised(url, canonical):
    assert canonical_source(url) == canonical
    assert canonical_source(canonical) == canonical  # idempotent


def test_different_pages_get_different_ids_and_spellings_of_one_page_the_same():
    assert chunk_id(canonical_source("http://a.com/x?id=1"), 0) != chunk_id(canonical_source("http://a.com/x?id=2"), 0)
    assert chunk_id(canonical_source("http://a.com/a_b"), 0) != chunk_id(canonical_source("http://a.com/a-b"), 0)
    assert chunk_id(canonical_source("http://a.com/x"), 0) != chunk_id(canonical_source("http://a.com/x/"), 0)
    assert chunk_id(canonical_source("HTTP://A.com:80/x#frag"), 3) == chunk_id(canonical_source("http://a.com/x"), 3)


def test_ids_are_short_stable_and_ordered_by_position():
    source = "https://docs.example.com/guide"
    assert source_key(source) == source_key(source) and len(source_key(source)) == 16
    assert int(source_key(source), 16) >= 0
    assert chunk_id(source, 7) == f"{source_key(source)}-00007"
    ids = [chunk_id(source, i) for i in (0, 1, 10, 99999)]
    assert ids == sorted(ids) and len(set(ids)) == 4


def test_content_hash_is_sha256_of_the_utf8_text():
    assert content_hash("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert content_hash("绿茶") != content_hash("绿 茶")


def test_local_paths_become_absolute_posix_paths(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "a.md"
    doc.write_text("# A\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    expected = doc.resolve().as_posix()
    assert canonical_source("docs/a.md") == expected
    assert canonical_source("docs/../docs/./a.md") == expected
    assert canonical_source(Path("docs/a.md")) == expected
    assert canonical_source(doc.resolve().as_uri()) == expected  # file:// maps to the same path
    assert canonical_source("missing.md") == (tmp_path / "missing.md").resolve().as_posix()  # need not exist


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_a_symlink_names_its_target(tmp_path):
    target = tmp_path / "real.txt"
    target.write_text("x", encoding="utf-8")
    (tmp_path / "link.txt").symlink_to(target)
    assert canonical_source(str(tmp_path / "link.txt")) == canonical_source(str(target))


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("ftp://a.com/file.pdf", "only http and https"),
        ("s3://bucket/key", "only http and https"),
        ("http://", "no host"),
        ("http://a.com:99999/", "not a valid URL"),
        ("file://server/share/a.md", "another machine"),
        ("   ", "empty"),
    ],
)
def test_unsupported_sources_are_explained(source, words):
    with pytest.raises(ExpertkitError) as e:
        canonical_source(source)
    assert words in e.value.message
