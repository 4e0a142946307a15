"""A light language guess by script, for `expertkit data clean languages=zh,en`: no model, no dependency.

    detect_language("理赔时请在三十天内提交警方报告")    -> "zh"
    detect_language("Send the police report within 30 days") -> "en"

Each Han, kana or Hangul character counts as one unit and each word of an alphabetic script as one (a Chinese
character carries about as much as an English word), so a Chinese answer quoting an English product name stays
Chinese. The script with most units decides: Han (zh; ja when kana make up a share of it), Hangul (ko), Cyrillic
(ru), Arabic (ar), Greek (el), Hebrew (he), Thai (th), Devanagari (hi). Latin-script text is English unless the
function words of French, German, Spanish, Portuguese, Italian or Dutch clearly outnumber English ones. Text with
no letters at all (numbers, symbols) is "unknown".
"""

from __future__ import annotations

import re

_SCRIPTS: dict[str, re.Pattern[str]] = {
    "han": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]"),
    "kana": re.compile(r"[\u3040-\u30ff\u31f0-\u31ff]"),
    "ko": re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]"),
    "latin": re.compile(r"[A-Za-z\u00c0-\u024f]+"),
    "ru": re.compile(r"[\u0400-\u04ff]+"),
    "ar": re.compile(r"[\u0600-\u06ff]+"),
    "el": re.compile(r"[\u0370-\u03ff]+"),
    "he": re.compile(r"[\u0590-\u05ff]+"),
    "th": re.compile(r"[\u0e00-\u0e7f]"),
    "hi": re.compile(r"[\u0900-\u097f]+"),
}
_KANA_SHARE_JA = 0.1  # Japanese prose is a third or more kana; Chinese has none but a stray brand name

_FUNCTION_WORDS = {
    "en": "the and of to a in is you that it for on with as are be this your or by not from at can if an will we do",
    "fr": "le la les des et est un une du pour que dans pas sur au avec ce il vous sont qui par ne",
    "de": "der die das und ist nicht ein eine zu mit den von sie ich auf für im dem sich auch werden",
    "es": "el la los las y que en es por para una con no del se lo al su como más",
    "pt": "o a os as e que em é um uma não do da dos das para com por se ao no na",
    "it": "il lo la gli le e che di è un una non per con del della sono si al nel",
    "nl": "de het een en van is niet dat op te met voor zijn er als bij ook aan",
}
_WORDS = {lang: set(words.split()) for lang, words in _FUNCTION_WORDS.items()}
LANGUAGES = ("zh", "ja", "ko", "en", "fr", "de", "es", "pt", "it", "nl", "ru", "ar", "el", "he", "th", "hi")


def detect_language(text: str) -> str:
    """The language code of `text` (one of LANGUAGES), or "unknown" when it has no letters."""
    units = {script: len(pattern.findall(text)) for script, pattern in _SCRIPTS.items()}
    han, kana = units.pop("han"), units.pop("kana")
    units["cjk"] = han + kana
    script = max(units, key=lambda s: units[s])
    if units[script] == 0:
        return "unknown"
    if script == "cjk":
        return "ja" if kana >= _KANA_SHARE_JA * (han + kana) else "zh"
    if script == "latin":
        return latin_language(_SCRIPTS["latin"].findall(text))
    return script


def latin_language(words: list[str]) -> str:
    """English unless another language's function words outnumber English ones (at least two of them)."""
    lowered = [w.lower() for w in words]
    hits = {lang: sum(w in vocab for w in lowered) for lang, vocab in _WORDS.items()}
    best = max(hits, key=lambda lang: hits[lang])
    return best if best != "en" and hits[best] >= 2 and hits[best] > hits["en"] else "en"
