"""Stable names for sources and chunks, so that adding a document again replaces it instead of duplicating it.

A source is named by its canonical form: a URL normalised (RFC 3986 section 6) so that spellings of one page
agree, or a local file's absolute path::

    canonical_source("HTTP://Docs.Example.com:80/a/../guide?b=2&a=1&utm_source=x#intro")
    -> "http://docs.example.com/guide?a=1&b=2"
    canonical_source("notes/../notes/a.md")  -> "/home/me/notes/a.md"
    chunk_id("http://docs.example.com/guide", 3)  -> "2d81295257648b9a-00003"

The chunk id hashes the whole canonical source, so two pages differing in any way that matters (``?id=1`` and
``?id=2``, ``a_b`` and ``a-b``) never share ids, unlike the tutorial's ids built from a lossy slug of the URL.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import SplitResult, urlsplit
from urllib.request import url2pathname

from expertkit.core.errors import ExpertkitError

DEFAULT_PORTS = {"http": 80, "https": 443}
# click ids and campaign tags that name how a visitor arrived, not which page it is
TRACKING_PARAMS = {"fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "igshid", "mc_cid", "mc_eid"}
UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# characters that may stand unencoded in a path or query (RFC 3986: pchar, plus "/" and "?")
_SAFE_IN_PATH = UNRESERVED | frozenset("!$&'()*+,;=:@/")
_SAFE_IN_QUERY = _SAFE_IN_PATH | frozenset("?")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


def canonical_source(source: str | Path) -> str:
    """The canonical name of a URL or a local path.

    http(s) URLs: scheme and host lowercased, the host in punycode, default port, user:password, fragment and
    tracking parameters (``utm_*``, ``fbclid``, ``gclid`` ...) dropped, ``.``/``..`` resolved, percent-escapes
    normalised, query parameters sorted by name (kept: ``?id=1`` and ``?id=2`` are different pages).
    Paths and ``file://`` URLs: the absolute path with symlinks resolved, in posix form (``/home/me/a.md``).
    Other URL schemes raise an `ExpertkitError`.
    """
    if isinstance(source, Path):
        return _canonical_path(source)
    text = source.strip()
    match = _SCHEME.match(text)
    if not match:
        if not text:
            raise ExpertkitError("an empty source: expected a URL or a file path")
        return _canonical_path(Path(text))
    scheme = match.group(1).lower()
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ExpertkitError(
                f"'{source}' names a file on another machine ({parts.netloc})", hint="copy the file here first"
            )
        return _canonical_path(Path(url2pathname(parts.path)))
    if scheme not in DEFAULT_PORTS:
        raise ExpertkitError(
            f"cannot read '{source}': only http and https URLs (and local files) are supported, not {scheme}://",
            hint="download the document and add the local file instead",
        )
    return _canonical_url(text, source)


def source_key(canonical: str) -> str:
    """A short stable key of a canonical source: the first 16 hex digits of its sha256."""
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def chunk_id(canonical: str, position: int) -> str:
    """The id of a source's chunk number `position`: ``<source_key>-00042``."""
    return f"{source_key(canonical)}-{position:05d}"


def content_hash(text: str) -> str:
    """The sha256 of `text` (hex), to tell whether a document changed since it was added."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical_path(path: Path) -> str:
    return path.expanduser().resolve().as_posix()


def _canonical_url(text: str, source: str) -> str:
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:  # a bad port, or brackets that do not close an IPv6 address
        raise ExpertkitError(f"'{source}' is not a valid URL: {e}", hint="check the host and port") from None
    scheme = parts.scheme.lower()
    host = _canonical_host(parts, source)
    netloc = host if port in (None, DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = _remove_dot_segments(_normalise_escapes(parts.path, _SAFE_IN_PATH)) or "/"
    query = _canonical_query(parts.query)
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def _canonical_host(parts: SplitResult, source: str) -> str:
    host = (parts.hostname or "").rstrip(".")  # hostname is lowercased, without user:password@ and port
    if not host:
        raise ExpertkitError(f"'{source}' has no host name", hint="write it as https://example.com/page")
    if ":" in host:  # IPv6
        return f"[{host}]"
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ExpertkitError(f"'{source}' has a host name that is not valid: {host}") from None


def _canonical_query(query: str) -> str:
    """Parameters with escapes normalised, tracking ones dropped, sorted by name (values of one name keep order)."""
    params = []
    for param in query.split("&"):
        if not param:
            continue
        param = _normalise_escapes(param, _SAFE_IN_QUERY - {"&"})
        name = _PERCENT.sub(lambda m: chr(int(m.group(1), 16)), param.split("=", 1)[0]).lower()
        if name.startswith("utm_") or name in TRACKING_PARAMS:
            continue
        params.append(param)
    params.sort(key=lambda p: p.split("=", 1)[0])
    return "&".join(params)


def _normalise_escapes(text: str, safe: frozenset[str]) -> str:
    """Decode escapes of unreserved characters, upper-case the others, and escape what may not stand bare."""
    out = []
    i = 0
    while i < len(text):
        char = text[i]
        escape = _PERCENT.match(text, i)
        if escape:
            decoded = chr(int(escape.group(1), 16))
            out.append(decoded if decoded in UNRESERVED else escape.group(0).upper())
            i += 3
            continue
        if char in safe:
            out.append(char)
        else:  # spaces, non-ASCII letters, a "%" that starts no escape: their UTF-8 bytes, escaped
            out.append("".join(f"%{b:02X}" for b in char.encode("utf-8")))
        i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4: ``/a/b/../c/./d`` -> ``/a/c/d``."""
    segments = path.split("/")
    out: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/".join(out)
