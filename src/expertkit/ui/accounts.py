"""Web UI accounts: who may log in, and what they may do.

    # users.yaml  (`expertkit webui adduser users.yaml alice --role trainer` writes an entry)
    users:
      alice: {password_hash: "scrypt$16384$8$1$<salt, base64>$<key, base64>", role: trainer}
      bob:   {password_hash: "scrypt$16384$8$1$...$...", role: rater}

Roles: a `rater` chats, compares answers in the arena and rates them; a `trainer` does everything (train, evaluate,
export, A/B statistics, promote and roll back). Passwords are stored as scrypt hashes (hashlib, a random 16-byte salt
per user) and checked in constant time; the file never holds a password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from expertkit.core.errors import ConfigError, Problem
from expertkit.ui.jobs import write_private

Role = Literal["rater", "trainer"]
ROLES: tuple[Role, ...] = ("rater", "trainer")
SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES = 2**14, 8, 1, 32  # OWASP's minimum for scrypt; ~50 ms per check
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class Account(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password_hash: str = Field(pattern=r"^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")
    """`scrypt$N$r$p$salt$key` (base64), as `expertkit webui adduser` writes it."""

    role: Role = "rater"
    """rater: chat, compare, rate; trainer: everything."""


class UsersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: dict[str, Account] = {}


def hash_password(password: str) -> str:
    """`scrypt$N$r$p$salt$key` for a new password, with a fresh random salt."""
    salt = secrets.token_bytes(16)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, password_hash: str) -> bool:
    """Whether password matches the hash (compared in constant time)."""
    try:
        _, n, r, p, salt, key = password_hash.split("$")
        expected = base64.b64decode(key)
        got = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p), len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int = KEY_BYTES) -> bytes:
    maxmem = 128 * n * r * p + 1024 * 1024
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=maxmem)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_DUMMY_HASH = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(b'0' * 16)}${_b64(b'0' * KEY_BYTES)}"


class Accounts:
    """The accounts of a users file: the login check Gradio calls, and each user's role."""

    def __init__(self, users: dict[str, Account]):
        self.users = users

    def check(self, username: str, password: str) -> bool:
        """Gradio's `auth` callable. An unknown name costs a hash too, so timing does not tell names apart."""
        account = self.users.get(username)
        ok = verify_password(password, account.password_hash if account else _DUMMY_HASH)
        return ok and account is not None

    def role(self, username: str | None) -> Role | None:
        account = self.users.get(username or "")
        return account.role if account else None


def load_users(path: str | os.PathLike) -> Accounts:
    """Read a users file; a ConfigError lists every problem with it."""
    path = Path(path)
    hint = "create it with: expertkit webui adduser users.yaml NAME --role trainer"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"users file '{path}' does not exist", hint=hint) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read users file '{path}': {e}", hint=hint) from None
    try:
        users = UsersFile.model_validate(raw if raw is not None else {})
    except ValidationError as e:
        problems = [
            Problem(err["msg"], str(path), ".".join(str(p) for p in err["loc"]), "see docs/webui.md#accounts")
            for err in e.errors()
        ]
        raise ConfigError(f"users file '{path}' has problems:", problems=problems) from None
    if not users.users:
        raise ConfigError(f"users file '{path}' names no user", hint=hint)
    bad = [name for name in users.users if not USERNAME.match(name)]
    if bad:
        raise ConfigError(f"users file '{path}': bad user name(s) {', '.join(bad)}", hint="letters, digits, _ . @ -")
    return Accounts(users.users)


def add_user(path: str | os.PathLike, name: str, password: str, role: Role) -> bool:
    """Add (or replace) one user in a users file, creating it if needed; returns whether the user existed.
    The file is written atomically, readable by its owner only."""
    if not USERNAME.match(name):
        raise ConfigError(f"bad user name '{name}'", hint="1-64 letters, digits, _ . @ -")
    if role not in ROLES:
        raise ConfigError(f"unknown role '{role}'", hint=f"roles: {', '.join(ROLES)}")
    if not password:
        raise ConfigError("empty password", hint="choose a password")
    path = Path(path)
    users = load_users(path).users if path.exists() else {}
    existed = name in users
    users[name] = Account(password_hash=hash_password(password), role=role)
    data = {"users": {n: a.model_dump() for n, a in users.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# expertkit webui accounts (expertkit webui adduser FILE NAME --role rater|trainer)\n"
    write_private(path, header + yaml.safe_dump(data, sort_keys=False))
    return existed


def is_loopback(host: str) -> bool:
    """Whether an address to listen on reaches this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
