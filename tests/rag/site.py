"""A small real website on 127.0.0.1 for the web tests, recording every request it receives.

    with LocalSite() as site:
        site.url("/articles/zephyr-relay.html")   # http://127.0.0.1:PORT/articles/zephyr-relay.html
        site.page_urls()                          # the readable pages (articles, notes, index)
        site.requests                             # ["/robots.txt", "/articles/zephyr-relay.html", ...]

Readable pages (`site.pages`): an English article holding `FACT`, a Chinese article holding `FACT_ZH`, a page with a
table and a code block, a GBK page whose charset is only in a <meta> tag, a markdown and a plain-text note, and an
index. Each HTML page wraps its article in nav, header, cookie banner, newsletter form and footer noise.

Traps: /robots.txt disallows /private/ (and /drafts/ for "expertkit"); /redirect-in (to an article), /redirect-out
(to 127.0.0.2, the same port), /redirect-loop, /redirect-to?url=ANY; /slow (headers, then a byte every 0.2 s,
forever); /big (10 MB at ~20 MB/s, no Content-Length; `big_sent` counts what went out); /big-declared (10 MB,
Content-Length sent); /image.png; /status/<code>.

Search: /search?q=..&format=json answers in SearXNG's JSON shape with this site's page URLs; /noisy/search adds
video-site results and duplicates; /limited/search answers 429; /noformat/search 403 (JSON not enabled); /empty/search
no results with failed engines; /brave/res/v1/web/search is a Brave Search API look-alike (key `good-key`; `limited-key`
gets 429, anything else 401).

A second listener on 127.0.0.2 (same port, when the system lets us bind it) records in `site.trapped` anything that
reaches the forbidden address: tests assert it stays empty.
"""

from __future__ import annotations

import json
import re
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import parse_qs, urlsplit

FACT = "The Zephyr-9 relay was decommissioned on 14 March 2026."
FACT_ZH = "青鸾七号气象站于2025年11月3日在大理正式启用。"
FACT_GBK = "南岭三号隧道全长4.7公里。"
BIG_BYTES = 10_000_000
FORBIDDEN_HOST = "127.0.0.2"

_SEARCH_PREFIXES = ("", "/noisy", "/limited", "/noformat", "/empty", "/brave/res/v1/web")
RobotsMode = Literal["ok", "missing", "error", "hang", "disallow-all"]

ROBOTS_TXT = """\
# Crawlers are welcome, except in the private folder.
User-agent: *
Disallow: /private/

# expertkit also stays out of the drafts.
User-agent: expertkit
Disallow: /private/
Disallow: /drafts/
"""


@dataclass(frozen=True)
class SitePage:
    """One readable page of the site; `facts` are sentences that appear on it and nowhere else."""

    path: str
    title: str
    lang: str
    content_type: str
    body: bytes
    facts: tuple[str, ...] = ()
    encoding: str = "utf-8"

    def text(self) -> str:
        """The words of the page's article (its whole text for markdown and plain text), without markup."""
        doc = self.body.decode(self.encoding)
        article = re.search(r"<article>(.*)</article>", doc, re.S)
        return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", article[1] if article else doc)).strip()


@dataclass
class LoggedRequest:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


class LocalSite:
    """The site, served by a thread on 127.0.0.1 (a free port) until `close()`."""

    host = "127.0.0.1"

    def __init__(self, *, robots: RobotsMode = "ok", trap: bool = True):
        self.robots = robots
        self.log: list[LoggedRequest] = []
        self.trapped: list[str] = []
        self.big_sent = 0  # bytes of /big written before the client went away
        self.big_finished = threading.Event()  # set when /big stops writing (all sent, or the client hung up)
        self._stop = threading.Event()
        self._server = _Server((self.host, 0), _Handler, self)
        self.port: int = self._server.server_address[1]
        self._trap = _trap_server(self) if trap else None
        self.pages: dict[str, SitePage] = {p.path: p for p in _build_pages()}
        self._threads: list[threading.Thread] = []

    # --- life cycle -------------------------------------------------------------------------------------------
    def start(self) -> LocalSite:
        for server in (self._server, self._trap):
            if server is not None:
                t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def close(self) -> None:
        self._stop.set()  # ends /slow and a hanging robots.txt
        for server in (self._server, self._trap):
            if server is not None:
                server.shutdown()
                server.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> LocalSite:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- addresses and the request log ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str = "/") -> str:
        """The absolute URL of `path` on this site."""
        return self.base_url + path

    def forbidden_url(self, path: str = "/") -> str:
        """The same path on 127.0.0.2: loopback, but outside allow_networks=['127.0.0.1/32']."""
        return f"http://{FORBIDDEN_HOST}:{self.port}{path}"

    @property
    def trap_active(self) -> bool:
        """Whether a listener on 127.0.0.2 is recording forbidden requests."""
        return self._trap is not None

    @property
    def requests(self) -> list[str]:
        """Every path (with its query) requested so far, in arrival order."""
        return [r.path for r in self.log]

    def requested(self, path: str) -> int:
        """How many requests asked for exactly `path` (query excluded)."""
        return sum(1 for r in self.log if r.path.split("?")[0] == path)

    def clear(self) -> None:
        """Forget the request log (the site is shared by a test session)."""
        self.log.clear()
        self.trapped.clear()

    def page_urls(self) -> list[str]:
        """The URLs of the readable pages."""
        return [self.url(p) for p in self.pages]

    def page(self, path: str) -> SitePage:
        return self.pages[path]

    # --- search -----------------------------------------------------------------------------------------------
    def search(self, query: str) -> list[SitePage]:
        """Pages sharing words (or, for Chinese, characters) with `query`, best first; every page if none does."""
        words = {w for w in re.findall(r"\w+", query.lower()) if len(w) > 2}
        words |= {c for c in query if "\u4e00" <= c <= "\u9fff"}

        def score(p: SitePage) -> int:
            text = (p.title + " " + p.text()).lower()
            return sum(text.count(w) for w in words)

        ranked = sorted(self.pages.values(), key=score, reverse=True)
        hits = [p for p in ranked if score(p) > 0]
        return hits or ranked


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, site: LocalSite, trap: bool = False):
        self.site = site
        self.trap = trap
        super().__init__(address, handler)


def _trap_server(site: LocalSite) -> _Server | None:
    try:
        return _Server((FORBIDDEN_HOST, site.port), _Handler, site, trap=True)
    except OSError:  # 127.0.0.2 is not bindable everywhere (macOS without an alias)
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args):  # quiet: the site's own log is `site.log`
        pass

    def do_GET(self):
        site = self.server.site
        if self.server.trap:
            site.trapped.append(self.path)
            return self._send(500, "text/plain", b"the forbidden address was reached")
        site.log.append(LoggedRequest("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
        try:
            self._route(site, urlsplit(self.path))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up, as a fetcher past its size or time limit does

    def _route(self, site: LocalSite, u) -> None:
        path, query = u.path, parse_qs(u.query)
        if path in site.pages:
            p = site.pages[path]
            return self._send(200, p.content_type, p.body)
        if path == "/robots.txt":
            return self._robots(site)
        if path.startswith("/private/") or path.startswith("/drafts/"):
            return self._send(200, "text/html; charset=utf-8", _html("Private", "<p>Staff only: 4417.</p>"))
        if path == "/redirect-in":
            return self._redirect(301, "/articles/zephyr-relay.html")
        if path == "/redirect-out":
            return self._redirect(302, site.forbidden_url("/articles/zephyr-relay.html"))
        if path == "/redirect-loop":
            return self._redirect(302, "/redirect-loop")
        if path == "/redirect-to":
            return self._redirect(302, query.get("url", ["/"])[0])
        if path == "/slow":
            return self._slow(site)
        if path in ("/big", "/big-declared"):
            return self._big(site, declared=path == "/big-declared")
        if path == "/image.png":
            return self._send(200, "image/png", _PNG)
        if m := re.fullmatch(r"/status/(\d{3})", path):
            return self._send(int(m[1]), "text/plain", f"status {m[1]}".encode())
        if path.endswith("/search") and path[: -len("/search")] in _SEARCH_PREFIXES:
            return self._search(site, path[: -len("/search")], query)
        return self._send(404, "text/html; charset=utf-8", _html("Not found", "<p>No such page.</p>"))

    # --- responses --------------------------------------------------------------------------------------------
    def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, status: int, location: str) -> None:
        self._send(
            status, "text/html; charset=utf-8", b"<a href='%s'>moved</a>" % location.encode(), {"Location": location}
        )

    def _robots(self, site: LocalSite) -> None:
        if site.robots == "ok":
            return self._send(200, "text/plain", ROBOTS_TXT.encode())
        if site.robots == "disallow-all":
            return self._send(200, "text/plain", b"User-agent: *\nDisallow: /\n")
        if site.robots == "missing":
            return self._send(404, "text/plain", b"no robots.txt")
        if site.robots == "error":
            return self._send(503, "text/plain", b"overloaded")
        site._stop.wait(60)  # "hang": never answer

    def _streaming_headers(self, content_type: str, length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")  # the body ends when the connection does
        self.end_headers()
        self.close_connection = True

    def _slow(self, site: LocalSite) -> None:
        self._streaming_headers("text/html; charset=utf-8")
        self.wfile.write(b"<html><body><p>Loading")
        self.wfile.flush()
        deadline = time.monotonic() + 120
        while not site._stop.wait(0.2) and time.monotonic() < deadline:
            self.wfile.write(b".")
            self.wfile.flush()

    def _big(self, site: LocalSite, declared: bool) -> None:
        self._streaming_headers("text/html; charset=utf-8", BIG_BYTES if declared else None)
        site.big_sent = 0
        site.big_finished.clear()
        chunk = (b"<p>" + b"lorem ipsum " * 5450 + b"</p>\n")[:65_536]
        try:
            while site.big_sent < BIG_BYTES and not site._stop.is_set():
                piece = chunk[: BIG_BYTES - site.big_sent]
                self.wfile.write(piece)
                site.big_sent += len(piece)
                # ~20 MB/s: kernel buffers (tens of MB on loopback) would otherwise take the whole page at once,
                # and `big_sent` could not show that the fetcher hung up early
                time.sleep(0.003)
        finally:
            site.big_finished.set()

    def _search(self, site: LocalSite, prefix: str, query: dict[str, list[str]]) -> None:
        if prefix == "/brave/res/v1/web":
            return self._brave(site, query)
        if prefix == "/limited":
            return self._send(429, "text/plain", b"Too Many Requests")
        if prefix == "/noformat" or query.get("format", [""])[0] != "json":
            return self._send(403, "text/html", b"<h1>403 Forbidden</h1>")
        q = query.get("q", [""])[0]
        results = [] if prefix == "/empty" else [_searx_result(site, p) for p in site.search(q)]
        if prefix == "/noisy":
            first = results[0]["url"]
            results = [
                {"url": "https://www.youtube.com/watch?v=zephyr9", "title": "Zephyr-9 video", "content": "video"},
                results[0],
                {"url": first + "#comments", "title": "same page again", "content": ""},
                {"url": "https://m.bilibili.com/video/BV1", "title": "视频", "content": ""},
                *results[1:],
                {"url": "ftp://files.example/x", "title": "not http", "content": ""},
            ]
        unresponsive = [["google", "timeout"], ["bing", "CAPTCHA"]] if prefix == "/empty" else []
        body = {"query": q, "number_of_results": len(results), "results": results, "unresponsive_engines": unresponsive}
        self._send(200, "application/json", json.dumps(body, ensure_ascii=False).encode())

    def _brave(self, site: LocalSite, query: dict[str, list[str]]) -> None:
        key = self.headers.get("X-Subscription-Token", "")
        if key == "limited-key":
            return self._send(429, "application/json", b'{"type":"ErrorResponse","error":{"code":"RATE_LIMITED"}}')
        if key != "good-key":
            return self._send(
                401, "application/json", b'{"type":"ErrorResponse","error":{"code":"SUBSCRIPTION_TOKEN_INVALID"}}'
            )
        count = int(query.get("count", ["20"])[0])
        pages = site.search(query.get("q", [""])[0])[:count]
        results = [{"url": site.url(p.path), "title": p.title, "description": p.text()[:160]} for p in pages]
        self._send(200, "application/json", json.dumps({"type": "search", "web": {"results": results}}).encode())


def _searx_result(site: LocalSite, p: SitePage) -> dict[str, str]:
    return {"url": site.url(p.path), "title": p.title, "content": p.text()[:160], "engine": "local"}


# --- the pages -------------------------------------------------------------------------------------------------
_NAV = """<header class="site-header"><a href="/" class="logo">Northwind Signal Works</a>
<nav><ul><li><a href="/">Home</a></li><li><a href="/articles/zephyr-relay.html">Relays</a></li>
<li><a href="/articles/relay-specs.html">Specifications</a></li><li><a href="/notes/field-notes.md">Field notes</a></li>
<li><a href="/private/keys.html">Staff</a></li></ul></nav></header>"""
_COOKIES = """<div id="cookie-banner" class="cookie-consent">We use cookies to improve your experience.
<button>Accept all</button> <button>Reject</button> <a href="/privacy">Privacy settings</a></div>"""
_FOOTER = """<aside class="newsletter"><h3>Subscribe to our newsletter</h3><form action="/subscribe" method="post">
<input type="email" name="email" placeholder="you@example.com"><button type="submit">Sign up</button></form></aside>
<footer><p>&copy; 2026 Northwind Signal Works. All rights reserved.</p>
<p><a href="/terms">Terms</a> | <a href="/privacy">Privacy</a> | <a href="/contact">Contact</a></p></footer>"""


def _html(title: str, article: str, lang: str = "en", charset: str = "utf-8") -> bytes:
    doc = f"""<!DOCTYPE html>
<html lang="{lang}"><head><meta charset="{charset}"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body>{_COOKIES}{_NAV}<main><article>{article}</article></main>{_FOOTER}</body></html>"""
    return doc.encode(charset)


_ZEPHYR = f"""<h1>The end of the Zephyr-9 relay</h1>
<p class="byline">By Ada Okafor, 20 March 2026</p>
<p>For nearly three decades the Zephyr-9 relay carried telemetry between the northern weather stations and the
coastal operations centre. Built in 1998 on a granite ridge above Harrow Bay, it survived four major storms and one
lightning strike that melted its original antenna mast.</p>
<p>{FACT} Engineers had planned the shutdown for two years, moving each station to the fibre backbone one at a time
so that no readings were lost during the change.</p>
<h2>Why it was retired</h2>
<p>Spare parts for its 2.4 GHz radios were no longer made, and maintenance visits needed a helicopter in winter. The
fibre link that replaced it carries a hundred times more data and costs a fifth as much to run.</p>
<p>The relay's mast will stay on the ridge as a landmark; the equipment hut becomes a shelter for hikers.</p>"""

_SPECS = """<h1>Relay specifications</h1>
<p>The table lists the relays still in service and the one retired this year.</p>
<table>
<thead><tr><th>Relay</th><th>Band</th><th>Range (km)</th><th>Status</th></tr></thead>
<tbody>
<tr><td>Zephyr-9</td><td>2.4 GHz</td><td>48</td><td>Decommissioned</td></tr>
<tr><td>Boreas-3</td><td>5.8 GHz</td><td>31</td><td>In service</td></tr>
<tr><td>Notus-12</td><td>900 MHz</td><td>76</td><td>In service</td></tr>
</tbody></table>
<h2>Reading a relay's status</h2>
<p>Each relay answers a status query on port 7000. This script prints the signal margin:</p>
<pre><code class="language-python">import socket

def signal_margin(host: str) -&gt; float:
    with socket.create_connection((host, 7000), timeout=5) as s:
        s.sendall(b"STATUS\\n")
        return float(s.recv(64).split()[1])
</code></pre>
<p>A margin under 6 dB means the link needs attention.</p>"""

_QINGLUAN = f"""<h1>青鸾七号气象站正式启用</h1>
<p class="byline">记者 李晓梅 报道</p>
<p>经过三年的建设，{FACT_ZH}该站位于苍山东坡海拔两千四百米处，主要观测降水、风速和大气温度。</p>
<p>气象局表示，新站点的数据将每十分钟上传一次，并与周边六个自动站组成观测网络，为洱海流域的防汛工作提供支持。</p>
<h2>建设过程</h2>
<p>由于山路狭窄，大部分设备由骡队运送上山。施工团队克服了雨季塌方等困难，最终按期完成了全部安装和调试工作。</p>"""

_GBK = f"""<h1>南岭三号隧道通车</h1>
<p>{FACT_GBK}隧道于今年春天贯通，将两座城市之间的车程缩短了四十分钟。</p>"""

_INDEX = """<h1>Northwind Signal Works</h1>
<p>News and technical notes about the relay network that links our weather stations.</p>
<ul><li><a href="/articles/zephyr-relay.html">The end of the Zephyr-9 relay</a></li>
<li><a href="/articles/relay-specs.html">Relay specifications</a></li>
<li><a href="/articles/qingluan-station-zh.html">青鸾七号气象站正式启用</a></li></ul>"""

_NOTES_MD = """# Field notes: spring inspection

- Boreas-3: mast bolts re-torqued, margin 14 dB.
- Notus-12: replaced the lightning arrester; margin 9 dB.

## Next visit

Check the solar panels on Notus-12 before the monsoon season.
"""

_README_TXT = """Northwind Signal Works: relay maintenance log (plain text).
Boreas-3 and Notus-12 are inspected every spring; Zephyr-9 is no longer visited.
"""


def _build_pages() -> list[SitePage]:
    html = "text/html; charset=utf-8"
    return [
        SitePage("/", "Northwind Signal Works", "en", html, _html("Northwind Signal Works", _INDEX)),
        SitePage(
            "/articles/zephyr-relay.html",
            "The end of the Zephyr-9 relay",
            "en",
            html,
            _html("The end of the Zephyr-9 relay", _ZEPHYR),
            (FACT,),
        ),
        SitePage(
            "/articles/relay-specs.html", "Relay specifications", "en", html, _html("Relay specifications", _SPECS)
        ),
        SitePage(
            "/articles/qingluan-station-zh.html",
            "青鸾七号气象站正式启用",
            "zh",
            html,
            _html("青鸾七号气象站正式启用", _QINGLUAN, lang="zh-CN"),
            (FACT_ZH,),
        ),
        # No charset in the header: only the <meta> tag says GBK.
        SitePage(
            "/articles/legacy-gbk.html",
            "南岭三号隧道通车",
            "zh",
            "text/html",
            _html("南岭三号隧道通车", _GBK, lang="zh-CN", charset="gbk"),
            (FACT_GBK,),
            "gbk",
        ),
        SitePage(
            "/notes/field-notes.md",
            "Field notes: spring inspection",
            "en",
            "text/markdown; charset=utf-8",
            _NOTES_MD.encode(),
        ),
        SitePage("/notes/readme.txt", "Relay maintenance log", "en", "text/plain; charset=utf-8", _README_TXT.encode()),
    ]


def _png_1x1() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


_PNG = _png_1x1()
