"""Fetch web pages safely: every host checked by the NetGuard, robots.txt honoured, time and size bounded.

    async with Fetcher(NetGuard()) as fetcher:
        pages, failures = await fetcher.fetch_all(["https://example.org/a", "https://example.org/b"])

Each request goes to the very address the guard checked (the URL is rewritten to that IP, with the original
``Host`` header and TLS server name), so a DNS answer that changes between check and connect (rebinding) cannot
steer it inside. Redirects are followed by hand, and every hop is checked again. Proxies from the environment are
ignored for the same reason.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import re
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from urllib.parse import SplitResult, urljoin, urlsplit

import httpx

from expertkit import __version__
from expertkit.core.errors import ExpertkitError
from expertkit.rag.web.netguard import DEFAULT_PORTS, BlockedURLError, HostLookupError, NetGuard, parse_ip_literal
from expertkit.rag.web.robots import RobotsCache

logger = logging.getLogger(__name__)

DEFAULT_USER_AGENT = f"expertkit/{__version__} (+https://github.com/expertkit/expertkit)"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
# Media types we read, and what each is.
ACCEPTED_TYPES = {
    "text/html": "html",
    "application/xhtml+xml": "html",
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "application/pdf": "pdf",
    DOCX: "docx",
}
# Servers often send files as application/octet-stream (or nothing): the URL's suffix tells the type then.
_SUFFIX_TYPES = {
    ".pdf": "application/pdf",
    ".docx": DOCX,
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
}
_ACCEPT = (
    f"text/html,application/xhtml+xml,text/markdown;q=0.9,text/plain;q=0.9,application/pdf;q=0.8,{DOCX};q=0.8,*/*;q=0.1"
)
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
ROBOTS_MAX_BYTES = 512_000  # Google reads the first 500 KiB of a robots.txt
# What a <meta> tag or header says -> what browsers decode (WHATWG Encoding: labels that name a superset).
_ENCODING_ALIASES = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "ascii": "cp1252",
}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


@dataclass
class Page:
    """A fetched page: `url` is where it ended up after redirects, `requested_url` what was asked for.

    `content_type` is the media type alone ("text/html"); `charset` the one the server named, if any.
    """

    url: str
    requested_url: str
    status: int
    content_type: str
    body: bytes
    fetched_at: str  # ISO 8601, UTC
    charset: str | None = None

    @property
    def kind(self) -> str:
        """html, text, markdown, pdf or docx ("other" for a robots.txt served with an odd type)."""
        return ACCEPTED_TYPES.get(self.content_type, "other")

    def text(self) -> str:
        """The body decoded: byte-order mark, else the header's charset, else a <meta> charset, else UTF-8.

        Undecodable bytes become U+FFFD. For html, text and markdown; pdf and docx need an extractor.
        """
        if self.body.startswith(codecs.BOM_UTF8):
            return self.body[len(codecs.BOM_UTF8) :].decode("utf-8", errors="replace")
        for bom, name in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
            if self.body.startswith(bom):
                return self.body[len(bom) :].decode(name, errors="replace")
        encoding = _known_encoding(self.charset)
        if encoding is None and self.kind == "html":
            found = _META_CHARSET.search(self.body[:4096])
            encoding = _known_encoding(found[1].decode("ascii")) if found else None
        return self.body.decode(encoding or "utf-8", errors="replace")


@dataclass
class FetchFailure:
    """A page that was not fetched, and why, in one line a person reads ("timed out after 5 s")."""

    url: str
    reason: str


class FetchError(ExpertkitError):
    """A page could not be fetched; `reason` says why in one line, `status` is the HTTP status when there was one."""

    def __init__(self, url: str, reason: str, *, status: int | None = None, hint: str = ""):
        super().__init__(f"could not fetch {url}: {reason}", hint=hint)
        self.url = url
        self.reason = reason
        self.status = status


class Fetcher:
    """Fetches http(s) pages through a NetGuard, `concurrency` at a time, each within `timeout` seconds in all.

    Bodies over `max_bytes` are refused after reading at most that much; content types other than html, xhtml,
    plain text, markdown, pdf and docx are refused before the body is read. The timeout covers everything: the
    DNS lookup, robots.txt (itself held to `robots_timeout`), redirects, headers and body. `verify` is httpx's: a
    CA bundle path or an `ssl.SSLContext` for a private CA. Use it inside one event loop, and close it with
    `aclose()` (or `async with`).
    """

    def __init__(
        self,
        guard: NetGuard | None = None,
        *,
        user_agent: str = DEFAULT_USER_AGENT,
        timeout: float = 10.0,
        max_bytes: int = 5_000_000,
        concurrency: int = 8,
        max_redirects: int = 5,
        respect_robots: bool = True,
        robots_timeout: float | None = None,
        verify: ssl.SSLContext | str | bool = True,
    ):
        self.guard = guard or NetGuard()
        self.user_agent = user_agent
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.respect_robots = respect_robots
        # robots.txt gets a short leash of its own, so a silent robots host still leaves the page time to load
        self.robots_timeout = robots_timeout if robots_timeout is not None else min(5.0, timeout / 2)
        self._slots = asyncio.Semaphore(concurrency)
        self._robots = RobotsCache(self._robots_text, user_agent)
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,  # an environment proxy would connect to the name, not to the checked address
            timeout=httpx.Timeout(timeout),
            # no connection reuse: a TLS connection opened for one host name must not carry another's request
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": user_agent, "Accept": _ACCEPT},
            verify=verify,
        )

    async def fetch(self, url: str) -> Page:
        """Fetch one page (redirects followed); raises FetchError with a one-line `reason`."""
        async with self._slots:
            try:
                return await asyncio.wait_for(self._get(url, self.max_bytes, robots=True), self.timeout)
            except asyncio.TimeoutError:
                raise FetchError(url, f"timed out after {self.timeout:g} s") from None

    async def fetch_all(self, urls: list[str]) -> tuple[list[Page], list[FetchFailure]]:
        """Fetch every URL (repeats once each) at once: (pages, failures), each in the order of `urls`.

        A slow or failing page costs only its own slot and its own `timeout`; the others go on.
        """
        results = await asyncio.gather(*(self._fetch_or_fail(u) for u in dict.fromkeys(urls)))
        return [r for r in results if isinstance(r, Page)], [r for r in results if isinstance(r, FetchFailure)]

    async def aclose(self) -> None:
        self._robots.close()
        await self._client.aclose()

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ):
        await self.aclose()

    async def _fetch_or_fail(self, url: str) -> Page | FetchFailure:
        try:
            return await self.fetch(url)
        except FetchError as e:
            logger.info("skipped %s: %s", url, e.reason)
            return FetchFailure(url, e.reason)

    async def _get(self, url: str, max_bytes: int, *, robots: bool, any_type: bool = False) -> Page:
        """GET `url`, following redirects by hand; every hop is guarded (and checked against robots.txt)."""
        current = url.strip()
        for hop in range(self.max_redirects + 1):
            refused = f"redirect to {current} refused: " if hop else ""
            host, port, ips = await self._check(url, current, refused)
            if robots and self.respect_robots:
                rule = await self._robots.disallowing_rule(current)
                if rule:
                    raise FetchError(url, f"{refused}robots.txt disallows {rule}")
            try:
                response = await self._send(current, host, port, ips)
            except httpx.HTTPError as e:
                raise FetchError(url, _describe_http_error(e, host)) from None
            try:
                location = response.headers.get("location")
                if response.status_code in REDIRECT_STATUSES and location:
                    current = urljoin(current, location.strip())
                    continue
                return await self._read(url, current, response, max_bytes, any_type)
            except httpx.HTTPError as e:
                raise FetchError(url, _describe_http_error(e, host)) from None
            finally:
                await response.aclose()
        raise FetchError(url, f"more than {self.max_redirects} redirects (last to {current})")

    async def _check(self, url: str, current: str, refused: str) -> tuple[str, int, list[str]]:
        try:
            # getaddrinfo blocks; the page's own timeout bounds the wait
            return await asyncio.to_thread(self.guard.resolve, current)
        except BlockedURLError as e:
            raise FetchError(url, refused + e.reason, hint=e.hint) from None
        except HostLookupError as e:
            raise FetchError(url, refused + f"the host does not resolve ({e.reason})") from None

    async def _send(self, url: str, host: str, port: int, ips: list[str]) -> httpx.Response:
        """Send the request to each checked address in turn until one accepts the connection."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        headers = {"Host": _host_header(host, port, scheme)}
        extensions = {"sni_hostname": host} if scheme == "https" and parse_ip_literal(host) is None else {}
        for i, ip in enumerate(ips):
            request = self._client.build_request("GET", _at_address(parts, ip, port), headers=headers)
            request.extensions.update(extensions)
            try:
                return await self._client.send(request, stream=True)
            except httpx.ConnectError:
                if i == len(ips) - 1:
                    raise
        raise AssertionError("the guard returns at least one address")

    async def _read(self, url: str, current: str, response: httpx.Response, max_bytes: int, any_type: bool) -> Page:
        status = response.status_code
        if not 200 <= status < 300:
            raise FetchError(url, f"HTTP {status} {response.reason_phrase}".rstrip(), status=status)
        media, charset = _parse_content_type(response.headers.get("content-type", ""), urlsplit(current).path)
        if not any_type and media not in ACCEPTED_TYPES:
            shown = media or "none given"
            raise FetchError(url, f"content type {shown} is not read (html, plain text, markdown, pdf, docx are)")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise FetchError(url, f"page larger than {_size(max_bytes)} (it declares {_size(int(declared))})")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:  # stop here: the rest is never read
                raise FetchError(url, f"page larger than {_size(max_bytes)}")
        fetched_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return Page(current, url, status, media, bytes(body), fetched_at, charset)

    async def _robots_text(self, robots_url: str) -> str | None:
        """The text of a robots.txt, or None when there is none to honour (4xx, 5xx, unreachable, too slow)."""
        try:
            page = await asyncio.wait_for(
                self._get(robots_url, ROBOTS_MAX_BYTES, robots=False, any_type=True), self.robots_timeout
            )
        except FetchError as e:
            logger.info("no robots.txt to honour at %s (%s)", robots_url, e.reason)
            return None
        except asyncio.TimeoutError:
            logger.info("no robots.txt to honour at %s (no answer in %g s)", robots_url, self.robots_timeout)
            return None
        return page.body.decode("utf-8", errors="replace")


def _at_address(parts: SplitResult, ip: str, port: int) -> str:
    """The URL with its host replaced by the checked address."""
    host = f"[{ip.replace('%', '%25')}]" if ":" in ip else ip
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme.lower()}://{host}:{port}{parts.path or '/'}{query}"


def _host_header(host: str, port: int, scheme: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == DEFAULT_PORTS[scheme] else f"{shown}:{port}"


def _parse_content_type(header: str, path: str) -> tuple[str, str | None]:
    """(media type, charset) from a Content-Type header; the path's suffix decides for octet-stream or none."""
    media, _, params = header.partition(";")
    media = media.strip().lower()
    charset = None
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip("\"'")
    if media in ("", "application/octet-stream", "binary/octet-stream"):
        suffix = path[path.rfind(".") :].lower() if "." in path.rsplit("/", 1)[-1] else ""
        media = _SUFFIX_TYPES.get(suffix, media)
    return media, charset


def _known_encoding(label: str | None) -> str | None:
    if not label:
        return None
    name = _ENCODING_ALIASES.get(label.strip().lower(), label.strip())
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _describe_http_error(e: httpx.HTTPError, host: str) -> str:
    if isinstance(e, httpx.TimeoutException):
        return "the server did not answer in time"
    if isinstance(e, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(e):
        return f"the TLS certificate of {host} could not be verified ({e})"
    if isinstance(e, httpx.ConnectError):
        return f"could not connect to {host} ({e or 'connection refused'})"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _size(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:g} MB"
    if n >= 1_000:
        return f"{n / 1_000:g} kB"
    return f"{n} bytes"
