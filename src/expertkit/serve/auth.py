"""Who may call: API keys (constant-time compare) and, on loopback, a Host header check against DNS rebinding."""

import hmac
import ipaddress

from expertkit.serve.errors import APIError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def key_from_headers(headers) -> str | None:
    """`Authorization: Bearer KEY` (what the openai SDKs send) or `X-Api-Key: KEY`."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return headers.get("x-api-key") or None


def key_is_accepted(given: str | None, accepted: list[str]) -> bool:
    return key_index(given, accepted) is not None


def key_index(given: str | None, accepted: list[str]) -> int | None:
    """Which accepted key (0-based) `given` is, or None."""
    if given is None:
        return None
    given_bytes = given.encode("utf-8", "surrogatepass")
    # compare against every key, without stopping early, so the time taken says nothing about which matched
    matches = [hmac.compare_digest(given_bytes, k.encode("utf-8")) for k in accepted]
    return matches.index(True) if any(matches) else None


KEY_INDEX = "expertkit.api_key_index"  # the ASGI scope key: which API key a request gave (1-based), never the key


def key_rater(scope) -> str | None:
    """A rater name for a request's API key, `api_key#N` (its place among the accepted keys); None: no key."""
    index = scope.get(KEY_INDEX)
    return f"api_key#{index}" if index else None


def build_key_check(accepted: list[str]):
    """A FastAPI dependency refusing requests without an accepted key (none configured: everyone may call)."""
    from fastapi import Request  # annotations are evaluated here (no __future__ import): FastAPI reads them

    async def require_key(request: Request) -> None:
        if not accepted:
            return
        given = key_from_headers(request.headers)
        index = key_index(given, accepted)
        if index is not None:
            request.scope[KEY_INDEX] = index + 1
        else:
            what = "no API key given" if given is None else "the API key is not accepted"
            raise APIError(
                401,
                f"{what}: send `Authorization: Bearer KEY` or `X-Api-Key: KEY`",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_key


def host_is_loopback(host_header: str | None) -> bool:
    """Host: localhost:8000, 127.0.0.1:8000, [::1]:8000 are loopback names; evil.example:8000 is not."""
    if not host_header:
        return True  # HTTP/1.0 without Host: nothing a browser would send
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # 127.0.0.2 yes; 127.0.0.1.evil.example is not an address
    except ValueError:
        return False
