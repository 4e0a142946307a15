"""The guarded fetcher against the real local site: robots.txt, redirects, time and size limits, content types,
and connecting to the address the guard checked. Every test is bounded to a few seconds."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rag_site import BIG_BYTES, FACT, FACT_GBK, FACT_ZH, LocalSite

from expertkit.rag.web.fetch import DEFAULT_USER_AGENT, Fetcher, FetchError, FetchFailure, Page
from expertkit.rag.web.netguard import NetGuard
from expertkit.rag.web.robots import RobotsRules

pytestmark = pytest.mark.anyio
LOCAL = ["127.0.0.1/32"]


def make_fetcher(**kwargs) -> Fetcher:
    kwargs.setdefault("timeout", 3.0)
    return Fetcher(NetGuard(LOCAL), **kwargs)


async def bounded(aw, seconds: float = 10.0):
    return await asyncio.wait_for(aw, seconds)


async def fetch_one(url: str, **kwargs) -> Page:
    async with make_fetcher(**kwargs) as f:
        return await bounded(f.fetch(url))


async def failure_of(url: str, **kwargs) -> FetchError:
    with pytest.raises(FetchError) as e:
        await fetch_one(url, **kwargs)
    return e.value


async def test_fetches_an_article_with_a_named_user_agent(site):
    page = await fetch_one(site.url("/articles/zephyr-relay.html"))
    assert (page.status, page.content_type, page.charset, page.kind) == (200, "text/html", "utf-8", "html")
    assert page.url == page.requested_url == site.url("/articles/zephyr-relay.html")
    assert FACT in page.text()
    assert datetime.fromisoformat(page.fetched_at).utcoffset().total_seconds() == 0
    assert site.requests == ["/robots.txt", "/articles/zephyr-relay.html"]
    assert DEFAULT_USER_AGENT.startswith("expertkit/")
    for request in site.log:
        assert request.headers["user-agent"] == DEFAULT_USER_AGENT
        assert request.headers["host"] == f"127.0.0.1:{site.port}"


async def test_chinese_markdown_text_and_meta_charset_pages(site):
    async with make_fetcher() as f:
        pages, failures = await bounded(
            f.fetch_all(
                [site.url(p) for p in ("/articles/qingluan-station-zh.html", "/articles/legacy-gbk.html")]
                + [site.url("/notes/field-notes.md"), site.url("/notes/readme.txt")]
            )
        )
    assert failures == []
    zh, gbk, md, txt = pages
    assert FACT_ZH in zh.text()
    assert gbk.charset is None and FACT_GBK in gbk.text()  # only the <meta> tag names GBK
    assert (md.content_type, md.kind) == ("text/markdown", "markdown") and md.text().startswith("# Field notes")
    assert (txt.content_type, txt.kind) == ("text/plain", "text")


async def test_robots_disallowed_folder_is_never_requested(site):
    urls = [site.url("/private/keys.html"), site.url("/articles/zephyr-relay.html"), site.url("/")]
    async with make_fetcher() as f:
        pages, failures = await bounded(f.fetch_all(urls))
    assert [p.url for p in pages] == urls[1:]
    assert failures == [FetchFailure(urls[0], "robots.txt disallows /private/")]
    assert site.requested("/private/keys.html") == 0
    assert site.requested("/robots.txt") == 1  # read once for the whole site


async def test_robots_rules_follow_the_user_agent(site):
    drafts = site.url("/drafts/next.html")
    assert (await failure_of(drafts)).reason == "robots.txt disallows /drafts/"  # the "expertkit" group
    page = await fetch_one(drafts, user_agent="OtherBot/1.0")  # the "*" group leaves /drafts/ open
    assert page.status == 200
    assert (await failure_of(site.url("/private/x"), user_agent="OtherBot/1.0")).reason.endswith("/private/")
    assert site.requested("/private/x") == 0


async def test_respect_robots_false_reads_everything(site):
    page = await fetch_one(site.url("/private/keys.html"), respect_robots=False)
    assert "4417" in page.text()
    assert site.requests == ["/private/keys.html"]


@pytest.mark.parametrize(
    ("mode", "allowed"), [("missing", True), ("error", True), ("hang", True), ("disallow-all", False)]
)
async def test_robots_txt_that_is_missing_failing_or_silent_allows(mode, allowed):
    with LocalSite(robots=mode, trap=False) as own:
        start = time.monotonic()
        url = own.url("/articles/zephyr-relay.html")
        if allowed:
            page = await fetch_one(url, timeout=2.0, robots_timeout=0.3)
            assert FACT in page.text()
        else:
            assert (await failure_of(url)).reason == "robots.txt disallows /"
            assert own.requested("/articles/zephyr-relay.html") == 0
        assert time.monotonic() - start < 1.5


async def test_redirects_are_followed_and_each_hop_checked(site):
    page = await fetch_one(site.url("/redirect-in"))
    assert page.requested_url == site.url("/redirect-in")
    assert page.url == site.url("/articles/zephyr-relay.html")
    assert FACT in page.text()


async def test_redirect_out_of_the_allowed_network_is_refused(site):
    e = await failure_of(site.url("/redirect-out"))
    target = site.forbidden_url("/articles/zephyr-relay.html")
    assert e.reason == f"redirect to {target} refused: 127.0.0.2 is a loopback address"
    assert e.url == site.url("/redirect-out")
    assert site.trapped == []
    assert site.requested("/articles/zephyr-relay.html") == 0


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("file:///etc/passwd", "file:// is not fetched, only http:// and https://"),
        ("ftp://127.0.0.1/x", "ftp:// is not fetched, only http:// and https://"),
        ("/private/keys.html", "robots.txt disallows /private/"),
        ("http://0x7f.0.0.2:1/", "0x7f.0.0.2 is 127.0.0.2, a loopback address"),
    ],
)
async def test_redirect_targets_are_refused_like_urls(site, target, reason):
    e = await failure_of(site.url(f"/redirect-to?url={target}"))
    assert e.reason.startswith("redirect to ") and e.reason.endswith(reason)
    assert site.requested("/private/keys.html") == 0


async def test_redirect_loop_stops(site):
    e = await failure_of(site.url("/redirect-loop"))
    assert e.reason.startswith("more than 5 redirects")
    assert site.requested("/redirect-loop") == 6


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "file:// is not fetched, only http:// and https://"),
        ("ftp://127.0.0.1/pub/", "ftp:// is not fetched, only http:// and https://"),
        ("http://127.0.0.2:{port}/", "127.0.0.2 is a loopback address"),
        ("http://2130706434:{port}/", "2130706434 is 127.0.0.2, a loopback address"),
        ("http://[::ffff:127.0.0.2]:{port}/", "::ffff:127.0.0.2 wraps 127.0.0.2, a loopback address"),
        ("http://10.0.0.1/", "10.0.0.1 is a private address"),
    ],
)
async def test_refused_urls_are_never_requested(site, url, reason):
    e = await failure_of(url.format(port=site.port))
    assert e.reason == reason
    assert site.requests == [] and site.trapped == []


async def test_connects_to_the_checked_address_without_a_second_lookup(site, monkeypatch):
    looked_up = []
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        looked_up.append(host)
        if host not in ("127.0.0.1", b"127.0.0.1"):
            raise socket.gaierror(socket.EAI_NONAME, "the test allows no other lookups")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    guard = NetGuard(LOCAL, resolver=lambda host, port: {"relay.test": ["127.0.0.1"]}[host])
    async with Fetcher(guard, timeout=3.0) as f:
        page = await bounded(f.fetch(f"http://relay.test:{site.port}/articles/zephyr-relay.html"))
    assert page.url == f"http://relay.test:{site.port}/articles/zephyr-relay.html"
    assert FACT in page.text()
    assert "relay.test" not in looked_up
    assert {r.headers["host"] for r in site.log} == {f"relay.test:{site.port}"}


async def test_a_slow_page_times_out_without_holding_up_the_others(site):
    async with make_fetcher(timeout=1.0) as f:
        slow = asyncio.ensure_future(f.fetch(site.url("/slow")))
        start = time.monotonic()
        pages, failures = await bounded(f.fetch_all([site.url("/"), site.url("/articles/relay-specs.html")]))
        assert time.monotonic() - start < 0.8 and not slow.done()
        assert len(pages) == 2 and failures == []
        with pytest.raises(FetchError, match=r"timed out after 1 s"):
            await bounded(slow)
        assert time.monotonic() - start < 2.0
        pages, failures = await bounded(f.fetch_all([site.url("/slow"), site.url("/notes/readme.txt")]))
    assert [p.url for p in pages] == [site.url("/notes/readme.txt")]
    assert failures == [FetchFailure(site.url("/slow"), "timed out after 1 s")]


async def test_concurrency_is_limited(site):
    urls = [site.url(f"/slow?n={i}") for i in range(4)]
    start = time.monotonic()
    async with make_fetcher(timeout=0.5, concurrency=2) as f:
        pages, failures = await bounded(f.fetch_all(urls))
    elapsed = time.monotonic() - start
    assert pages == [] and [x.reason for x in failures] == ["timed out after 0.5 s"] * 4
    assert 0.95 < elapsed < 2.0  # two rounds of two, not one round of four


async def test_a_10_mb_page_is_refused_without_reading_it_all(site):
    site.big_finished.clear()
    start = time.monotonic()
    e = await failure_of(site.url("/big"), max_bytes=1_000_000)
    assert e.reason == "page larger than 1 MB"
    assert time.monotonic() - start < 2.0
    assert site.big_finished.wait(5)
    assert site.big_sent < BIG_BYTES / 2  # the fetcher hung up: the server could not send the rest
    site.big_finished.clear()
    assert (await failure_of(site.url("/big"))).reason == "page larger than 5 MB"  # the default max_bytes
    assert site.big_finished.wait(5)
    assert site.big_sent < BIG_BYTES


async def test_a_declared_10_mb_page_is_refused_before_reading(site):
    e = await failure_of(site.url("/big-declared"))
    assert e.reason == "page larger than 5 MB (it declares 10 MB)"


async def test_other_content_types_are_refused(site):
    e = await failure_of(site.url("/image.png"))
    assert e.reason == "content type image/png is not read (html, plain text, markdown, pdf, docx are)"


async def test_http_errors_and_closed_ports_are_one_line(site):
    e = await failure_of(site.url("/status/404"))
    assert (e.reason, e.status) == ("HTTP 404 Not Found", 404)
    assert (await failure_of(site.url("/status/503"))).reason == "HTTP 503 Service Unavailable"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens once the socket is closed
    e = await failure_of(f"http://127.0.0.1:{closed}/", respect_robots=False)
    assert e.reason.startswith("could not connect to 127.0.0.1")


def test_page_text_decoding():
    def page(body: bytes, content_type: str = "text/html", charset: str | None = None) -> Page:
        return Page("u", "u", 200, content_type, body, "2026-01-01T00:00:00+00:00", charset)

    assert page("é".encode("latin-1"), charset="iso-8859-1").text() == "é"
    assert page('<meta charset="gb2312"><p>中文'.encode("gbk")).text().endswith("中文")
    meta = b'<meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS">' + "日本".encode("shift_jis")
    assert page(meta).text().endswith("日本")
    assert page(b"\xef\xbb\xbfhello", charset="latin-1").text() == "hello"  # the BOM wins
    assert page(b"caf\xe9 ok").text() == "caf\ufffd ok"  # no charset anywhere: UTF-8 with replacement
    assert page(b"x", charset="no-such-codec").text() == "x"


def _self_signed(tmp_path, name: str) -> tuple[str, str]:
    """A certificate for `name` (its own CA) and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_file), str(key_file)


@pytest.fixture
def tls_site(tmp_path):
    """(port, server names seen in TLS handshakes, Host headers seen, CA file): HTTPS on 127.0.0.1 as relay.test."""
    pytest.importorskip("cryptography")
    cert_file, key_file = _self_signed(tmp_path, "relay.test")
    names, hosts = [], []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            hosts.append(self.headers["Host"])
            body = f"<p>{FACT}</p>".encode() if self.path != "/robots.txt" else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address[1], names, hosts, cert_file
    server.shutdown()
    server.server_close()
    thread.join(5)


async def test_https_goes_to_the_checked_address_and_verifies_the_name(tls_site):
    port, names, hosts, ca_file = tls_site
    guard = NetGuard(LOCAL, resolver=lambda host, p: {"relay.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}[host])
    trust = ssl.create_default_context(cafile=ca_file)
    async with Fetcher(guard, timeout=3.0, verify=trust) as f:
        page = await bounded(f.fetch(f"https://relay.test:{port}/news"))
        assert FACT in page.text() and page.url == f"https://relay.test:{port}/news"
        assert set(names) == {"relay.test"} and set(hosts) == {f"relay.test:{port}"}
        with pytest.raises(FetchError) as e:  # the certificate is for relay.test only
            await bounded(f.fetch(f"https://other.test:{port}/news"))
    assert e.value.reason.startswith("the TLS certificate of other.test could not be verified")
    assert hosts.count(f"other.test:{port}") == 0


@pytest.mark.parametrize(
    ("robots", "path", "rule"),
    [
        ("User-agent: *\nDisallow: /private/", "/private/a.html", "/private/"),
        ("User-agent: *\nDisallow: /private/", "/privately", None),
        ("User-agent: *\nAllow: /\nDisallow: /private/", "/private/a", "/private/"),  # longest match, not first
        ("User-agent: *\nDisallow: /\nAllow: /public/", "/public/a", None),
        ("User-agent: *\nDisallow: /\nAllow: /public/", "/other", "/"),
        ("User-agent: *\nDisallow: /a\nAllow: /a", "/a", None),  # a tie goes to Allow
        ("User-agent: *\nDisallow: /*.pdf$", "/docs/x.pdf", "/*.pdf$"),
        ("User-agent: *\nDisallow: /*.pdf$", "/docs/x.pdf?download=1", None),
        ("User-agent: *\nDisallow: /*?sessionid=", "/page?sessionid=42", "/*?sessionid="),
        ("User-agent: *\nDisallow:", "/anything", None),
        ("User-agent: *\nDisallow: /", "/robots.txt", None),
        ("User-agent: *\nDisallow: /caf%C3%A9/", "/café/menu", "/café/"),
        ("User-agent: OtherBot\nDisallow: /\n\nUser-agent: *\nDisallow: /x/", "/y", None),
        ("User-agent: ExpertKit\nDisallow: /y\n\nUser-agent: *\nDisallow: /x/", "/x/1", None),  # our group only
        ("User-agent: ExpertKit\nDisallow: /y\n\nUser-agent: *\nDisallow: /x/", "/y", "/y"),
    ],
)
def test_robots_rules_match_as_rfc_9309_says(robots, path, rule):
    rules = RobotsRules(robots)
    assert rules.disallowing_rule("https://example.org" + path, DEFAULT_USER_AGENT) == rule
    assert RobotsRules(None).disallowing_rule("https://example.org" + path, DEFAULT_USER_AGENT) is None
