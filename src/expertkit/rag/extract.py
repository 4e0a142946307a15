"""Documents into text: markdown, plain text, HTML, PDF and Word files, and fetched web pages.

Every reader returns a `Document` whose `source` is the canonical path or URL (see ids.py)::

    Document(source="/home/me/docs/cache.html", title="Configuring the cache", kind="html",
             text="# Configuring the cache\\n\\nThe cache keeps ...\\n\\n| Backend | Default TTL |\\n|---|---|\\n...")

HTML, Word and markdown keep their structure as markdown (headings, lists, tables, code blocks), so the chunker
can split on it; PDF and plain text come as paragraphs. A file that cannot be read (not UTF-8, encrypted,
damaged) raises an `ExpertkitError` naming the file.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from expertkit.core.errors import DataError, ExpertkitError, Problem
from expertkit.core.optional import import_optional
from expertkit.core.text import guess_encoding
from expertkit.rag.ids import canonical_source

Kind = Literal["md", "txt", "html", "pdf", "docx"]
KINDS: dict[str, Kind] = {
    ".md": "md",
    ".markdown": "md",
    ".txt": "txt",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
}
SUPPORTED = set(KINDS)
CONTENT_TYPES: dict[str, Kind] = {
    "text/html": "html",
    "application/xhtml+xml": "html",
    "text/plain": "txt",
    "text/markdown": "md",
    "text/x-markdown": "md",
    "application/pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
}


def _consent_xpath() -> str:
    """Cookie / consent banners by id or class: "consent", "gdpr", "onetrust", or "cookie" next to a banner word
    (not "cookie" alone: pages about cookies use it on their content, as trafilatura's own rules note)."""
    names = "translate(concat(' ', @id, ' ', @class, ' '), 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')"
    alone = " or ".join(f"contains({names}, '{w}')" for w in ("consent", "gdpr", "onetrust"))
    banner = " or ".join(f"contains({names}, '{w}')" for w in ("banner", "notice", "popup", "modal", "overlay", "-bar"))
    return f"//*[{alone} or (contains({names}, 'cookie') and ({banner}))]"


# site chrome pruned before trafilatura runs: on short pages its fallback would otherwise keep menus, buttons and
# cookie banners. <header> only outside the article (an article's own header holds its title); <form> only when it
# does not wrap the page (ASP.NET pages put everything in one form).
PRUNE_XPATHS = [
    "//nav",
    "//footer",
    "//aside[not(ancestor::article or ancestor::main)]",
    "//button",
    "//header[not(ancestor::article or ancestor::main)]",
    "//form[not(.//p or .//article or .//main)]",
    "//*[@role='navigation' or @role='banner' or @role='contentinfo' or @role='search' or @role='dialog']",
    _consent_xpath(),
]
_CHROME_TAGS = ["nav", "header", "footer", "aside", "form", "button", "script", "style", "noscript", "template"]
_BLOCK_TAGS = ["p", "div", "section", "article", "main", "li", "tr", "br", "h1", "h2", "h3", "h4", "h5", "h6"]


@dataclass
class Document:
    """The text of one file or web page. `source`: canonical path or URL; `text`: markdown for md/html/docx."""

    source: str
    title: str
    text: str
    kind: Kind
    page_starts: list[tuple[int, int]] = field(default_factory=list)  # PDF: (offset in text, page number from 1)


def find_files(paths: list[str | Path]) -> list[Path]:
    """The documents to read: files as given, folders searched recursively (sorted; hidden folders and files of
    other types skipped). A missing path, or a file of an unsupported type given by name, is an error; all such
    problems are reported at once."""
    found: dict[Path, None] = {}  # ordered and without repeats
    problems: list[Problem] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            files = _walk(path)
            if not files:
                problems.append(Problem(f"folder '{given}' holds no documents", hint=f"supported: {_supported()}"))
            found.update(dict.fromkeys(files))
        elif not path.exists():
            problems.append(Problem(f"'{given}' does not exist", hint=_nearby(path)))
        elif path.suffix.lower() not in SUPPORTED:
            problems.append(
                Problem(f"'{given}' is a {path.suffix or 'suffix-less'} file", hint=f"supported: {_supported()}")
            )
        else:
            found[path] = None
    if problems:
        raise ExpertkitError(f"cannot add {len(problems)} of the paths given:", problems=problems)
    return list(found)


def extract_file(path: str | Path) -> Document:
    """Read one document file; its type comes from its suffix."""
    path = Path(path)
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise ExpertkitError(
            f"{path}: cannot read '{path.suffix or path.name}' files", hint=f"supported: {_supported()}"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ExpertkitError(f"{path}: no such file", hint=_nearby(path)) from None
    except OSError as e:
        raise ExpertkitError(f"{path}: cannot read the file: {e.strerror or e}") from None
    return _extract(data, kind, canonical_source(path), str(path), path.stem)


def extract_bytes(body: bytes, content_type: str, url: str) -> Document:
    """A fetched web page or file, by its Content-Type (by the URL's suffix when that says nothing useful)."""
    mime, _, params = content_type.partition(";")
    mime = mime.strip().lower()
    charset = _charset(params)
    suffix = Path(urlsplit(url).path).suffix.lower()
    kind = CONTENT_TYPES.get(mime)
    if kind == "txt" and KINDS.get(suffix) == "md":  # raw markdown is mostly served as text/plain
        kind = "md"
    if kind is None and mime in ("", "application/octet-stream", "binary/octet-stream"):
        kind = KINDS.get(suffix) or _sniff(body)
    if kind is None:
        raise ExpertkitError(
            f"{url}: cannot index '{mime}' content",
            hint="pages (HTML), plain text, markdown, PDF and Word (.docx) files can be added",
        )
    return _extract(body, kind, canonical_source(url), url, _title_from_url(url), charset=charset, strict=False)


def extract_html(html: str, url: str = "") -> Document:
    """The main text of a page as markdown: navigation, header, footer, forms and cookie banners dropped; tables,
    code blocks, lists and the opening paragraph kept. Title: the page's (one) h1 or og:title or <title>."""
    source = canonical_source(url) if url else ""
    return _html_document(html, source, _title_from_url(url) if url else "")


def _extract(
    data: bytes, kind: Kind, source: str, where: str, fallback_title: str, charset: str = "", strict: bool = True
) -> Document:
    if kind == "pdf":
        title, text, page_starts = _read_pdf(data, where)
        return Document(source, title or fallback_title, text, kind, page_starts)
    if kind == "docx":
        title, text = _read_docx(data, where)
        return Document(source, title or fallback_title, text, kind)
    if kind == "html":
        charset = charset or _meta_charset(data)
    text = _decode(data, where, charset, strict)
    if kind == "html":
        return _html_document(text, source, fallback_title)
    if kind == "md":
        title, text = _markdown_title(text)
        return Document(source, title or fallback_title, text.strip(), kind)
    return Document(source, fallback_title, text.strip(), kind)


# --- HTML ---------------------------------------------------------------------------------------------------------


def _html_document(html: str, source: str, fallback_title: str) -> Document:
    # absent, or installed but failing to import (lxml 5.2+ without lxml_html_clean, issue 11): the error says which
    trafilatura = import_optional("trafilatura", "trafilatura", "rag")
    from trafilatura.metadata import extract_title

    tree = trafilatura.load_html(html) if html.strip() else None
    if tree is None:  # not HTML at all, or a bare fragment
        return Document(source, fallback_title, _body_text(html), "html")
    title = _one_line(extract_title(tree) or tree.findtext(".//title") or "") or fallback_title
    text = trafilatura.extract(
        tree,
        url=source or None,
        output_format="markdown",
        include_tables=True,
        include_formatting=True,  # headings, lists, code and emphasis as markdown
        include_comments=False,  # readers' comments under a post are not the document
        include_links=False,
        include_images=False,
        prune_xpath=PRUNE_XPATHS,
    )
    if not text:  # trafilatura found no main text (a very short page): keep what the body says
        text = _body_text(html)
    return Document(source, title, text.strip(), "html")


def _body_text(html: str) -> str:
    """Plain text of <body> without site chrome: the fallback for pages too short for trafilatura."""
    import lxml.html
    from lxml.etree import ParserError

    try:
        root = lxml.html.document_fromstring(html)
    except (ParserError, ValueError):
        return ""
    for element in root.iter(*_CHROME_TAGS):
        element.drop_tree()
    for element in root.xpath(_consent_xpath()):
        element.drop_tree()
    body = root.find("body")
    if body is None:
        return ""
    for element in body.iter(*_BLOCK_TAGS):
        element.tail = "\n" + (element.tail or "")
    lines = (" ".join(line.split()) for line in body.text_content().splitlines())
    return "\n".join(line for line in lines if line)


def _meta_charset(data: bytes) -> str:
    match = re.search(rb"<meta[^>]+charset=[\"']?([\w-]+)", data[:4096], re.IGNORECASE)
    return match.group(1).decode("ascii") if match else ""


def _title_from_url(url: str) -> str:
    parts = urlsplit(url)
    name = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1])
    return Path(name).stem if name else (parts.hostname or url)


def _sniff(body: bytes) -> Kind | None:
    head = body[:512].lstrip().lower()
    if head.startswith(b"%pdf-"):
        return "pdf"
    if head.startswith((b"<!doctype html", b"<html")):
        return "html"
    return None


# --- text and markdown -------------------------------------------------------------------------------------------


def _decode(data: bytes, where: str, charset: str = "", strict: bool = True) -> str:
    """UTF-8 (with or without BOM), UTF-16 with a BOM, or the declared charset. Files that are none of these are
    an error; web pages are decoded with replacement characters rather than refused."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    if charset:
        try:
            return data.decode(charset, errors="strict" if strict else "replace")
        except LookupError:  # an unknown charset name: try UTF-8
            pass
        except UnicodeDecodeError:
            if strict:
                raise _encoding_error(data, where, charset) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        if not strict:
            return data.decode("utf-8", errors="replace")
        raise _encoding_error(data, where) from None


def _encoding_error(data: bytes, where: str, declared: str = "") -> DataError:
    # the same message and guess as expertkit.data.files._read_text (which rag may not import)
    encoding = guess_encoding(data)
    name = Path(where)
    what = f"not valid {declared} text (the charset it declares)" if declared else "not UTF-8 text"
    return DataError(
        f"{where}: {what}; it looks like {encoding}",
        hint=f"save it as UTF-8, e.g. `iconv -f {encoding} -t utf-8 {name.name} > {name.stem}.utf8{name.suffix}`",
    )


_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_ATX_H1 = re.compile(r"^ {0,3}#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_SETEXT_H1 = re.compile(r"^(\S.*)\n=+[ \t]*$", re.MULTILINE)
_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.MULTILINE | re.DOTALL)


def _markdown_title(text: str) -> tuple[str, str]:
    """The title (YAML front matter's `title:`, else the first level-1 heading) and the text without front matter."""
    title = ""
    front = _FRONT_MATTER.match(text)
    if front:
        text = text[front.end() :]
        match = re.search(r"^title:[ \t]*(.+)$", front.group(1), re.MULTILINE)
        title = match.group(1).strip().strip("\"'") if match else ""
    if not title:
        outside_code = _FENCE.sub("", text)
        headings = [m for m in (_ATX_H1.search(outside_code), _SETEXT_H1.search(outside_code)) if m]
        if headings:
            title = min(headings, key=lambda m: m.start()).group(1)
    return _one_line(title), text


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- PDF and Word -----------------------------------------------------------------------------------------------


def _read_pdf(data: bytes, where: str) -> tuple[str, str, list[tuple[int, int]]]:
    import_optional("pypdf", "pypdf", "rag")
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError

    try:
        reader = PdfReader(io.BytesIO(data))  # tries the empty password, which many "protected" PDFs have
        pages = [page.extract_text() or "" for page in reader.pages]
        title = reader.metadata.title if reader.metadata else ""
    except FileNotDecryptedError:
        raise ExpertkitError(
            f"{where}: the PDF is password-protected",
            hint="save an unprotected copy (print to PDF, or `qpdf --decrypt --password=... in.pdf out.pdf`)",
        ) from None
    except DependencyError as e:  # AES-encrypted PDFs need the cryptography package
        raise ExpertkitError(f"{where}: {e}", hint="pip install cryptography") from None
    except Exception as e:  # pypdf raises many kinds of errors for damaged files
        raise ExpertkitError(
            f"{where}: not a readable PDF ({type(e).__name__}: {e})",
            hint="open it in a PDF viewer to check it, or save it again as PDF",
        ) from None
    text, page_starts = _join_pages(pages)
    if not text.strip():
        raise ExpertkitError(
            f"{where}: the PDF holds no text ({len(pages)} pages of images: a scan?)",
            hint="add a text layer first, e.g. `ocrmypdf in.pdf out.pdf`",
        )
    return _one_line(str(title or "")), text, page_starts


def _join_pages(pages: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The pages' text, blank pages left out, and where each page starts in it: (offset, page number from 1)."""
    parts, starts, offset = [], [], 0
    for number, page in enumerate(pages, start=1):
        if not page.strip():
            continue
        unwrapped = _unwrap_lines(page)
        starts.append((offset, number))
        parts.append(unwrapped)
        offset += len(unwrapped) + 2  # the blank line between pages
    return "\n\n".join(parts), starts


_JOINS_NEXT_LINE = re.compile(r"[^\s.!?:;。！？：；…]$")


def _unwrap_lines(page: str) -> str:
    """Join lines that a PDF wrapped in mid-sentence, so that the chunker splits on sentences, not on lines.

    A line is joined to the next when it does not end a sentence and the next starts in lower case or with a CJK
    character: with a space between Latin words, with none after a hyphen (kept: "well-" + "sized" could be either)
    or next to CJK text."""
    out: list[str] = []
    for line in page.splitlines():
        line = line.rstrip()
        if out and line and out[-1] and _JOINS_NEXT_LINE.search(out[-1]) and _continues(line):
            previous, line = out[-1], line.lstrip()
            glue = "" if previous.endswith("-") or _is_cjk(previous[-1]) or _is_cjk(line[0]) else " "
            out[-1] = previous + glue + line
        else:
            out.append(line)
    return "\n".join(out).strip()


def _continues(line: str) -> bool:
    first = line.lstrip()[:1]
    return bool(first) and (first.islower() or _is_cjk(first))


def _is_cjk(char: str) -> bool:
    return "\u3000" <= char <= "\u9fff" or "\uff00" <= char <= "\uffef"


def _read_docx(data: bytes, where: str) -> tuple[str, str]:
    docx = import_optional("docx", "python-docx", "rag")
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
        blocks = [
            _table_markdown(b) if isinstance(b, Table) else _paragraph_markdown(b)
            for b in document.iter_inner_content()
        ]
        title = document.core_properties.title or ""
    except Exception as e:  # not a zip, not a Word document, damaged XML
        raise ExpertkitError(
            f"{where}: not a readable Word document ({type(e).__name__}: {e})",
            hint="open it in Word or LibreOffice and save it again as .docx (old .doc files must be converted)",
        ) from None
    blocks = [b for b in blocks if b]
    if not title:
        title = next((b.lstrip("# ") for b in blocks if b.startswith("# ")), "")
    return _one_line(title), "\n\n".join(blocks)


def _paragraph_markdown(paragraph) -> str:
    text = paragraph.text.strip()
    style = (paragraph.style.name if paragraph.style is not None else "") or ""
    if not text:
        return ""
    if style == "Title":
        return f"# {text}"
    if style.startswith("Heading") and style[7:].strip().isdigit():
        return "#" * min(int(style[7:]), 6) + " " + _one_line(text)
    if style.startswith("List Bullet"):
        return f"- {text}"
    if style.startswith("List Number"):
        return f"1. {text}"
    return text


def _table_markdown(table) -> str:
    rows = []
    for row in table.rows:
        cells, seen = [], set()
        for cell in row.cells:
            if id(cell._tc) in seen:  # a merged cell is returned once per grid column it spans
                continue
            seen.add(id(cell._tc))
            cells.append(_one_line(cell.text).replace("|", "\\|"))
        if any(cells):
            rows.append("| " + " | ".join(cells) + " |")
    if len(rows) > 1:
        rows.insert(1, "|" + "---|" * rows[0].count(" | ") + "---|")
    return "\n".join(rows)


# --- finding files -----------------------------------------------------------------------------------------------


def _walk(folder: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            # skip hidden files and Office's lock files (~$report.docx)
            if not name.startswith((".", "~$")) and Path(name).suffix.lower() in SUPPORTED:
                files.append(Path(root) / name)
    return files


def _supported() -> str:
    return ", ".join(sorted(SUPPORTED))


def _nearby(path: Path) -> str:
    import difflib

    folder = path.parent
    if not folder.is_dir():
        return f"the folder '{folder}' does not exist either"
    present = sorted(x.name for x in folder.iterdir() if not x.name.startswith("."))
    close = difflib.get_close_matches(path.name, present, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{folder / close[0]}'?"
    return f"'{folder}' holds: {', '.join(present[:20])}" if present else f"'{folder}' is empty"


def _charset(params: str) -> str:
    match = re.search(r"charset=[\"']?([\w.:-]+)", params, re.IGNORECASE)
    return match.group(1) if match else ""
