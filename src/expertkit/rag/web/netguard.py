"""Refuse URLs that point inside the user's network (SSRF): every host is resolved and every address checked.

Loopback, private, link-local, shared (CGNAT, 100.64.0.0/10), multicast, unspecified and reserved addresses are
refused in every spelling: ``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``, ``[::ffff:127.0.0.1]``,
``[::ffff:7f00:1]``, and IPv4 wrapped in IPv4-compatible, 6to4 or NAT64 IPv6 addresses. Only http and https pass.
A network the user trusts is opened with ``allow_networks=["192.168.1.0/24"]``.

The fetcher connects to the address checked here, never to a second DNS answer (DNS rebinding).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Iterable
from urllib.parse import SplitResult, unquote, urlsplit

from expertkit.core.errors import ExpertkitError, MissingExtraError, ProblemList
from expertkit.core.optional import import_optional

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_PRIVATE_V4 = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_UNIQUE_LOCAL_V6 = ipaddress.IPv6Network("fc00::/7")
# IPv6 ranges whose last 32 bits are an IPv4 address that the packet really goes to.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 ::ffff:0:a.b.c.d
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d
# One part of an IPv4 number as inet_aton reads it: hex, octal (leading 0) or decimal.
_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")


class BlockedURLError(ExpertkitError):
    """A URL we refuse to fetch: a scheme other than http(s), or a host that is (or resolves to) an internal address."""

    def __init__(self, url: str, reason: str, hint: str = ""):
        super().__init__(f"refused {url}: {reason}", hint=hint)
        self.url = url
        self.reason = reason


class HostLookupError(ExpertkitError):
    """The host name of a URL does not resolve."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"could not resolve the host of {url}: {reason}", hint="check the spelling and your DNS")
        self.url = url
        self.reason = reason


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address `host` spells, or None for a host name.

    IPv4 in every form inet_aton accepts (``127.0.0.1``, ``127.1``, ``2130706433``, ``0177.0.0.1``, ``0x7f.0.0.1``,
    a trailing dot), and IPv6 with or without brackets (``[::ffff:127.0.0.1]``, ``fe80::1%eth0``).
    """
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if ":" in h:
        try:
            return ipaddress.IPv6Address(h)
        except ValueError:
            return None
    if h.endswith("."):
        h = h[:-1]
    parts = h.split(".")
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART.fullmatch(p) for p in parts):
        return None
    numbers = [_ipv4_part(p) for p in parts]
    # All parts but the last are one byte; the last fills the remaining bytes ("127.1" = 127.0.0.1).
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        return None
    value = 0
    for n in numbers[:-1]:
        value = value * 256 + n
    value = value * 256 ** (5 - len(numbers)) + numbers[-1]
    return ipaddress.IPv4Address(value)


def _ipv4_part(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part[0] == "0":
        return int(part, 8)
    return int(part)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, translated, compatible, 6to4, NAT64), else None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    last32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if any(ip in net for net in _NAT64) or ip in _IPV4_TRANSLATED:
        return last32
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # :: and ::1 are themselves, not 0.0.0.0 and 0.0.0.1
        return last32
    return None


def address_kind(ip: IPAddress) -> str | None:
    """Why `ip` is not a public address ("a loopback address", ...), or None when it is public."""
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address):
        if ip in _CGNAT:
            return "a shared (CGNAT) address"
        if any(ip in net for net in _PRIVATE_V4):
            return "a private address"
    elif ip in _UNIQUE_LOCAL_V6 or ip.is_site_local:
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "a special-purpose (non-public) address"
    return None


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (system resolver), in the resolver's order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class NetGuard:
    """Checks URLs and addresses against the internal-network rules, with the user's `allow_networks` let through."""

    def __init__(
        self,
        allow_networks: Iterable[str] | str = (),
        *,
        resolver: Callable[[str, int], list[str]] = resolve_host,
    ):
        self.allow_networks = _parse_networks(allow_networks)
        self._resolver = resolver

    def blocked_reason(self, ip: IPAddress | str) -> str | None:
        """Why `ip` is refused ("10.0.0.5 is a private address"), or None when it may be contacted."""
        verdict = self._verdict(ip)
        return _describe(str(ip), None, *verdict) if verdict else None

    def check_ip(self, ip: IPAddress | str) -> None:
        """Raise BlockedURLError when `ip` is an internal address that `allow_networks` does not open."""
        verdict = self._verdict(ip)
        if verdict:
            raise BlockedURLError(str(ip), _describe(str(ip), None, *verdict), hint=_allow_hint(verdict))

    def resolve(self, url: str) -> tuple[str, int, list[str]]:
        """(ASCII host, port, the checked addresses) of an http(s) URL; raises BlockedURLError or HostLookupError.

        Every address the host resolves to must pass: one internal answer refuses the URL.
        """
        parts = _split(url)
        host = _ascii_host(url, unquote(parts.hostname or ""))
        port = _port(url, parts)
        literal = parse_ip_literal(host)
        if literal is not None:
            ips = [str(literal)]
        else:
            try:
                ips = self._resolver(host.rstrip("."), port)
            except (OSError, UnicodeError) as e:
                raise HostLookupError(url, getattr(e, "strerror", None) or str(e)) from None
            if not ips:
                raise HostLookupError(url, "no addresses")
        for ip in ips:
            verdict = self._verdict(ip)
            if verdict:
                raise BlockedURLError(url, _describe(host, literal is None, *verdict), hint=_allow_hint(verdict))
        return host, port, ips

    def _verdict(self, ip: IPAddress | str) -> tuple[IPAddress, ipaddress.IPv4Address | None, str] | None:
        """(address, the IPv4 address it wraps, what kind of internal address) for a refused `ip`, else None."""
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        inner = embedded_ipv4(addr) if isinstance(addr, ipaddress.IPv6Address) else None
        if any(a in net for a in (addr, inner) if a is not None for net in self.allow_networks):
            return None
        kind = address_kind(inner) if inner is not None else address_kind(addr)
        return (addr, inner, kind) if kind else None


def _describe(host: str, by_dns: bool | None, addr: IPAddress, inner: ipaddress.IPv4Address | None, kind: str) -> str:
    """One line: "db.internal resolves to 10.0.0.5, a private address", "0x7f.1 is 127.0.0.1, a loopback address"."""
    target = f"{addr}, which wraps {inner}" if inner is not None else str(addr)
    if by_dns:
        return f"{host} resolves to {target}, {kind}"
    if inner is None and str(addr) == host.strip("[]"):
        return f"{host} is {kind}"
    if inner is not None:
        return f"{host} wraps {inner}, {kind}"
    return f"{host} is {target}, {kind}"


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url.strip())
    except ValueError as e:
        raise BlockedURLError(url, f"not a valid URL ({e})") from None
    if parts.scheme.lower() not in SCHEMES:
        scheme = f"{parts.scheme}://" if parts.scheme else "a URL without a scheme"
        raise BlockedURLError(url, f"{scheme} is not fetched, only http:// and https://")
    if not parts.hostname:
        raise BlockedURLError(url, "the URL has no host")
    return parts


def _port(url: str, parts: SplitResult) -> int:
    try:
        port = parts.port
    except ValueError:
        raise BlockedURLError(url, "the port is not a number from 1 to 65535") from None
    return port or DEFAULT_PORTS[parts.scheme.lower()]


def _ascii_host(url: str, host: str) -> str:
    host = host.lower()
    if host.isascii():
        return host
    idna = _idna()
    if idna is not None:
        try:
            return idna.encode(host.rstrip("."), uts46=True).decode("ascii") + ("." if host.endswith(".") else "")
        except Exception as e:  # idna raises its own IDNAError family
            raise BlockedURLError(url, f"the host {host!r} is not a valid domain name ({e})") from None
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise BlockedURLError(url, f"the host {host!r} is not a valid domain name ({e})") from None


@functools.lru_cache(maxsize=1)
def _idna():
    """The idna package (httpx's dependency: IDNA 2008, as browsers), or None: Python's IDNA 2003 codec then."""
    try:
        return import_optional("idna", "idna", "rag")
    except MissingExtraError:
        return None
    except ExpertkitError as e:  # installed but broken: say why, once
        logger.warning("%s; host names go through Python's IDNA 2003 codec instead", e.message)
        return None


def _parse_networks(networks: Iterable[str] | str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    if isinstance(networks, str):
        networks = [n for n in networks.split(",") if n.strip()]
    problems = ProblemList()
    parsed = []
    for n in networks:
        try:
            parsed.append(ipaddress.ip_network(str(n).strip(), strict=False))
        except ValueError:
            problems.add(f"{n!r} is not a network", field="allow_networks")
    if problems:
        raise ExpertkitError(
            "allow_networks has entries that are not networks",
            hint="write CIDR blocks such as 192.168.1.0/24 or 10.0.0.5/32",
            problems=problems.items,
        )
    return tuple(parsed)


def _allow_hint(verdict: tuple[IPAddress, ipaddress.IPv4Address | None, str]) -> str:
    addr, inner, _ = verdict
    shown = inner if inner is not None else type(addr)(int(addr))  # without an IPv6 scope such as %eth0
    bits = 32 if isinstance(shown, ipaddress.IPv4Address) else 128
    return f"only if you trust that network: allow_networks=['{shown}/{bits}']"
