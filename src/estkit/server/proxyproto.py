"""The PROXY protocol v2 header (HAProxy's ``send-proxy-v2``) on the TLS listener.

A load balancer in TLS passthrough (HAProxy ``mode tcp``) connects to the node
itself: without this header every client would have the balancer's address
in the access log, the failed-login throttle and the audit trail.  The header
precedes the TLS ClientHello; it is read here, byte-exactly (nothing of the
TLS stream is consumed), before the handshake starts.

Format: "The PROXY protocol, versions 1 & 2" (haproxy.org,
doc/proxy-protocol.txt), section 2.2: a 12-byte signature, a version/command
byte, an address family/transport byte, a 2-byte big-endian length, then the
addresses and optional TLVs (ignored here).  Only version 2 is accepted (what
``send-proxy-v2`` sends; the text v1 is not).

Who may send it (``[server] trusted_proxies``): a connection from a trusted
proxy must start with the header, or it is closed; a connection from anyone
else is an ordinary direct client (its own address counts), and a PROXY header
from it fails its TLS handshake, so it is closed too.  The header's ``LOCAL``
command (HAProxy's health checks) keeps the proxy's own address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SIGNATURE", "ProxyHeader", "ProxyHeaderError", "TrustedProxies", "parse_v2", "read_v2", "encode_v2"]

# §2.2: "\r\n\r\n\0\r\nQUIT\n"
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_FIXED = 16  # signature, ver_cmd, fam, len
# Addresses plus what TLVs a balancer adds (HAProxy: ALPN, authority, unique id,
# SSL data): far below this; a larger length is refused, not read.
MAX_LENGTH = 2048
_CMD_LOCAL, _CMD_PROXY = 0x0, 0x1
_AF_INET, _AF_INET6, _AF_UNIX = 0x1, 0x2, 0x3


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY v2 header; the message says why.
    ``silent``: the peer closed before sending anything (a port probe): nothing to log."""

    def __init__(self, reason: str, *, silent: bool = False) -> None:
        super().__init__(reason)
        self.silent = silent


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header: the client's address, or None for ``LOCAL`` (and for
    families with no IP address: the proxy's own address then counts)."""

    source: tuple[str, int] | None
    destination: tuple[str, int] | None = None

    @property
    def peer(self) -> str | None:
        """The client as the access log writes a peer: ``ip:port``."""
        return f"{self.source[0]}:{self.source[1]}" if self.source is not None else None


def _fixed(head: bytes) -> tuple[int, int, int]:
    """(command, family byte, length) from the first 16 bytes."""
    if len(head) < _FIXED or head[:12] != SIGNATURE:
        raise ProxyHeaderError("no PROXY protocol v2 header")
    ver_cmd, fam, length = head[12], head[13], struct.unpack("!H", head[14:16])[0]
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"PROXY protocol version {ver_cmd >> 4} (only 2 is accepted)")
    if ver_cmd & 0xF not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyHeaderError(f"unknown PROXY command {ver_cmd & 0xF}")
    if length > MAX_LENGTH:
        raise ProxyHeaderError(f"PROXY header of {length} bytes (at most {MAX_LENGTH})")
    return ver_cmd & 0xF, fam, length


def parse_v2(data: bytes) -> ProxyHeader:
    """Parse a complete header (16 bytes plus its announced length)."""
    cmd, fam, length = _fixed(data)
    if len(data) != _FIXED + length:
        raise ProxyHeaderError(f"PROXY header length {length} does not match the {len(data) - _FIXED} bytes given")
    if cmd == _CMD_LOCAL:
        return ProxyHeader(None)  # §2.2: LOCAL: use the real connection's endpoints
    body = data[_FIXED:]
    family = fam >> 4
    if family == _AF_INET:
        if length < 12:
            raise ProxyHeaderError("PROXY header too short for IPv4 addresses")
        src, dst = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
    elif family == _AF_INET6:
        if length < 36:
            raise ProxyHeaderError("PROXY header too short for IPv6 addresses")
        src6, dst6 = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        sport, dport = struct.unpack("!HH", body[32:36])
        src4, dst4 = src6.ipv4_mapped, dst6.ipv4_mapped
        return ProxyHeader((str(src4 or src6), sport), (str(dst4 or dst6), dport))
    else:
        return ProxyHeader(None)  # UNSPEC or UNIX: no client IP to use
    return ProxyHeader((str(src), sport), (str(dst), dport))


def encode_v2(source: tuple[str, int] | None, destination: tuple[str, int] = ("127.0.0.1", 0)) -> bytes:
    """A header as a proxy sends it (``source`` None: LOCAL); for tests and tools."""
    if source is None:
        return SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        dst = ipaddress.ip_address("::" if src.version == 6 else "0.0.0.0")
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    fam = 0x11 if src.version == 4 else 0x21  # TCP over IPv4 / IPv6
    return SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes: never more, the TLS stream follows."""
    buf = b""
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise ProxyHeaderError("connection closed before the PROXY header was complete", silent=not buf)
        buf += chunk
    return buf


async def read_v2(sock: socket.socket) -> ProxyHeader:
    """Read and parse the header at the start of an accepted (non-blocking)
    connection; the caller bounds the time it may take."""
    loop = asyncio.get_running_loop()
    head = await _recv_exactly(loop, sock, _FIXED)
    _cmd, _fam, length = _fixed(head)
    return parse_v2(head + await _recv_exactly(loop, sock, length))


class TrustedProxies:
    """``[server] trusted_proxies``: the addresses (or networks) allowed to
    speak for clients, by a PROXY header or the proxy listener's headers."""

    def __init__(self, entries: Sequence[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(e, strict=False) for e in entries)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, host: str) -> bool:
        """True if ``host`` (an IP address; IPv4-mapped IPv6 counts as IPv4) is trusted."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)
