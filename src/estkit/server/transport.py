"""Connections of the EST listener: accepting, the TLS handshake, the PROXY
header, the bound on open connections; then HTTP/1.1 in server/h1.py.

Why the site accepts connections itself (issue 11, hostile and broken clients):

- asyncio's (and uvloop's) ``create_server(ssl=...)`` drops a refused
  handshake silently: the application protocol never hears of it.  Here each
  accepted socket is wrapped with ``loop.connect_accepted_socket``, which
  bounds the handshake and raises the refusal, so it is logged (one line,
  rate-limited).
- Held connections must not lock out new clients: the accept loop admits
  each connection into the worker's ConnectionTable (server/connections.py),
  which closes the connection idle longest when the bound is reached.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from typing import TYPE_CHECKING

from aiohttp import web

from estkit.server.connections import Conn, ConnectionTable, Limits, refusal_log
from estkit.server.h1 import H1Protocol
from estkit.server.http import SERVER_HEADER
from estkit.server.proxyproto import ProxyHeaderError, TrustedProxies, read_v2

if TYPE_CHECKING:
    from estkit.server.app import EstServer

__all__ = ["EstSite", "server_header"]

log = logging.getLogger("estkit.server")

async def server_header(_request: web.Request, response: web.StreamResponse) -> None:
    """An ``on_response_prepare`` signal of the aiohttp listeners: every response
    says ``Server: estkit`` (RFC 9110 §10.2.4: optional; ours names no software or versions)."""
    response.headers["Server"] = SERVER_HEADER


class _Handshake:
    """One accepted connection until its TLS handshake completes; then it
    belongs to its :class:`H1Protocol`."""

    def __init__(self, site: EstSite, sock: socket.socket, peer: str) -> None:
        self.site, self.sock, self.peer = site, sock, peer
        self.http: H1Protocol | None = None
        self.client_peer: str | None = None
        self.conn = Conn(self._close)
        self.task: asyncio.Task[None] | None = None

    def _close(self) -> None:
        # Abort, not close: a graceful TLS close waits for the idle peer's
        # close_notify and holds the descriptor meanwhile, which is what the
        # eviction is meant to free.
        if self.http is not None:
            self.http.abort()
        elif self.task is not None:
            self.task.cancel()  # connect_accepted_socket closes the connection

    async def run(self) -> None:
        site = self.site
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        if site.proxies and site.proxies.trusts(self.peer.rpartition(":")[0].strip("[]")):
            if not await self._proxy_header(t0):
                return
        http = H1Protocol(site.server, site.limits, site.table, self.conn, self.client_peer)
        try:
            # The shutdown timeout bounds a graceful close too (a peer that never
            # answers close_notify would hold the descriptor for 30 s).
            await loop.connect_accepted_socket(lambda: http, self.sock, ssl=site.ssl_context,
                                               ssl_handshake_timeout=site.limits.handshake_timeout,
                                               ssl_shutdown_timeout=site.limits.handshake_timeout)
        # The transport owns the socket from here and closes it (closing it here
        # too could close a descriptor number already reused by another connection).
        except asyncio.CancelledError:
            site.table.drop(self.conn)
            raise
        except (OSError, TimeoutError, asyncio.TimeoutError, ConnectionError) as exc:
            site.table.drop(self.conn)
            took = time.perf_counter() - t0
            why = "handshake timeout" if took >= site.limits.handshake_timeout else _handshake_reason(exc)
            if why is not None:
                refusal_log("%s - tls-handshake - refused %.1fms %s", self.peer, took * 1000, why)
            return
        self.http = http

    async def _proxy_header(self, t0: float) -> bool:
        """Read a trusted proxy's PROXY v2 header (server/proxyproto.py) before
        the TLS handshake; a connection without a valid one is closed."""
        site = self.site
        try:
            header = await asyncio.wait_for(read_v2(self.sock), site.limits.handshake_timeout)
        except asyncio.CancelledError:
            site.table.drop(self.conn)
            self.sock.close()
            raise
        except (ProxyHeaderError, OSError, TimeoutError, asyncio.TimeoutError) as exc:
            site.table.drop(self.conn)
            self.sock.close()
            if isinstance(exc, ProxyHeaderError) and exc.silent:
                return False  # a port probe (a balancer's TCP check) sent nothing: nothing refused
            why = "PROXY header not received in time" if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) \
                else str(exc) if isinstance(exc, ProxyHeaderError) else "connection lost in the PROXY header"
            refusal_log("%s - proxy-header - refused %.1fms %s (server.proxy_protocol: required from "
                        "server.trusted_proxies)", self.peer, (time.perf_counter() - t0) * 1000, why)
            return False
        if header.peer is not None:
            self.peer = self.client_peer = header.peer
        return True


def _handshake_reason(exc: BaseException) -> str | None:
    """Why we refused a handshake, in a few words (OpenSSL's reason code when
    there is one); None when the peer just went away (a port probe, a client
    giving up): nothing was refused, nothing is logged."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "handshake timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLEOFError) or (isinstance(exc, ConnectionError) and not isinstance(exc, ssl.SSLError)):
        return None
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return type(exc).__name__


class EstSite:
    """A listening socket served over TLS through :class:`H1Protocol`,
    with the handshake timeout, the connection bound and refusal logging."""

    def __init__(self, server: EstServer, sock: socket.socket, *, ssl_context: ssl.SSLContext,
                 limits: Limits) -> None:
        self.server = server
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self.name = f"https://{host}:{port}"
        self.ssl_context = ssl_context
        self.limits = limits
        self.table = ConnectionTable(limits.max_connections)
        self.proxies = TrustedProxies(limits.proxy_protocol_from)
        self._accepting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sock.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop())
    async def _accept_loop(self) -> None:
        """Accept, admit into the table, then hand the handshake to its own
        task (``connect_accepted_socket`` bounds it and reports why it failed,
        where ``create_server(ssl=...)`` drops a refused handshake silently)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(self._sock)
            except OSError as exc:
                # EMFILE/ENFILE: out of descriptors.  Free one by closing the
                # connection idle longest; if none is idle, wait rather than spin.
                refusal_log("- - accept - refused 0.0ms %s", os.strerror(exc.errno or 0).lower())
                if not self.table.evict_oldest():
                    await asyncio.sleep(0.1)
                continue
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else "-"
            hs = _Handshake(self, sock, peer)
            if not self.table.admit(hs.conn):
                refusal_log("%s - connect - refused 0.0ms every connection is busy (server.max_connections)", peer)
                sock.close()
                continue
            hs.task = loop.create_task(hs.run())

    def stop_accepting(self) -> None:
        """Stop accepting and close the listening socket (a stop, server/drain.py):
        new connections are refused at once (a balancer then tries another
        node) rather than queued in the kernel until they are reset."""
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        self._sock.close()

    async def settle(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the connections accepted so far
        have sent their request and it was answered; kept-alive connections
        between requests are closed as they come to rest.  False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self.table.close_idle()
            if self.table.settled():
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop accepting and close every connection."""
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        self.table.close_all()
