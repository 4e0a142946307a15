"""The SSRF guard on its own: address spellings, address kinds, allow_networks, DNS answers. No connection is made."""

from __future__ import annotations

import ipaddress
import random
import socket

import pytest

from expertkit.core.errors import ExpertkitError
from expertkit.rag.web.netguard import BlockedURLError, HostLookupError, NetGuard, parse_ip_literal

LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "2130706433",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "0x7F.1",
    "127.1",
    "127.0.1",
    "127.0.0.1.",
    "017700000001",
    "0x7f000001",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::1]",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_every_spelling_of_loopback_parses_and_is_refused(host):
    ip = parse_ip_literal(host)
    assert ip is not None
    with pytest.raises(BlockedURLError, match="loopback"):
        NetGuard(resolver=_no_dns).resolve(f"http://{host}/x")


def test_parse_ip_literal_agrees_with_inet_aton():
    rng = random.Random(0)
    for _ in range(300):
        value = rng.getrandbits(32)
        b = value.to_bytes(4, "big")
        spellings = [
            str(value),
            hex(value),
            ".".join(oct(x).replace("0o", "0") for x in b),
            f"{b[0]}.{b[1]}.{int.from_bytes(b[2:], 'big')}",
            f"{b[0]}.{int.from_bytes(b[1:], 'big')}",
        ]
        for s in spellings:
            assert parse_ip_literal(s) == ipaddress.IPv4Address(socket.inet_aton(s)), s


@pytest.mark.parametrize("host", ["example.com", "1.2.3.4.5", "256.1.1.1", "08.0.0.1", "1..2", "", "0x1g", "::zz"])
def test_names_and_bad_numbers_are_not_literals(host):
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize(
    ("ip", "kind"),
    [
        ("127.5.5.5", "loopback"),
        ("10.0.0.5", "private"),
        ("172.16.3.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.254", "CGNAT"),
        ("224.0.0.251", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.7", "non-public"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fd12:3456::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:10.0.0.5", "private"),
        ("::ffff:0:10.0.0.5", "private"),  # RFC 2765 IPv4-translated
        ("::10.0.0.5", "private"),  # IPv4-compatible
        ("2002:a00:5::1", "private"),  # 6to4 of 10.0.0.5
        ("64:ff9b::169.254.169.254", "link-local"),  # NAT64 well-known prefix
        ("64:ff9b:1::7f00:1", "loopback"),  # NAT64 local-use prefix
        ("::ffff:100.64.0.1", "CGNAT"),
    ],
)
def test_internal_addresses_are_refused_with_their_kind(ip, kind):
    guard = NetGuard()
    with pytest.raises(BlockedURLError, match=kind) as e:
        guard.check_ip(ip)
    assert "allow_networks=" in e.value.hint
    assert kind in guard.blocked_reason(ip)


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "93.184.216.34", "2001:4860:4860::8888", "::ffff:8.8.8.8", "2002:808:808::1"]
)
def test_public_addresses_pass(ip):
    NetGuard().check_ip(ip)
    assert NetGuard().blocked_reason(ip) is None


def test_allow_networks_opens_exactly_what_it_names():
    guard = NetGuard(["127.0.0.1/32"])
    assert guard.resolve("http://127.0.0.1:8000/a") == ("127.0.0.1", 8000, ["127.0.0.1"])
    guard.check_ip("::ffff:127.0.0.1")  # the same address, IPv6-mapped
    with pytest.raises(BlockedURLError, match="127.0.0.2 is a loopback address"):
        guard.resolve("http://127.0.0.2:8000/a")
    with pytest.raises(BlockedURLError, match="private"):
        guard.check_ip("10.0.0.1")
    assert NetGuard("10.0.0.0/8, 192.168.0.0/16").blocked_reason("192.168.4.4") is None


def test_bad_allow_networks_are_all_reported():
    with pytest.raises(ExpertkitError) as e:
        NetGuard(["nope", "10.0.0.0/8", "1.2.3.4/99"])
    assert [p.message for p in e.value.problems] == ["'nope' is not a network", "'1.2.3.4/99' is not a network"]
    assert "CIDR" in e.value.hint


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://x/", "javascript:alert(1)", "//x/"]
)
def test_only_http_and_https(url):
    with pytest.raises(BlockedURLError, match="only http:// and https://"):
        NetGuard(resolver=_no_dns).resolve(url)


@pytest.mark.parametrize("url", ["http:///path", "http://a.b:99999/", "http://[::1/"])
def test_malformed_urls_are_refused(url):
    with pytest.raises(BlockedURLError):
        NetGuard(resolver=_no_dns).resolve(url)


def test_dns_names_are_resolved_and_every_answer_checked():
    answers = {"public.test": ["93.184.216.34"], "rebind.test": ["93.184.216.34", "10.1.2.3"], "v6.test": ["fd00::1"]}
    asked = []

    def resolver(host, port):
        asked.append((host, port))
        return answers[host]

    guard = NetGuard(resolver=resolver)
    assert guard.resolve("https://PUBLIC.test/a?b=1") == ("public.test", 443, ["93.184.216.34"])
    with pytest.raises(BlockedURLError) as e:
        guard.resolve("http://rebind.test:8080/")
    assert str(e.value).splitlines()[0] == (
        "refused http://rebind.test:8080/: rebind.test resolves to 10.1.2.3, a private address"
    )
    assert e.value.hint == "only if you trust that network: allow_networks=['10.1.2.3/32']"
    with pytest.raises(BlockedURLError, match="v6.test resolves to fd00::1, a private address"):
        guard.resolve("http://v6.test/")
    assert asked == [("public.test", 443), ("rebind.test", 8080), ("v6.test", 80)]


def test_literals_skip_dns_and_names_are_sent_as_ascii():
    asked = []
    guard = NetGuard(resolver=lambda host, port: asked.append(host) or ["93.184.216.34"])
    guard.resolve("http://0x5d.0xb8.0xd8.0x22/")
    assert asked == []
    assert guard.resolve("http://bücher.example/")[0] == "xn--bcher-kva.example"
    assert asked == ["xn--bcher-kva.example"]


def test_percent_encoded_host_is_decoded_before_the_check():
    with pytest.raises(BlockedURLError, match="loopback"):
        NetGuard(resolver=_no_dns).resolve("http://%31%32%37.0.0.1/")


def test_unresolvable_host_is_a_clear_error():
    def resolver(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(HostLookupError, match="could not resolve the host of http://nowhere.invalid/"):
        NetGuard(resolver=resolver).resolve("http://nowhere.invalid/")


def test_message_names_the_url_and_the_spelling():
    with pytest.raises(BlockedURLError) as e:
        NetGuard(resolver=_no_dns).resolve("http://0x7f.1/admin")
    assert e.value.url == "http://0x7f.1/admin"
    assert e.value.reason == "0x7f.1 is 127.0.0.1, a loopback address"
    with pytest.raises(BlockedURLError) as e:
        NetGuard(resolver=_no_dns).resolve("http://[::ffff:7f00:1]/")
    assert e.value.reason == "::ffff:7f00:1 wraps 127.0.0.1, a loopback address"


def _no_dns(host, port):
    raise AssertionError(f"no DNS lookup expected, asked for {host}")
