"""The numbered sources of a grounded answer, as the chat shows them under it: safe HTML whatever the source says.

    sources_html([{"n": 1, "url": "/home/me/kb/relay.md", "title": "Zephyr-9 relay"}], "Sources")
    -> '<div class="expertkit-sources"><strong>Sources</strong><br>&#91;1&#93; <a href="file:///home/me/kb/relay.md" ...

Titles and URLs come from documents and web pages, so they are data: every character that means something in
HTML or Markdown is written as a character reference, and only http, https and file URLs (a local path becomes a
file:// URL) are made links; anything else (javascript:, data:) is shown as text.
"""

from __future__ import annotations

import html
from pathlib import PurePosixPath
from typing import Any

LINK_SCHEMES = ("http://", "https://", "file://")


def escape_text(text: str) -> str:
    """Letters, digits and spaces as they are; every other character as `&#N;`, so neither the HTML nor the
    Markdown renderer reads anything in it."""
    return "".join(c if c.isalnum() or c == " " else f"&#{ord(c)};" for c in text)


def source_href(url: str) -> str | None:
    """The link of a source: an http(s) or file URL as it is, an absolute local path as a file:// URL, else None."""
    url = url.strip()
    if url.lower().startswith(LINK_SCHEMES):
        return url
    if url.startswith("/"):
        return PurePosixPath(url).as_uri()
    return None


def sources_html(sources: list[dict[str, Any]], heading: str) -> str:
    """One line per source: [n] title (a link when it may be one) and its URL or path."""
    lines = [f"<strong>{escape_text(heading)}</strong>"]
    for i, source in enumerate(sources, 1):
        n = source.get("n") if isinstance(source.get("n"), int) else i
        url = str(source.get("url") or "")
        title = escape_text(str(source.get("title") or url or "?"))
        href = source_href(url)
        if href:
            title = f'<a href="{html.escape(href, quote=True)}" target="_blank" rel="noopener noreferrer">{title}</a>'
        shown = f" <code>{escape_text(url)}</code>" if url and url != source.get("title") else ""
        lines.append(f"&#91;{n}&#93; {title}{shown}")
    return '<div class="expertkit-sources">' + "<br>".join(lines) + "</div>"
