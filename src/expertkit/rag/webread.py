"""Web pages into documents: search -> guarded, robots-respecting fetch -> main text -> relevant chunks.

    docs, failures = asyncio.run(read_pages(["https://example.org/post"], FetchConfig()))
    found = asyncio.run(search_web("when was the relay retired?", AskConfig(...), kb))

Relevance is judged per chunk after splitting (BM25 against the question), not per page before it, so a page's
intro, tables and code survive when they are what the question is about.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from expertkit.core.errors import ExpertkitError
from expertkit.rag.config import FetchConfig, WebConfig
from expertkit.rag.extract import Document, extract_bytes

KEEP_PER_QUESTION = 4  # relevant chunks kept per top_k slot, across all pages read for one question


def make_fetcher(config: FetchConfig | None):
    from expertkit.rag.web.fetch import Fetcher
    from expertkit.rag.web.netguard import NetGuard

    config = config or FetchConfig()
    kwargs = {"user_agent": config.user_agent} if config.user_agent else {}
    return Fetcher(
        NetGuard(config.allow_networks),
        timeout=config.fetch_timeout,
        max_bytes=config.max_page_bytes,
        concurrency=config.fetch_concurrency,
        **kwargs,
    )


async def read_pages(urls: list[str], config: FetchConfig | None) -> tuple[list[tuple[Document, str]], list]:
    """Fetch and extract pages: ([(document, fetched_at)], [(url, reason)]) — one failure never stops the rest."""
    fetcher = make_fetcher(config)
    try:
        pages, failed = await fetcher.fetch_all(list(dict.fromkeys(urls)))
    finally:
        await fetcher.aclose()
    docs, failures = [], [(f.url, f.reason) for f in failed]
    for page in pages:
        try:
            docs.append((extract_bytes(page.body, page.content_type, page.url), page.fetched_at))
        except ExpertkitError as e:
            failures.append((page.url, e.message))
    return docs, failures


@dataclass
class WebReport:
    """What a web search added: results found, sources indexed, pages that failed (url, reason)."""

    results: int = 0
    added: list = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""


async def search_web(question: str, config: WebConfig, kb) -> WebReport:
    """Search, read the result pages, and index their chunks that BM25 finds relevant to the question."""
    from expertkit.rag.bm25 import Bm25Index
    from expertkit.rag.web.search import SearchError, make_search

    report = WebReport()
    kwargs = {"discard_domains": config.discard_domains} if config.discard_domains is not None else {}
    try:
        provider = make_search(
            config.search_provider, searxng_url=config.searxng_url, api_key=config.search_api_key, **kwargs
        )
        results = await provider.search(question, config.num_results)
    except SearchError as e:
        report.error = str(e)
        return report
    report.results = len(results)
    docs, report.failures = await read_pages([r.url for r in results], config)
    split = [(doc, fetched_at, kb.split(doc)) for doc, fetched_at in docs]
    flat = [(i, chunk) for i, (_, _, chunks) in enumerate(split) for chunk in chunks]
    if not flat:
        return report
    index = Bm25Index.build([chunk.text for _, chunk in flat])
    keep: dict[int, list] = {}
    for j, _ in index.top(question, KEEP_PER_QUESTION * kb.config.top_k):
        i, chunk = flat[j]
        keep.setdefault(i, []).append(chunk)
    for i, chunks in keep.items():
        doc, fetched_at, _ = split[i]
        report.added.append(kb.add_chunks(doc, sorted(chunks, key=lambda c: c.position), fetched_at))
    return report
