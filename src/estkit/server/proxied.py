"""The listener for a TLS-terminating proxy (``[server] proxy_listen``).

When HAProxy terminates TLS (deploy/haproxy/terminate.cfg) and verifies the
client certificate itself, the node sees plain HTTP; what it would have read
from its own TLS connection comes in request headers set by the proxy:

- ``X-Estkit-Client-Cert``: the client certificate, base64 DER (``ssl_c_der``),
  only when the client presented one (and HAProxy verified it);
- ``X-Estkit-Tls-Unique``: the connection's tls-unique (RFC 5929 §3), base64
  (``ssl_fc_unique_id``), for proof-of-possession linking (RFC 7030 §3.5);
- ``X-Estkit-Tls-Version``: the protocol (``ssl_fc_protocol``: ``TLSv1.2``...);
- ``X-Estkit-Client-Addr``: the client's ``ip:port``.

Anyone able to send these headers can claim any certificate, so they are read
only on this listener, never on the public TLS one, and only from
``trusted_proxies`` (a Unix socket is trusted through its file permissions,
0660); a request from any other address gets 403 and the connection closes.
The proxy must remove these headers from what clients send (the deploy file
does).  As a second line, a forwarded certificate must be signed directly by
one of the node's trust anchors (its CAs, server.bootstrap_trust), and one
issued here must match the store's record exactly (CertificateAuthority).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from aiohttp import web
from cryptography import x509

from estkit.server.app import EstServer
from estkit.server.auth import CLIENT_PEER, FORWARDED_TLS
from estkit.server.http import TlsFacts
from estkit.server.connections import refusal_log
from estkit.server.proxyproto import TrustedProxies
from estkit.protocol.constants import CT_TEXT

__all__ = ["HEADER_CERT", "HEADER_TLS_UNIQUE", "HEADER_TLS_VERSION", "HEADER_CLIENT", "proxied_app",
           "bind_unix"]

log = logging.getLogger("estkit.server")

HEADER_CERT = "X-Estkit-Client-Cert"
HEADER_TLS_UNIQUE = "X-Estkit-Tls-Unique"
HEADER_TLS_VERSION = "X-Estkit-Tls-Version"
HEADER_CLIENT = "X-Estkit-Client-Addr"
_VERSIONS = ("TLSv1.2", "TLSv1.3")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refuse(request: web.Request, status: int, reason: str) -> web.StreamResponse:
    resp = web.Response(status=status, body=(reason + "\n").encode(), headers={"Content-Type": CT_TEXT})
    resp.force_close()
    refusal_log("%s - proxy-listen - %d %s", _transport_peer(request) or "unix", status, reason)
    return resp


def _transport_peer(request: web.Request) -> str | None:
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else None


def _b64(value: str) -> bytes:
    return base64.b64decode(value.strip(), validate=True)


class _Guard:
    """The proxied app's first middleware: who may speak, and what it says."""

    def __init__(self, trusted: TrustedProxies, anchors: Sequence[x509.Certificate]) -> None:
        self.trusted = trusted
        self.anchors = list(anchors)

    def _directly_issued(self, cert: x509.Certificate) -> bool:
        for anchor in self.anchors:
            if anchor.subject != cert.issuer:
                continue
            try:
                cert.verify_directly_issued_by(anchor)
                return True
            except (ValueError, TypeError, Exception):  # InvalidSignature and friends
                continue
        return False

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = _transport_peer(request)
        if peer is not None and not self.trusted.trusts(peer.rpartition(":")[0].strip("[]")):
            return _refuse(request, 403, "forbidden: this listener is for the load balancer only "
                                         "(server.proxy_listen, server.trusted_proxies)")
        h = request.headers
        version = h.get(HEADER_TLS_VERSION)
        if version is None:
            # Not a client's request relayed over TLS: a health check, or a proxy
            # that does not terminate TLS.  No credentials are accepted then.
            fwd = TlsFacts(version=None, unique=None, cert_der=None)
        else:
            try:
                unique = _b64(h[HEADER_TLS_UNIQUE]) if h.get(HEADER_TLS_UNIQUE) else None
                cert_der = _b64(h[HEADER_CERT]) if h.get(HEADER_CERT) else None
            except (binascii.Error, ValueError):
                return _refuse(request, 400, f"malformed {HEADER_TLS_UNIQUE} or {HEADER_CERT} header from the proxy")
            if version not in _VERSIONS:
                return _refuse(request, 400, f"{HEADER_TLS_VERSION} {version[:20]!r} is not TLS 1.2 or 1.3")
            if cert_der is not None:
                try:
                    cert = x509.load_der_x509_certificate(cert_der)
                except ValueError:
                    return _refuse(request, 400, f"malformed certificate in {HEADER_CERT}")
                if not self._directly_issued(cert):
                    return _refuse(request, 403, "forwarded client certificate is not issued by a CA this "
                                                 "server trusts")
            fwd = TlsFacts(version=version, unique=unique, cert_der=cert_der)
        request[FORWARDED_TLS] = fwd
        client = h.get(HEADER_CLIENT)
        if client and len(client) <= 64 and client.isprintable():
            request[CLIENT_PEER] = client
        return await handler(request)


def proxied_app(server: EstServer, trusted: TrustedProxies, anchors: Sequence[x509.Certificate]) -> web.Application:
    """The EST application for ``proxy_listen``: the same routes, with the
    client's TLS facts taken from the proxy's headers."""
    app = server.app()
    app.middlewares.insert(0, _Guard(trusted, anchors).middleware)
    return app


def bind_unix(path: Path) -> socket.socket:
    """A listening Unix socket for ``proxy_listen = "unix:/path"``: mode 0660
    (the proxy's group may connect, nobody else); a stale socket file is replaced."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.stat().st_mode):
            path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock
