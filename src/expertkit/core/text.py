"""Small text helpers shared by the data loader and the knowledge base (no heavy imports)."""

from __future__ import annotations


def guess_encoding(raw: bytes) -> str:
    """The likely encoding of text that is not UTF-8, for the fix in the error (an iconv name)."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16"  # Windows PowerShell's `>` and Excel's 'Unicode text'
    # Japanese first: GB18030 decodes almost any bytes, Shift-JIS rarely yields kana from Chinese text
    for encoding, low, high in (("SHIFT_JIS", "\u3040", "\u30ff"), ("GB18030", "\u4e00", "\u9fff")):
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        if any(low <= c <= high for c in text):  # Chinese (GBK is a subset of GB18030) or Japanese kana
            return encoding
    return "CP1252"  # Western European Windows / Excel
