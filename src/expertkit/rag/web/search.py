"""Web search behind one interface: DuckDuckGo (no set-up), SearXNG (your instance), Brave Search API (a key).

    provider = make_search("searxng,duckduckgo", searxng_url="http://127.0.0.1:8888")
    results = await provider.search("when was the Zephyr-9 relay retired?", 5)   # [SearchResult(url, title, snippet)]

Results on video sites (`DEFAULT_DISCARD`, subdomains too) and repeats of one page are dropped. The search endpoint is
configuration the user trusts; the result URLs are not, and are fetched through the guarded `Fetcher`.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from expertkit.core.errors import ExpertkitError, Problem
from expertkit.core.optional import import_optional
from expertkit.rag.ids import canonical_source
from expertkit.rag.web.fetch import DEFAULT_USER_AGENT

logger = logging.getLogger(__name__)

PROVIDERS = ("duckduckgo", "searxng", "brave")
_ALIASES = {"ddg": "duckduckgo", "ddgs": "duckduckgo", "searx": "searxng"}
DEFAULT_DISCARD = (
    "youtube.com",
    "youtu.be",
    "youtube-nocookie.com",
    "vimeo.com",
    "tiktok.com",
    "douyin.com",
    "bilibili.com",
    "b23.tv",
    "ixigua.com",
    "kuaishou.com",
    "dailymotion.com",
    "twitch.tv",
    "rumble.com",
)
BRAVE_ENDPOINT = "https://api.search.brave.com/res/v1/web/search"
SEARXNG_HINT = "run your own SearXNG and set searxng_url=http://127.0.0.1:8888 (search_provider=searxng,duckduckgo)"


@dataclass
class SearchResult:
    url: str
    title: str
    snippet: str = ""


class SearchError(ExpertkitError):
    """A search that failed: what the provider said, and what to do about it."""


class SearchProvider(Protocol):
    name: str

    async def search(self, query: str, num_results: int) -> list[SearchResult]:
        """At most `num_results` results, best first; raises SearchError."""
        ...


def clean_results(
    results: Iterable[SearchResult], num_results: int, discard_domains: Iterable[str] = DEFAULT_DISCARD
) -> list[SearchResult]:
    """The first `num_results` http(s) results that are not on a discarded domain and not a repeat of an earlier one."""
    domains = _domains(discard_domains)
    kept: list[SearchResult] = []
    seen: set[str] = set()
    for r in results:
        parts = urlsplit(r.url)
        host = (parts.hostname or "").rstrip(".")
        if parts.scheme.lower() not in ("http", "https") or not host or _on_domain(host, domains):
            continue
        try:
            key = canonical_source(r.url).split("://", 1)[1]  # http and https of one page are one page
        except (ExpertkitError, ValueError):
            continue
        if key in seen:
            continue
        seen.add(key)
        kept.append(r)
        if len(kept) == num_results:
            break
    return kept


class DuckDuckGoSearch:
    """Search through the `ddgs` package (DuckDuckGo and the other engines it queries), run in a thread.

    Free and key-less, but rate-limited when used a lot: a SearXNG of your own is the sturdier choice.
    """

    name = "duckduckgo"

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        backend: str = "auto",
        region: str | None = None,
        discard_domains: Iterable[str] = DEFAULT_DISCARD,
    ):
        self.timeout = timeout
        self.backend = backend
        self.region = region
        self.discard_domains = tuple(discard_domains)

    async def search(self, query: str, num_results: int) -> list[SearchResult]:
        try:
            raw = await asyncio.wait_for(
                asyncio.to_thread(self._text, query, _ask_for(num_results)), self.timeout * 2 + 1
            )
        except asyncio.TimeoutError:
            raise SearchError(
                f"DuckDuckGo did not answer within {self.timeout * 2 + 1:g} s", hint=SEARXNG_HINT
            ) from None
        results = [SearchResult(r.get("href", ""), r.get("title", ""), r.get("body", "")) for r in raw]
        return clean_results(results, num_results, self.discard_domains)

    def _text(self, query: str, max_results: int) -> list[dict]:
        try:
            ddgs = import_optional("ddgs", "ddgs", "rag", needed_for="DuckDuckGo search")
        except ExpertkitError as e:  # a SearchError, which `ask` reports beside the answer
            raise SearchError(e.message, hint=e.hint) from e.__cause__
        from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException

        kwargs = {"region": self.region} if self.region else {}
        try:
            return ddgs.DDGS(timeout=math.ceil(self.timeout)).text(
                query, max_results=max_results, backend=self.backend, **kwargs
            )
        except RatelimitException as e:
            raise SearchError(
                f"DuckDuckGo rate-limited the search ({_first_line(e) or 'too many requests'})",
                hint=SEARXNG_HINT + ", or wait a minute",
            ) from None
        except TimeoutException as e:
            raise SearchError(
                f"DuckDuckGo did not answer within {self.timeout:g} s ({_first_line(e)})",
                hint="check the internet connection, or " + SEARXNG_HINT,
            ) from None
        except DDGSException as e:
            if "no results" in str(e).lower():
                return []
            raise SearchError(f"DuckDuckGo search failed: {_first_line(e)}", hint=SEARXNG_HINT) from None


class SearxngSearch:
    """Search a SearXNG instance through its JSON API: GET {url}/search?q=...&format=json.

    JSON output must be enabled in the instance's settings.yml (search: formats: [html, json]).
    """

    name = "searxng"

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        discard_domains: Iterable[str] = DEFAULT_DISCARD,
        language: str | None = None,
    ):
        base = url.strip().rstrip("/")
        self.url = base[: -len("/search")] if base.endswith("/search") else base
        self.timeout = timeout
        self.language = language
        self.discard_domains = tuple(discard_domains)

    async def search(self, query: str, num_results: int) -> list[SearchResult]:
        params = {"q": query, "format": "json", "pageno": "1"}
        if self.language:
            params["language"] = self.language
        body = await _get_json(self.url + "/search", params, {}, self.timeout, f"SearXNG at {self.url}", _searx_status)
        results = [
            SearchResult(str(r.get("url", "")), str(r.get("title", "")), str(r.get("content") or ""))
            for r in body.get("results") or []
            if isinstance(r, dict)
        ]
        if not results and body.get("unresponsive_engines"):
            failed = ", ".join(f"{e[0]} ({e[1]})" if len(e) > 1 else str(e[0]) for e in body["unresponsive_engines"])
            raise SearchError(
                f"SearXNG at {self.url} found nothing: its engines failed: {failed}",
                hint="check the engines in the instance's preferences, or wait if they were rate-limited",
            )
        return clean_results(results, num_results, self.discard_domains)


class BraveSearch:
    """The Brave Search API (a key from https://api-dashboard.search.brave.com; the free plan has a monthly quota)."""

    name = "brave"

    def __init__(
        self,
        api_key: str,
        *,
        endpoint: str = BRAVE_ENDPOINT,
        timeout: float = 10.0,
        discard_domains: Iterable[str] = DEFAULT_DISCARD,
    ):
        self._api_key = api_key
        self.endpoint = endpoint
        self.timeout = timeout
        self.discard_domains = tuple(discard_domains)

    def __repr__(self) -> str:  # never show the key
        return f"BraveSearch(endpoint={self.endpoint!r})"

    async def search(self, query: str, num_results: int) -> list[SearchResult]:
        params = {"q": query[:400], "count": str(min(20, _ask_for(num_results)))}  # the API's limits
        headers = {"X-Subscription-Token": self._api_key, "Accept": "application/json"}
        body = await _get_json(self.endpoint, params, headers, self.timeout, "Brave Search", _brave_status)
        web = body.get("web") or {}
        results = [
            SearchResult(str(r.get("url", "")), str(r.get("title", "")), str(r.get("description") or ""))
            for r in web.get("results") or []
            if isinstance(r, dict)
        ]
        return clean_results(results, num_results, self.discard_domains)


class ChainSearch:
    """Providers tried in order: the next one is asked when one fails (or finds nothing)."""

    def __init__(self, providers: list[SearchProvider]):
        self.providers = list(providers)
        self.name = ",".join(p.name for p in self.providers)

    async def search(self, query: str, num_results: int) -> list[SearchResult]:
        problems: list[Problem] = []
        answered = False
        for provider in self.providers:
            try:
                results = await provider.search(query, num_results)
            except SearchError as e:
                logger.info("search provider %s failed: %s; trying the next", provider.name, e.message)
                problems.append(Problem(e.message, where=provider.name, hint=e.hint))
                continue
            if results:
                return results
            answered = True
        if answered:
            return []
        raise SearchError(
            f"every search provider failed ({self.name})",
            hint="fix one of them, or add another to the chain: search_provider=searxng,duckduckgo,brave",
            problems=problems,
        )


def make_search(
    provider: str = "duckduckgo",
    *,
    searxng_url: str | None = None,
    api_key: str | None = None,
    discard_domains: Iterable[str] | None = DEFAULT_DISCARD,
    timeout: float = 10.0,
) -> SearchProvider:
    """The provider named, or a ChainSearch for a comma chain such as "searxng,duckduckgo".

    brave reads its key from `api_key`, else from the BRAVE_API_KEY environment variable.
    """
    names = [_ALIASES.get(n, n) for n in (p.strip().lower() for p in provider.split(",")) if n]
    if not names:
        raise ExpertkitError("search_provider is empty", hint=f"one of {', '.join(PROVIDERS)}, or a chain of them")
    for name in names:
        if name not in PROVIDERS:
            close = difflib.get_close_matches(name, PROVIDERS, n=1)
            guess = f"did you mean {close[0]}? " if close else ""
            raise ExpertkitError(
                f"unknown search provider '{name}'",
                hint=f"{guess}choose from {', '.join(PROVIDERS)}, or a comma chain such as searxng,duckduckgo",
            )
    discard = DEFAULT_DISCARD if discard_domains is None else tuple(discard_domains)
    built = [_build(name, searxng_url, api_key, discard, timeout) for name in dict.fromkeys(names)]
    return built[0] if len(built) == 1 else ChainSearch(built)


def _build(name: str, searxng_url: str | None, api_key: str | None, discard: tuple, timeout: float) -> SearchProvider:
    if name == "duckduckgo":
        return DuckDuckGoSearch(timeout=timeout, discard_domains=discard)
    if name == "searxng":
        if not searxng_url:
            raise ExpertkitError(
                "search_provider=searxng needs searxng_url", hint="searxng_url=http://127.0.0.1:8888 (your instance)"
            )
        if urlsplit(searxng_url.strip()).scheme.lower() not in ("http", "https"):
            raise ExpertkitError(
                f"searxng_url '{searxng_url}' is not an http(s) URL", hint="searxng_url=http://127.0.0.1:8888"
            )
        return SearxngSearch(searxng_url, timeout=timeout, discard_domains=discard)
    key = api_key or os.environ.get("BRAVE_API_KEY")
    if not key:
        raise ExpertkitError(
            "search_provider=brave needs an API key",
            hint="set search_api_key=... or BRAVE_API_KEY (keys: https://api-dashboard.search.brave.com)",
        )
    return BraveSearch(key, timeout=timeout, discard_domains=discard)


async def _get_json(url: str, params: dict, headers: dict, timeout: float, who: str, explain) -> dict:
    """GET a JSON search API; failures become SearchError, with `explain(status)` -> (message, hint) for statuses."""
    try:
        async with httpx.AsyncClient(timeout=timeout, headers={"User-Agent": DEFAULT_USER_AGENT}) as client:
            response = await client.get(url, params=params, headers=headers)
    except httpx.TimeoutException:
        raise SearchError(f"{who} did not answer within {timeout:g} s", hint="is it up? try again later") from None
    except httpx.HTTPError as e:
        raise SearchError(
            f"could not reach {who} ({_first_line(e) or type(e).__name__})", hint=_reach_hint(who)
        ) from None
    if response.status_code != 200:
        message, hint = explain(response.status_code, who)
        raise SearchError(message, hint=hint)
    try:
        body = response.json()
    except ValueError:
        raise SearchError(
            f"{who} did not answer with JSON (got {response.headers.get('content-type', 'no content type')})",
            hint="check that the URL is the API's base URL",
        ) from None
    if not isinstance(body, dict):
        raise SearchError(
            f"{who} answered JSON of an unexpected shape", hint="check that the URL is the API's base URL"
        )
    return body


def _searx_status(status: int, who: str) -> tuple[str, str]:
    if status == 403:
        return (
            f"{who} refused JSON output (403 Forbidden)",
            "enable it in the instance's settings.yml: search: formats: [html, json], then restart SearXNG",
        )
    if status == 429:
        return (
            f"{who} rate-limited the search (429 Too Many Requests)",
            "on your own instance turn the limiter off (server: limiter: false in settings.yml), or wait a minute",
        )
    return f"{who} answered HTTP {status}", "check searxng_url and the instance's logs"


def _brave_status(status: int, who: str) -> tuple[str, str]:
    if status in (401, 403):
        return (
            f"{who} rejected the API key ({status})",
            "check search_api_key (keys: https://api-dashboard.search.brave.com)",
        )
    if status == 429:
        return (
            f"{who} rate-limited the search, or the plan's quota is used up (429)",
            "wait a moment, or chain a fallback: search_provider=brave,duckduckgo",
        )
    return f"{who} answered HTTP {status}", "try again later"


def _reach_hint(who: str) -> str:
    return (
        "is SearXNG running there? check searxng_url" if who.startswith("SearXNG") else "check the internet connection"
    )


def _ask_for(num_results: int) -> int:
    """How many results to ask for, so that enough are left after discards and repeats."""
    return max(num_results + 5, num_results * 2)


def _domains(domains: Iterable[str]) -> tuple[str, ...]:
    return tuple(d.strip().lower().lstrip("*").strip(".") for d in domains if d.strip())


def _on_domain(host: str, domains: tuple[str, ...]) -> bool:
    host = host.lower()
    return any(host == d or host.endswith("." + d) for d in domains)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
