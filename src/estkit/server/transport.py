"""Connections: the TLS handshake, timeouts, a bound on open connections, and
estkit's own answer to a request aiohttp cannot parse.

Why this hooks below aiohttp's sites (issue 11, hostile and broken clients):

- ``web.SockSite`` passes no ``ssl_handshake_timeout``, and asyncio's (and
  uvloop's) SSL protocol drops a refused handshake silently: the application
  protocol never hears of it.  Here the site accepts connections itself and
  wraps each with ``loop.connect_accepted_socket``, which bounds the
  handshake and raises the refusal, so it is logged (one line, rate-limited).
- aiohttp has an idle keep-alive timeout but no header-read timeout: a client
  that sends half its headers holds the connection for the keep-alive time.
- Held connections must not lock out new clients: the accept loop admits
  each connection into the worker's ConnectionTable (server/connections.py),
  which closes the connection idle longest when the bound is reached.
- aiohttp answers a request it cannot parse with its parser's message (raw
  request bytes, parser internals) and logs a traceback that may hold the
  request's headers, Authorization included.  Here such a request gets one
  estkit line and one access-log line, nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.http import HttpVersion11

from estkit.server.connections import Conn, ConnectionTable, Limits, refusal_log
from estkit.server.proxyproto import ProxyHeaderError, TrustedProxies, read_v2

__all__ = ["EstSite", "HttpProtocol", "SERVER_HEADER", "SUPPORTED_VERSIONS", "answer_as_http11", "server_header"]

log = logging.getLogger("estkit.server")

# RFC 9110 §10.2.4: the Server header is optional; a fixed one names no versions.
SERVER_HEADER = "estkit"
SUPPORTED_VERSIONS = ((1, 0), (1, 1))


def _peer(transport: asyncio.BaseTransport | None, client: str | None = None) -> str:
    if client is not None:  # the client a trusted proxy's PROXY header named
        return client
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "-"


# estkit's words for what aiohttp's parser refused (its own messages quote the request).
_PARSE_REASONS: tuple[tuple[type[Exception], int, str], ...] = (
    (http_exceptions.LineTooLong, 431, "request line or header field too long"),
    (http_exceptions.BadHttpMethod, 400, "malformed request line: bad method"),
    (http_exceptions.BadStatusLine, 400, "malformed request line"),
    (http_exceptions.InvalidURLError, 400, "malformed request target"),
    (http_exceptions.InvalidHeader, 400, "malformed header field"),
    (http_exceptions.ContentLengthError, 400, "malformed Content-Length or body"),
    (http_exceptions.TransferEncodingError, 400, "malformed chunked body"),
    (http_exceptions.BadHttpMessage, 400, "malformed HTTP request"),
)


def _plain(status: int, reason: str) -> web.Response:
    resp = web.Response(status=status, body=(reason + "\n").encode(),
                        headers={"Content-Type": "text/plain; charset=utf-8", "Server": SERVER_HEADER})
    resp.force_close()
    return resp


async def server_header(_request: web.Request, response: web.StreamResponse) -> None:
    """An ``on_response_prepare`` signal: every response says ``Server: estkit``
    (RFC 9110 §10.2.4: optional; ours names no software or versions)."""
    response.headers["Server"] = SERVER_HEADER


def answer_as_http11(request: web.BaseRequest) -> None:
    """Make the response to an HTTP/0.9 or HTTP/2.0 request line an HTTP/1.1
    one (aiohttp writes the request's version back).  aiohttp has no public
    way to do this; the request caches its version here (aiohttp 3.9-3.14)."""
    request._cache["version"] = HttpVersion11


class HttpProtocol(web.RequestHandler):
    """aiohttp's request handler with a header-read timeout, the connection
    table's idle/busy bookkeeping and estkit's answer to unparsable requests."""

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, limits: Limits,
                 table: ConnectionTable, conn: Conn, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, keepalive_timeout=limits.keepalive_timeout,
                         # estkit writes its own access log (server/app.py), as web.AppRunner(access_log=None)
                         access_log=None,  # type: ignore[arg-type]
                         # Past a 413 the connection closes at once rather than
                         # reading (up to 10 s of) the rest of the body.
                         lingering_time=0,
                         # EST bodies are base64 text; a compressed body is not
                         # inflated (no decompression bombs), it fails as base64.
                         auto_decompress=False, **kwargs)
        self._limits, self._table, self._conn = limits, table, conn
        self._header_timer: asyncio.TimerHandle | None = None
        self._busy = False
        self._started = time.perf_counter()
        # The client's ip:port from a trusted proxy's PROXY header (server/proxyproto.py);
        # None: the connection's own peer is the client.
        self.client_peer: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # The first request's header must arrive within header_timeout of the handshake.
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        self._table.drop(self._conn)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._busy and self._header_timer is None:
            # A request starts on a kept-alive connection: its header must be
            # complete within header_timeout (the idle timer stops meanwhile).
            self.keep_alive(True)
            self._arm_header_timer()
        super().data_received(data)

    def request_started(self) -> None:
        """Called by the application when a request's header is complete."""
        self._cancel_header_timer()
        self._busy = True
        self._table.busy(self._conn)

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        if request.version not in SUPPORTED_VERSIONS:
            answer_as_http11(request)
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._busy = False
            self._table.rest(self._conn)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """One estkit line for the peer and one access-log line; never a
        traceback (it could hold the request's headers)."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        reason = "internal server error" if status >= 500 else "malformed HTTP request"
        for cls, st, text in _PARSE_REASONS:
            if isinstance(exc, cls):
                status, reason = st, text
                break
        if status >= 500 and not isinstance(exc, http_exceptions.HttpProcessingError):
            # A bug below the application (which logs its own): worth a traceback,
            # and one of ours holds no request bytes.
            log.error("internal error handling a request", exc_info=exc)
        refusal_log("%s - - - %d %.1fms", _peer(self.transport, self.client_peer), status,
                    (time.perf_counter() - self._started) * 1000)
        return _plain(status, reason)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._started = time.perf_counter()
        self._header_timer = self._loop.call_later(self._limits.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._busy or self.transport is None:
            return
        body = b"request header not received in time\n"
        # RFC 9110 §15.5.9: 408 and close.
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             b"Content-Length: %d\r\nServer: %s\r\nConnection: close\r\n\r\n"
                             % (len(body), SERVER_HEADER.encode()) + body)
        refusal_log("%s - - - 408 %.1fms", _peer(self.transport, self.client_peer),
                    (time.perf_counter() - self._started) * 1000)
        self.force_close()


class _Handshake:
    """One accepted connection until its TLS handshake completes; then it
    belongs to its :class:`HttpProtocol`."""

    def __init__(self, site: EstSite, sock: socket.socket, peer: str) -> None:
        self.site, self.sock, self.peer = site, sock, peer
        self.http: HttpProtocol | None = None
        self.conn = Conn(self._close)
        self.task: asyncio.Task[None] | None = None

    def _close(self) -> None:
        # Abort, not close: a graceful TLS close waits for the idle peer's
        # close_notify and holds the descriptor meanwhile, which is what the
        # eviction is meant to free.
        if self.http is not None:
            if self.http.transport is not None:
                self.http.transport.abort()
        elif self.task is not None:
            self.task.cancel()  # connect_accepted_socket closes the connection

    async def run(self) -> None:
        site = self.site
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        http = HttpProtocol(site.server, loop=loop, limits=site.limits, table=site.table, conn=self.conn)
        if site.proxies and site.proxies.trusts(self.peer.rpartition(":")[0].strip("[]")):
            if not await self._proxy_header(http, t0):
                return
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

    async def _proxy_header(self, http: HttpProtocol, t0: float) -> bool:
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
            self.peer = http.client_peer = header.peer
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


class EstSite(web.BaseSite):
    """A listening socket served over TLS through :class:`HttpProtocol`,
    with the handshake timeout, the connection bound and refusal logging."""

    __slots__ = ("_sock", "_name", "limits", "table", "proxies", "_accepting")

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, *, ssl_context: ssl.SSLContext,
                 limits: Limits, backlog: int = 1024) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self._name = f"https://{host}:{port}"
        self.limits = limits
        self.table = ConnectionTable(limits.max_connections)
        self.proxies = TrustedProxies(limits.proxy_protocol_from)
        self._accepting: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def server(self) -> web.Server:
        srv = self._runner.server
        assert srv is not None
        return srv

    @property
    def ssl_context(self) -> ssl.SSLContext:
        assert self._ssl_context is not None
        return self._ssl_context

    async def start(self) -> None:
        await super().start()
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
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        self.table.close_all()
        await super().stop()
