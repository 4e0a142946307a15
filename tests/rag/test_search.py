"""Search providers against local look-alikes (SearXNG's JSON API, the Brave Search API) on the local site, and
DuckDuckGo through a fake `ddgs.DDGS`: no test leaves 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket

import ddgs
import pytest
from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException

from expertkit.core.errors import ExpertkitError
from expertkit.rag.web.search import (
    BraveSearch,
    ChainSearch,
    DuckDuckGoSearch,
    SearchError,
    SearchResult,
    SearxngSearch,
    clean_results,
    make_search,
)

pytestmark = pytest.mark.anyio


async def search(provider, query: str = "Zephyr-9 relay decommissioned", n: int = 5) -> list[SearchResult]:
    return await asyncio.wait_for(provider.search(query, n), 10)


async def search_error(provider, query: str = "relay") -> SearchError:
    with pytest.raises(SearchError) as e:
        await search(provider, query)
    return e.value


def fake_ddgs(monkeypatch, answer):
    """Replace ddgs.DDGS: `answer` is a list of result dicts to return, or an exception to raise."""
    calls = []

    class FakeDDGS:
        def __init__(self, timeout=None, **kwargs):
            calls.append(("init", timeout))

        def text(self, query, **kwargs):
            calls.append(("text", query, kwargs))
            if isinstance(answer, BaseException):
                raise answer
            return answer

    monkeypatch.setattr(ddgs, "DDGS", FakeDDGS)
    return calls


async def test_searxng_returns_the_site_pages(site):
    results = await search(SearxngSearch(site.url("/")))
    assert results[0] == SearchResult(
        site.url("/articles/zephyr-relay.html"),
        "The end of the Zephyr-9 relay",
        site.page("/articles/zephyr-relay.html").text()[:160],
    )
    assert {r.url for r in results} <= set(site.page_urls())
    assert site.requests[0].startswith("/search?q=Zephyr-9+relay+decommissioned&format=json")
    zh = await search(SearxngSearch(site.url("/search")), "青鸾七号气象站", 1)  # ".../search" is accepted too
    assert [r.url for r in zh] == [site.url("/articles/qingluan-station-zh.html")]


async def test_video_sites_repeats_and_non_http_results_are_dropped(site):
    results = await search(SearxngSearch(site.url("/noisy")), n=50)
    urls = [r.url for r in results]
    assert not any("youtube" in u or "bilibili" in u or u.startswith("ftp:") for u in urls)
    assert len(urls) == len(set(urls)) and not any("#" in u for u in urls)
    kept = await search(SearxngSearch(site.url("/noisy"), discard_domains=()), n=50)
    assert kept[0].url == "https://www.youtube.com/watch?v=zephyr9"  # listed only; nothing here fetches it
    assert len(await search(SearxngSearch(site.url("/noisy")), n=2)) == 2


def test_clean_results_rules():
    r = [
        SearchResult("https://music.youtube.com/x", "sub-domain of a discarded one"),
        SearchResult("https://notyoutube.com/a", "a different domain"),
        SearchResult("https://Example.com:443/a/?utm_source=feed#top", "one page"),
        SearchResult("http://example.com/a/", "the same page again"),
        SearchResult("https://example.com/a?id=2", "another page"),
        SearchResult("mailto:x@example.com", "not a page"),
    ]
    assert [x.title for x in clean_results(r, 10)] == ["a different domain", "one page", "another page"]
    assert [x.title for x in clean_results(r, 1, discard_domains=["*.notyoutube.com", "YouTube.com"])] == ["one page"]


@pytest.mark.parametrize(
    ("prefix", "message", "hint"),
    [
        ("/noformat", "refused JSON output (403 Forbidden)", "formats: [html, json]"),
        ("/limited", "rate-limited the search (429 Too Many Requests)", "limiter: false"),
        ("/empty", "found nothing: its engines failed: google (timeout), bing (CAPTCHA)", "engines"),
        ("/missing", "answered HTTP 404", "searxng_url"),  # a path where no SearXNG is
    ],
)
async def test_searxng_failures_explain_the_fix(site, prefix, message, hint):
    e = await search_error(SearxngSearch(site.url(prefix)))
    assert e.message == f"SearXNG at {site.url(prefix)} {message}"
    assert hint in e.hint


async def test_searxng_unreachable_or_silent():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    e = await search_error(SearxngSearch(f"http://127.0.0.1:{closed}"))
    assert e.message.startswith(f"could not reach SearXNG at http://127.0.0.1:{closed}")
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        e = await search_error(SearxngSearch(url, timeout=0.3))
    assert e.message == f"SearXNG at {url} did not answer within 0.3 s"


async def test_brave_search_api(site):
    endpoint = site.url("/brave/res/v1/web/search")
    results = await search(BraveSearch("good-key", endpoint=endpoint), "relay specifications", 2)
    assert len(results) == 2 and results[0].url == site.url("/articles/relay-specs.html")
    assert site.log[0].headers["x-subscription-token"] == "good-key"
    assert "count=7" in site.log[0].path  # asks for extra results to survive the filters
    e = await search_error(BraveSearch("wrong", endpoint=endpoint))
    assert e.message == "Brave Search rejected the API key (401)" and "search_api_key" in e.hint
    e = await search_error(BraveSearch("limited-key", endpoint=endpoint))
    assert e.message.startswith("Brave Search rate-limited") and "brave,duckduckgo" in e.hint
    assert "good-key" not in repr(BraveSearch("good-key"))


async def test_chain_falls_back_when_the_first_provider_is_rate_limited(site):
    chain = ChainSearch([SearxngSearch(site.url("/limited")), SearxngSearch(site.url("/"))])
    results = await search(chain)
    assert results[0].url == site.url("/articles/zephyr-relay.html")
    assert [p.split("?")[0] for p in site.requests] == ["/limited/search", "/search"]


async def test_chain_reports_every_failure(site, monkeypatch):
    fake_ddgs(monkeypatch, RatelimitException("https://duckduckgo.com 202 Ratelimit"))
    chain = make_search("searxng,duckduckgo", searxng_url=site.url("/limited"))
    e = await search_error(chain)
    assert e.message == "every search provider failed (searxng,duckduckgo)"
    assert [p.where for p in e.problems] == ["searxng", "duckduckgo"]
    assert "429" in e.problems[0].message
    assert e.problems[1].message == "DuckDuckGo rate-limited the search (https://duckduckgo.com 202 Ratelimit)"
    assert "searxng_url=" in e.problems[1].hint
    assert "searxng: " in str(e) and "duckduckgo: " in str(e)


async def test_chain_goes_on_past_a_provider_that_finds_nothing(site, monkeypatch):
    fake_ddgs(monkeypatch, DDGSException("No results found."))
    chain = make_search("duckduckgo,searxng", searxng_url=site.url("/"))
    assert (await search(chain))[0].url == site.url("/articles/zephyr-relay.html")


async def test_duckduckgo_results_are_mapped_and_filtered(monkeypatch):
    calls = fake_ddgs(
        monkeypatch,
        [
            {"title": "Video", "href": "https://youtu.be/abc", "body": "a video"},
            {"title": "Zephyr-9", "href": "https://relays.example/zephyr-9", "body": "Retired in 2026."},
            {"title": "Zephyr-9 again", "href": "https://relays.example/zephyr-9#history", "body": ""},
        ],
    )
    results = await search(DuckDuckGoSearch(timeout=4), "zephyr-9", 3)
    assert results == [SearchResult("https://relays.example/zephyr-9", "Zephyr-9", "Retired in 2026.")]
    assert calls[0] == ("init", 4)
    assert calls[1][:2] == ("text", "zephyr-9") and calls[1][2]["max_results"] == 8


@pytest.mark.parametrize(
    ("raised", "message", "hint"),
    [
        (RatelimitException("202 Ratelimit"), "DuckDuckGo rate-limited the search (202 Ratelimit)", "wait a minute"),
        (TimeoutException("timed out"), "DuckDuckGo did not answer within 10 s (timed out)", "internet connection"),
        (DDGSException("boom\nmore"), "DuckDuckGo search failed: boom", "searxng_url="),
    ],
)
async def test_duckduckgo_errors_become_search_errors(monkeypatch, raised, message, hint):
    fake_ddgs(monkeypatch, raised)
    e = await search_error(DuckDuckGoSearch())
    assert e.message == message and hint in e.hint


async def test_duckduckgo_no_results_is_an_empty_list(monkeypatch):
    fake_ddgs(monkeypatch, DDGSException("No results found."))
    assert await search(DuckDuckGoSearch()) == []


async def test_tests_never_reach_the_real_duckduckgo():
    with pytest.raises(RuntimeError, match="must not search the real web"):
        await search(DuckDuckGoSearch())


def test_make_search_builds_providers_and_chains(monkeypatch):
    assert isinstance(make_search(), DuckDuckGoSearch)
    assert isinstance(make_search("ddg"), DuckDuckGoSearch)
    chain = make_search("SearXNG, duckduckgo", searxng_url="http://127.0.0.1:8888/", discard_domains=None)
    assert isinstance(chain, ChainSearch) and chain.name == "searxng,duckduckgo"
    assert chain.providers[0].url == "http://127.0.0.1:8888"
    assert make_search("duckduckgo", discard_domains=["example.com"]).discard_domains == ("example.com",)
    monkeypatch.setenv("BRAVE_API_KEY", "from-env")
    assert isinstance(make_search("brave"), BraveSearch)


@pytest.mark.parametrize(
    ("provider", "kwargs", "message", "hint"),
    [
        ("duckgo", {}, "unknown search provider 'duckgo'", "did you mean duckduckgo? choose from duckduckgo, searxng"),
        ("searxng,bing", {"searxng_url": "http://x"}, "unknown search provider 'bing'", "choose from"),
        ("searxng", {}, "search_provider=searxng needs searxng_url", "searxng_url=http://127.0.0.1:8888"),
        ("searxng", {"searxng_url": "127.0.0.1:8888"}, "is not an http(s) URL", "searxng_url="),
        ("brave", {}, "search_provider=brave needs an API key", "BRAVE_API_KEY"),
        (" , ", {}, "search_provider is empty", "duckduckgo"),
    ],
)
def test_make_search_configuration_mistakes(monkeypatch, provider, kwargs, message, hint):
    monkeypatch.delenv("BRAVE_API_KEY", raising=False)
    with pytest.raises(ExpertkitError) as e:
        make_search(provider, **kwargs)
    assert message in e.value.message and hint in e.value.hint
    assert not isinstance(e.value, SearchError)  # a configuration mistake, not a failed search
