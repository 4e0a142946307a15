"""JSON mode: decoding that can only write valid JSON, closed within the answer's token budget.

    vocab = Vocabulary.of(tokenizer, n_logits=len(logits))
    constraint = JsonConstraint(vocab, root="object", eos_ids=[2], max_tokens=64)
    ... at each step: token = constraint.pick(candidates) ... constraint.advance(token)
    constraint.done                     # the top-level value closed: stop generating

The checker reads bytes (tokens are byte strings: a byte-level BPE token can be half a UTF-8 character) through a
small pushdown automaton of JSON. A state is a hashable tuple `(stack, mode, aux)`: `stack` the open containers
(`"{["`), `mode` what may come next. Every state knows the fewest characters that close it (`close_len`: `"}` in
a string inside an object), and a token is allowed only when the text stays a JSON prefix *and* what it leaves
open can still be closed in the tokens left (one token per character at worst: every byte is a token of a
byte-level vocabulary). So even a random model's answer is whole JSON when it ends, unless `max_tokens` is below
the two tokens of `{}`.

Why not a grammar library (llguidance, outlines, lm-format-enforcer, xgrammar): they mask what keeps the text
valid but cannot make it *end* within `max_tokens`, which needs the shortest completion of each prefix.
"""

from __future__ import annotations

import threading
from typing import Literal

Root = Literal["object", "array", "any"]
State = tuple  # (stack: str, mode: str, aux)

WS = frozenset(b" \t\n\r")
DIGITS = frozenset(b"0123456789")
HEX = frozenset(b"0123456789abcdefABCDEF")
ESCAPES = frozenset(b'"\\/bfnrt')
LITERALS = {ord("t"): b"rue", ord("f"): b"alse", ord("n"): b"ull"}
NUMBER_ENDS = frozenset({"zero", "int", "frac", "exp"})  # number states that may end here
MAX_DEPTH = 32  # containers open at once; deeper nesting is refused (a loop, not data)
NEVER = 1 << 14  # close_len of a token that is not allowed at all
CLOSE = {"{": ord("}"), "[": ord("]")}


def start(root: Root) -> State:
    return ("", "start", root)


def after_value(stack: str) -> State:
    return (stack, "next", None) if stack else ("", "done", None)


def begin_value(stack: str, c: int) -> State | None:
    if c == 0x7B:  # {
        return (stack + "{", "key}", None) if len(stack) < MAX_DEPTH else None
    if c == 0x5B:  # [
        return (stack + "[", "val]", None) if len(stack) < MAX_DEPTH else None
    if c == 0x22:  # "
        return (stack, "str", (False, 0))
    if c == 0x2D:  # -
        return (stack, "num", "minus")
    if c == 0x30:
        return (stack, "num", "zero")
    if c in DIGITS:
        return (stack, "num", "int")
    if c in LITERALS:
        return (stack, "lit", LITERALS[c])
    return None


def number_step(sub: str, c: int) -> str | None:
    """The number's next sub-state, or None when `c` cannot continue it."""
    digit = c in DIGITS
    if sub == "minus":
        return "zero" if c == 0x30 else ("int" if digit else None)
    if sub in ("zero", "int"):
        if digit:
            return "int" if sub == "int" else None
        return "dot" if c == 0x2E else ("e" if c in (0x65, 0x45) else None)
    if sub in ("dot", "frac"):
        if digit:
            return "frac"
        return "e" if sub == "frac" and c in (0x65, 0x45) else None
    if sub == "e":
        return "exp" if digit else ("esign" if c in (0x2B, 0x2D) else None)
    return "exp" if digit else None  # esign, exp


def step(state: State, c: int) -> State | None:
    """The state after byte `c`, or None when the text would stop being a JSON prefix."""
    stack, mode, aux = state
    if mode == "str":
        is_key, esc = aux
        if esc == 0:
            if c == 0x22:
                return (stack, "colon", None) if is_key else after_value(stack)
            if c == 0x5C:
                return (stack, "str", (is_key, -1))
            return state if c >= 0x20 else None
        if esc == -1:
            if c in ESCAPES:
                return (stack, "str", (is_key, 0))
            return (stack, "str", (is_key, 4)) if c == 0x75 else None  # \uXXXX
        return (stack, "str", (is_key, esc - 1)) if c in HEX else None
    if mode == "num":
        sub = number_step(aux, c)
        if sub is not None:
            return (stack, "num", sub)
        return step(after_value(stack), c) if aux in NUMBER_ENDS and stack else None
    if mode == "lit":
        if c != aux[0]:
            return None
        return after_value(stack) if len(aux) == 1 else (stack, "lit", aux[1:])
    if mode == "done":
        return None
    if c in WS:
        return state if mode != "start" else None  # the answer starts with its value: no blank lines before it
    if mode == "start":
        if (aux == "object" and c != 0x7B) or (aux == "array" and c != 0x5B):
            return None
        return begin_value(stack, c)
    if mode in ("val", "val]"):
        if mode == "val]" and c == 0x5D:
            return after_value(stack[:-1])
        return begin_value(stack, c)
    if mode in ("key}", "key"):
        if c == 0x22:
            return (stack, "str", (True, 0))
        return after_value(stack[:-1]) if mode == "key}" and c == 0x7D else None
    if mode == "colon":
        return (stack, "val", None) if c == 0x3A else None
    # mode == "next": after a value inside a container
    if c == 0x2C:
        return (stack, "key" if stack[-1] == "{" else "val", None)
    return after_value(stack[:-1]) if c == CLOSE[stack[-1]] else None


def feed(state: State, data: bytes) -> State | None:
    for c in data:
        state = step(state, c)
        if state is None:
            return None
    return state


def close_len(state: State) -> int:
    """The fewest characters that make the text whole JSON (`"}` inside a string in an object)."""
    stack, mode, aux = state
    n = len(stack)
    if mode == "start":
        return 1 if aux == "any" else 2
    if mode == "str":
        is_key, esc = aux
        return (1 if esc == -1 else esc) + 1 + (2 if is_key else 0) + n  # escape, quote, `:0` after a key
    if mode == "num":
        return (1 if aux in ("minus", "dot", "e", "esign") else 0) + n
    if mode == "lit":
        return len(aux) + n
    extra = {"val": 1, "key": 4, "colon": 2}.get(mode, 0)  # `0`, `"":0`, `:0`
    return extra + n


def complete(state: State) -> bool:
    """The text is whole JSON: the top-level value closed (or is a number that may end here)."""
    stack, mode, aux = state
    return mode == "done" or (mode == "num" and not stack and aux in NUMBER_ENDS)


def root_of(response_format: dict | None) -> Root | None:
    """The top-level JSON value a `response_format` asks for, or None for free text.

    json_object: an object. json_schema: the schema's top-level `type` (object or array), any value otherwise; the
    rest of the schema is not enforced."""
    kind = (response_format or {}).get("type", "text")
    if kind == "json_object":
        return "object"
    if kind != "json_schema":
        return None
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema", spec) if isinstance(spec, dict) else {}
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind == "array":
        return "array"
    return "object" if kind == "object" or (isinstance(schema, dict) and "properties" in schema) else "any"


class Vocabulary:
    """Each token id's bytes (None: a special token, or a logit row past the tokenizer), and per JSON state the
    close_len each token would leave (cached: a full pass over a large vocabulary takes a while in Python)."""

    _cache_lock = threading.Lock()

    def __init__(self, pieces: list[bytes | None]):
        self.pieces = pieces
        self.by_first: dict[int, list[int]] = {}
        for i, p in enumerate(pieces):
            if p:
                self.by_first.setdefault(p[0], []).append(i)
        self.closes: dict[State, object] = {}

    @classmethod
    def of(cls, tokenizer, n_logits: int) -> Vocabulary:
        """The vocabulary of a tokenizer, built once and kept on it."""
        with cls._cache_lock:
            vocab = getattr(tokenizer, "_expertkit_vocabulary", None)
            if vocab is None or len(vocab.pieces) != n_logits:
                vocab = cls(token_bytes(tokenizer, n_logits))
                tokenizer._expertkit_vocabulary = vocab
            return vocab

    def close_table(self, state: State):
        """A tensor: for every token, close_len after it from `state` (NEVER when it breaks the JSON)."""
        table = self.closes.get(state)
        if table is None:
            import torch

            values = [NEVER] * len(self.pieces)
            for first, ids in self.by_first.items():
                if step(state, first) is None:
                    continue  # the first byte already breaks it: skip every token that starts with it
                for i in ids:
                    after = feed(state, self.pieces[i])
                    if after is not None:
                        values[i] = close_len(after)
            table = torch.tensor(values, dtype=torch.int32)
            if len(self.closes) >= 256:
                self.closes.clear()
            self.closes[state] = table
        return table


class JsonConstraint:
    """One answer's JSON state: which tokens may come next, given the tokens left in `max_tokens`."""

    def __init__(self, vocab: Vocabulary, root: Root, eos_ids: list[int], max_tokens: int):
        self.vocab, self.eos_ids, self.left = vocab, set(eos_ids), max_tokens
        self.state = start(root)

    @property
    def done(self) -> bool:
        return self.state[1] == "done"

    def allows(self, token: int) -> bool:
        if token in self.eos_ids:
            return complete(self.state)
        piece = self.vocab.pieces[token] if token < len(self.vocab.pieces) else None
        if not piece:
            return False
        after = feed(self.state, piece)
        return after is not None and close_len(after) <= self.left - 1

    def mask(self):
        """A bool tensor over the vocabulary: the tokens `allows` would accept (computed for all at once)."""
        allowed = self.vocab.close_table(self.state) <= self.left - 1
        for e in self.eos_ids:
            if e < len(allowed):
                allowed[e] = complete(self.state)
        return allowed

    def advance(self, token: int) -> None:
        self.left -= 1
        if token not in self.eos_ids:
            self.state = feed(self.state, self.vocab.pieces[token]) or self.state


def token_bytes(tokenizer, n_logits: int) -> list[bytes | None]:
    """The bytes of every token id up to `n_logits` (None for special tokens and ids the tokenizer lacks).

    Byte-level BPE (GPT-2, Qwen, Llama 3) writes each byte as one printable character; SentencePiece (Llama 2,
    Mistral) writes spaces as `▁` and bytes it has no piece for as `<0xAB>`. Added tokens that are not special
    (`<think>`) are their own text."""
    size = min(len(tokenizer), n_logits)
    special = set(tokenizer.all_special_ids)
    added = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    byte_level = "ByteLevel" in repr(decoder)
    table = byte_unicode_decoder() if byte_level else {}
    out: list[bytes | None] = []
    for i, piece in enumerate(pieces):
        if i in special or piece is None:
            out.append(None)
        elif i in added:
            out.append(added[i].encode("utf-8") or None)
        elif byte_level:
            try:
                out.append(bytes(table[ch] for ch in piece) or None)
            except KeyError:
                out.append(piece.encode("utf-8") or None)
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out.append(bytes([int(piece[3:5], 16)]))
        else:
            out.append(piece.replace("\u2581", " ").encode("utf-8") or None)
    return out + [None] * (n_logits - size)


def byte_unicode_decoder() -> dict[str, int]:
    """GPT-2's table from the printable character that stands for a byte back to the byte."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}
