"""PII in training rows: e-mail addresses, phone numbers, mainland-China ID-card and bank-card numbers, IPv4 addresses.

    find_pii("Mail a@example.com or call 13812345678.") -> [("EMAIL", "a@example.com"), ("PHONE", "13812345678")]

ID-card numbers count only when their GB 11643 checksum holds and bank-card numbers only when Luhn holds, so order
numbers and the like stay. `expertkit data clean` masks or drops what is found; `expertkit data check` reports it.
"""

from __future__ import annotations

import re
from typing import Any

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
PII_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("EMAIL", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    ("ID_CARD", re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)")),
    ("BANK_CARD", re.compile(r"(?<!\d)(?:\d[ -]?){15,18}\d(?!\d)")),
    ("IP", re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")),
    (
        "PHONE",
        re.compile(
            r"(?<!\d)(?:\+?86[ -]?)?1[3-9]\d{9}(?!\d)|(?<![\w])\+?\d{1,3}[ -]\(?\d{2,4}\)?[ -]\d{3,4}[ -]\d{3,4}(?!\d)"
        ),
    ),
]
_DIGIT = re.compile(r"\d")


def id_card_valid(number: str) -> bool:
    """GB 11643 checksum of an 18-character mainland-China resident ID number."""
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return "10X98765432"[total % 11] == number[17].upper()


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def find_pii(text: str) -> list[tuple[str, str]]:
    """(kind, matched text) of every PII found; ID and bank-card numbers only when their checksum holds."""
    found = []
    numbers = len(_DIGIT.findall(text)) >= 4  # the shortest number PII, an IPv4 address, has four digits
    for kind, pattern in PII_PATTERNS:
        if ("@" not in text) if kind == "EMAIL" else not numbers:
            continue
        for m in pattern.finditer(text):
            value = m.group(0)
            if kind == "ID_CARD" and not id_card_valid(value):
                continue
            if kind == "BANK_CARD" and (not luhn_valid(re.sub(r"\D", "", value)) or id_like(value)):
                continue
            found.append((kind, value))
    return found


def id_like(value: str) -> bool:
    return len(value) == 18 and value[:17].isdigit() and id_card_valid(value)


def mask_pii(text: str, found: list[tuple[str, str]]) -> str:
    for kind, value in sorted(found, key=lambda x: -len(x[1])):
        text = text.replace(value, f"[{kind}]")
    return text


def scrub_row(row: Any, found: list[tuple[str, str]]) -> Any:
    if isinstance(row, str):
        return mask_pii(row, found)
    if isinstance(row, dict):
        return {k: scrub_row(v, found) for k, v in row.items()}
    if isinstance(row, list):
        return [scrub_row(v, found) for v in row]
    return row
