"""DTLS 1.2 server sessions over one UDP socket (RFC 6347), for EST-coaps (RFC 9148 §3).

pyOpenSSL drives OpenSSL's DTLS with memory BIOs: each datagram read from the
socket goes into its peer's ``Connection``; what OpenSSL writes out is split
back into records and packed into datagrams of at most the MTU (RFC 6347
§4.1.1: a record never spans datagrams).  A peer gets state only after it
echoed a cookie (HelloVerifyRequest, RFC 6347 §4.2.1): the first ClientHello
is answered from a throw-away ``Connection`` and forgotten, so a spoofed
source costs one small reply and no memory.

Limits as on HTTPS (server/connections.py): sessions in all and per address,
a handshake timeout and an idle timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto

from estkit.server.connections import refusal_log
from estkit.server.tls import TLS12_CIPHERS

__all__ = ["DtlsLimits", "DtlsSession", "DtlsEndpoint", "dtls_server_context"]

log = logging.getLogger("estkit.server")

Address = tuple[Any, ...]  # (host, port) or (host, port, flowinfo, scope_id)

# RFC 6347 §4.1: type(1) version(2) epoch(2) sequence(6) length(2).
_RECORD_HEADER = 13
_HANDSHAKE = 22
# DTLS 1.2's wire version (RFC 6347 §4.1), which pyOpenSSL does not name.
DTLS1_2_VERSION = 0xFEFD
# RFC 7925 §4.4.1's mandatory suite for constrained devices, after the HTTPS suites.
_DTLS_CIPHERS = TLS12_CIPHERS.replace(":!aNULL", ":ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES128-CCM:!aNULL")


@dataclass(frozen=True)
class DtlsLimits:
    """Bounds on DTLS state (seconds, counts, bytes)."""

    max_sessions: int = 1024
    max_sessions_per_address: int = 16
    handshake_timeout: float = 10.0
    idle_timeout: float = 120.0
    mtu: int = 1280


def dtls_server_context(cert_file: Path, key_file: Path, client_trust: Sequence[x509.Certificate]) -> SSL.Context:
    """DTLS 1.2 only, the HTTPS suites plus CCM_8, a client certificate asked for
    but not required (``crts`` works without one, RFC 9148 §4.4 as RFC 7030
    §4.1.1) and verified against ``client_trust`` when sent; no resumption, so
    that tls-unique is always the client's Finished of a full handshake."""
    ctx = SSL.Context(SSL.DTLS_SERVER_METHOD)
    ctx.set_min_proto_version(DTLS1_2_VERSION)
    ctx.set_max_proto_version(DTLS1_2_VERSION)
    ctx.set_cipher_list(_DTLS_CIPHERS.encode())
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION
                    | SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.use_certificate_chain_file(str(cert_file))
    ctx.use_privatekey_file(str(key_file))
    ctx.check_privatekey()
    store = ctx.get_cert_store()
    assert store is not None
    for cert in client_trust:
        store.add_cert(crypto.X509.from_cryptography(cert))
    ctx.set_verify(SSL.VERIFY_PEER if client_trust else SSL.VERIFY_NONE, None)
    return ctx


class DtlsSession:
    """One peer's DTLS association: its ``Connection``, and once the handshake
    is done its client certificate (DER, None without one) and tls-unique."""

    _ids = itertools.count(1)

    def __init__(self, endpoint: DtlsEndpoint, peer: Address, conn: SSL.Connection) -> None:
        self.id = next(self._ids)
        self.endpoint = endpoint
        self.peer = peer
        self.conn = conn
        self.established = False
        self.closed = False
        self.cert_der: bytes | None = None
        self.tls_unique: bytes | None = None
        self.started = self.last_seen = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def peer_str(self) -> str:
        """``host:port`` for logs and the audit trail."""
        return f"{self.peer[0]}:{self.peer[1]}"

    def send(self, plaintext: bytes) -> None:
        """Send one application record (a CoAP message)."""
        if self.closed:
            return
        try:
            self.conn.send(plaintext)
        except SSL.Error as exc:
            self.close(f"send failed: {exc}")
            return
        self._flush()

    def feed(self, datagram: bytes) -> None:
        """A datagram from the peer: handshake progress, or application data
        handed to the endpoint's ``on_message``."""
        self.last_seen = time.monotonic()
        if datagram:
            self.conn.bio_write(datagram)
        if not self.established:
            try:
                self.conn.do_handshake()
            except SSL.WantReadError:
                self._flush()
                self._arm_timer()
                return
            except SSL.Error as exc:
                self._flush()  # the alert
                self.close(f"handshake failed: {_ssl_reason(exc)}")
                return
            self._established()
        while not self.closed:
            try:
                plaintext = self.conn.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.close("closed by the peer")
                return
            except SSL.Error as exc:
                self.close(f"DTLS error: {_ssl_reason(exc)}")
                return
            try:
                self.endpoint.on_message(self, plaintext)
            except Exception:  # a bug must cost one message, not the session or the socket
                log.exception("internal error on a message from %s", self.peer_str)
        self._flush()

    def _established(self) -> None:
        self.established = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        peer_cert = self.conn.get_peer_certificate(as_cryptography=True)
        self.cert_der = peer_cert.public_bytes(Encoding.DER) if peer_cert is not None else None
        # RFC 5929 §3.1: tls-unique is the first Finished of the latest handshake;
        # without resumption (see dtls_server_context) that is the client's.
        self.tls_unique = self.conn.get_peer_finished()
        self._flush()

    def _arm_timer(self) -> None:
        """Retransmit our last flight when OpenSSL says so (RFC 6347 §4.2.4)."""
        if self._timer is not None:
            self._timer.cancel()
        wait = self.conn.DTLSv1_get_timeout()
        if wait is not None:
            self._timer = asyncio.get_running_loop().call_later(max(wait, 0.01), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed or self.established:
            return
        try:
            self.conn.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            self.close(f"handshake failed: {_ssl_reason(exc)}")
            return
        self._flush()
        self._arm_timer()

    def _flush(self) -> None:
        out = b""
        while True:
            try:
                out += self.conn.bio_read(65536)
            except SSL.WantReadError:
                break
        if out:
            self.endpoint.sendto(out, self.peer)

    def close(self, why: str = "", *, notify: bool = False) -> None:
        """Forget the session (with ``notify``, send close_notify first)."""
        if self.closed:
            return
        if notify and self.established:
            try:
                self.conn.shutdown()
            except SSL.Error:
                pass
            self._flush()
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.endpoint.forget(self, why)


def _ssl_reason(exc: SSL.Error) -> str:
    try:
        return str(exc.args[0][0][2])
    except (IndexError, TypeError):
        return str(exc) or type(exc).__name__


class DtlsEndpoint(asyncio.DatagramProtocol):
    """The UDP socket's protocol: routes datagrams to sessions, makes new ones
    after a cookie exchange, enforces the limits."""

    def __init__(self, ctx: SSL.Context, limits: DtlsLimits,
                 on_message: Callable[[DtlsSession, bytes], None],
                 on_close: Callable[[DtlsSession], None] | None = None) -> None:
        self.ctx = ctx
        self.limits = limits
        self.on_message = on_message
        self.on_close = on_close
        self.sessions: dict[Address, DtlsSession] = {}
        self.per_host: dict[str, int] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self._secret = secrets.token_bytes(32)
        self._sweeper: asyncio.TimerHandle | None = None
        self.set_context(ctx)

    def set_context(self, ctx: SSL.Context) -> None:
        """Use ``ctx`` for new sessions (SIGHUP's new certificate); established ones keep theirs."""
        ctx.set_cookie_generate_callback(self._cookie)
        ctx.set_cookie_verify_callback(lambda conn, cookie: hmac.compare_digest(cookie, self._cookie(conn)))
        self.ctx = ctx

    def _cookie(self, conn: SSL.Connection) -> bytes:
        # RFC 6347 §4.2.1: a keyed hash of the source, so that only a peer that
        # receives at that address can echo it.
        peer = conn.get_app_data()
        return hmac.new(self._secret, f"{peer[0]}|{peer[1]}".encode(), hashlib.sha256).digest()[:16]

    # -- asyncio.DatagramProtocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport
        self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for s in list(self.sessions.values()):
            s.close("server stopping")

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable for a peer gone away: its session ends on the idle timeout

    def datagram_received(self, data: bytes, addr: Address) -> None:
        session = self.sessions.get(addr)
        fresh_hello = (len(data) > _RECORD_HEADER and data[0] == _HANDSHAKE and data[3:5] == b"\0\0")
        if session is not None and not (session.established and fresh_hello):
            session.feed(data)
            return
        if not fresh_hello:
            return  # not a ClientHello from an unknown peer: nothing to answer (RFC 6347 §4.1.2.7)
        self._hello(data, addr, replaces=session)

    def _hello(self, data: bytes, addr: Address, replaces: DtlsSession | None) -> None:
        """A ClientHello without state: cookie exchange, then a new session."""
        conn = SSL.Connection(self.ctx, None)
        conn.set_app_data(addr)
        conn.set_accept_state()
        conn.set_ciphertext_mtu(self.limits.mtu)
        conn.bio_write(data)
        try:
            conn.DTLSv1_listen()
        except SSL.WantReadError:  # no cookie, or a wrong one: HelloVerifyRequest written
            self._send_out(conn, addr)
            return
        except SSL.Error:
            return  # not a ClientHello OpenSSL can read
        # RFC 6347 §4.2.8: a verified new ClientHello from a known address ends the old association.
        if replaces is not None:
            replaces.close("replaced by a new handshake")
        host = str(addr[0])
        if len(self.sessions) >= self.limits.max_sessions and not self._evict_idlest(None):
            refusal_log("coaps %s: refused, server.coap_max_sessions (%d) reached", host, self.limits.max_sessions)
            return
        if self.per_host.get(host, 0) >= self.limits.max_sessions_per_address and not self._evict_idlest(host):
            refusal_log("coaps %s: refused, server.coap_max_sessions_per_address (%d) reached", host,
                        self.limits.max_sessions_per_address)
            return
        session = DtlsSession(self, addr, conn)
        self.sessions[addr] = session
        self.per_host[host] = self.per_host.get(host, 0) + 1
        session.feed(b"")

    def _evict_idlest(self, host: str | None) -> bool:
        """Make room by closing the established session (of ``host``) idle longest,
        if it has been idle a while: a live device is not cut for a newcomer."""
        now = time.monotonic()
        candidates = [s for s in self.sessions.values()
                      if (host is None or str(s.peer[0]) == host) and now - s.last_seen > 5.0]
        if not candidates:
            return False
        min(candidates, key=lambda s: s.last_seen).close("evicted: session limit", notify=True)
        return True

    def _send_out(self, conn: SSL.Connection, addr: Address) -> None:
        out = b""
        while True:
            try:
                out += conn.bio_read(65536)
            except SSL.WantReadError:
                break
        if out:
            self.sendto(out, addr)

    def sendto(self, out: bytes, addr: Address) -> None:
        """Send OpenSSL's output, records packed into datagrams of at most the MTU."""
        if self.transport is None or self.transport.is_closing():
            return
        dgram = b""
        i = 0
        while i + _RECORD_HEADER <= len(out):
            n = _RECORD_HEADER + int.from_bytes(out[i + 11:i + 13], "big")
            record, i = out[i:i + n], i + n
            if dgram and len(dgram) + len(record) > self.limits.mtu:
                self.transport.sendto(dgram, addr)
                dgram = b""
            dgram += record
        if dgram:
            self.transport.sendto(dgram, addr)

    def forget(self, session: DtlsSession, why: str) -> None:
        """Called by a session that closed."""
        if self.sessions.get(session.peer) is session:
            del self.sessions[session.peer]
            host = str(session.peer[0])
            left = self.per_host.get(host, 1) - 1
            if left > 0:
                self.per_host[host] = left
            else:
                self.per_host.pop(host, None)
        if why and not session.established:
            refusal_log("coaps %s: %s", session.peer_str, why)
        if self.on_close is not None:
            self.on_close(session)

    def _sweep(self) -> None:
        """Once a second: end handshakes over the handshake timeout and sessions idle too long."""
        now = time.monotonic()
        for s in list(self.sessions.values()):
            if not s.established and now - s.started > self.limits.handshake_timeout:
                s.close(f"handshake not finished within server.handshake_timeout_seconds "
                        f"({self.limits.handshake_timeout:g}s)")
            elif s.established and now - s.last_seen > self.limits.idle_timeout:
                s.close("idle", notify=True)
        self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)
