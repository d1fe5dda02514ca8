"""The PROXY protocol v2 parser (estkit.server.proxyproto), on the header bytes
of the specification (haproxy.org doc/proxy-protocol.txt §2.2) and on what
estkit's encoder writes; the e2e side (a real HAProxy) is in test_cluster.py."""

from __future__ import annotations

import struct

import pytest

from estkit.server.proxyproto import SIGNATURE, ProxyHeaderError, TrustedProxies, encode_v2, parse_v2

# A header as HAProxy's send-proxy-v2 writes it for 192.0.2.10:51000 -> 198.51.100.1:443
# (§2.2: ver 2 / PROXY = 0x21, AF_INET/STREAM = 0x11, 12 address bytes), with one
# PP2_TYPE_UNIQUE_ID TLV (0x05) after the addresses, which is skipped.
_TLV = bytes([0x05]) + struct.pack("!H", 4) + b"abcd"
_HAPROXY_V4 = (SIGNATURE + b"\x21\x11" + struct.pack("!H", 12 + len(_TLV)) + bytes([192, 0, 2, 10, 198, 51, 100, 1])
               + struct.pack("!HH", 51000, 443) + _TLV)


@pytest.mark.parametrize("data,peer", [
    (_HAPROXY_V4, "192.0.2.10:51000"),
    (encode_v2(("2001:db8::7", 40000), ("2001:db8::1", 443)), "2001:db8::7:40000"),
    (encode_v2(("::ffff:192.0.2.9", 1234), ("::1", 443)), "192.0.2.9:1234"),
    (encode_v2(None), None),  # LOCAL: HAProxy's own health checks keep the proxy's address
    (SIGNATURE + b"\x21\x31" + struct.pack("!H", 216) + bytes(216), None),  # AF_UNIX: no client IP
], ids=["ok/haproxy-ipv4-with-tlv", "ok/ipv6", "ok/ipv4-mapped", "ok/local", "ok/unix-family"])
def test_parse_valid_headers(data: bytes, peer: str | None) -> None:
    assert parse_v2(data).peer == peer


@pytest.mark.parametrize("data,why", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(5), "no PROXY protocol v2 header"),  # a ClientHello
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n", "no PROXY protocol v2 header"),  # v1 text is not accepted
    (SIGNATURE + b"\x11\x11" + struct.pack("!H", 12) + bytes(12), "version 1"),
    (SIGNATURE + b"\x2f\x11" + struct.pack("!H", 12) + bytes(12), "unknown PROXY command"),
    (SIGNATURE + b"\x21\x11" + struct.pack("!H", 8) + bytes(8), "too short for IPv4"),
    (SIGNATURE + b"\x21\x21" + struct.pack("!H", 12) + bytes(12), "too short for IPv6"),
    (SIGNATURE + b"\x21\x11" + struct.pack("!H", 60000), "at most"),
    (SIGNATURE + b"\x21\x11" + struct.pack("!H", 12) + bytes(4), "does not match"),
], ids=["fail/tls-client-hello", "fail/v1-text", "fail/version-1-binary", "fail/bad-command",
        "fail/short-ipv4", "fail/short-ipv6", "fail/huge-length", "fail/truncated"])
def test_parse_refuses(data: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        parse_v2(data)


@pytest.mark.parametrize("host,trusted", [
    ("127.0.0.1", True), ("10.1.2.3", True), ("::ffff:10.9.9.9", True), ("2001:db8::5", True),
    ("127.0.0.2", False), ("11.0.0.1", False), ("not-an-ip", False), ("2001:db9::1", False),
], ids=["ok/exact", "ok/in-network", "ok/v4-mapped", "ok/v6-network", "fail/other-loopback",
        "fail/outside", "fail/not-an-ip", "fail/v6-outside"])
def test_trusted_proxies(host: str, trusted: bool) -> None:
    assert TrustedProxies(["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"]).trusts(host) is trusted
