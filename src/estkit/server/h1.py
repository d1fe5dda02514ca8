"""HTTP/1.1 on the TLS listener: an asyncio protocol over httptools' parser
(llhttp, the parser of Node.js, strict by default), serving every request
through :meth:`EstServer.handle <estkit.server.app.EstServer.handle>`.

Why not aiohttp's server here (issue 17, docs/benchmark.md "Third pass"):
its request, response and handler objects cost about 0.4 ms of one core per
request, a third of what a kept-alive enrollment costs in all; this protocol
does only what EST needs of HTTP/1.1 (RFC 9112): one request at a time per
connection (pipelined ones wait their turn), bodies with Content-Length or
chunked, keep-alive, ``Expect: 100-continue``.  aiohttp still serves the
plain-HTTP listeners (CRL, OCSP, metrics, the proxy listener).

The hostile-clients rules of issue 11 live here and in server/transport.py:

- the request line and each header field at most 8,190 bytes, the header at
  most 64 KiB (431), the body at most ``max_body_bytes`` (413, then close);
- a request's header must be complete within ``header_timeout`` of the
  handshake, or of its first byte on a kept-alive connection (408, close); a
  kept-alive connection idle for ``keepalive_timeout`` is closed; the body
  within ``body_timeout`` (server/app.py, 408);
- a request the parser refuses gets one ``text/plain`` line naming the
  problem in estkit's words (never the parser's, which may quote the
  request, Authorization included) and one access-log line, then the
  connection closes;
- the connection table (server/connections.py) knows when the connection is
  busy and when it rests, so that the one idle longest can be closed to
  admit a new client, and a stop waits only for requests in progress.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING
from urllib.parse import unquote

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from estkit.errors import EstError, PayloadTooLarge
from estkit.server.connections import Conn, ConnectionTable, Limits, refusal_log
from estkit.server.http import SERVER_HEADER, HttpRequest, HttpResponse, TlsFacts, http_date
from estkit.server.wire import text_response

if TYPE_CHECKING:
    from estkit.server.app import EstServer

__all__ = ["H1Protocol", "MAX_FIELD", "MAX_HEAD"]

log = logging.getLogger("estkit.server")

# aiohttp's and Node's bound on the request line and on one header field.
MAX_FIELD = 8190
# All header fields together: a client cannot make us keep more than this per request.
MAX_HEAD = 64 * 1024
_NO_BODY = (204, 304)
# Pipelined requests parsed ahead of the one being answered: past this many,
# reading pauses until the queue drains (a client cannot queue unbounded work).
_QUEUE_HIGH = 8


class _Refused(Exception):
    """Raised from a parser callback: the request is refused with this status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class _Message:
    """One request as the parser delivers it."""

    __slots__ = ("method", "target", "version", "headers", "keep_alive", "body", "complete", "too_large",
                 "waiter", "expect_continue", "error")

    def __init__(self) -> None:
        self.method = ""
        self.target = ""
        self.version = (1, 1)
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.keep_alive = False
        self.body = bytearray()
        self.complete = False
        self.too_large = False
        self.waiter: asyncio.Future[None] | None = None
        self.expect_continue = False
        self.error: EstError | None = None  # the body could not be parsed

    def wake(self, exc: BaseException | None = None) -> None:
        if self.waiter is not None and not self.waiter.done():
            if exc is None:
                self.waiter.set_result(None)
            else:
                self.waiter.set_exception(exc)


def _parse_reason(exc: httptools.HttpParserError) -> tuple[int, str]:
    """estkit's words for what the parser refused (its messages are not sent)."""
    if isinstance(exc, httptools.HttpParserCallbackError) and isinstance(exc.__context__, _Refused):
        return exc.__context__.status, exc.__context__.reason
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        return 400, "malformed request line: bad method"
    if isinstance(exc, httptools.HttpParserInvalidURLError):
        return 400, "malformed request target"
    text = str(exc).lower()
    if "version" in text:
        return 400, "malformed request line"
    if "content-length" in text:
        return 400, "malformed Content-Length or body"
    if "chunk" in text or "transfer-encoding" in text:
        return 400, "malformed chunked body"
    return 400, "malformed HTTP request"


class H1Protocol(asyncio.Protocol):
    """One TLS connection of the EST listener, after its handshake."""

    def __init__(self, server: EstServer, limits: Limits, table: ConnectionTable, conn: Conn,
                 client_peer: str | None = None) -> None:
        self.server, self.limits, self.table, self.conn = server, limits, table, conn
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        # The client's ip:port from a trusted proxy's PROXY header (server/proxyproto.py).
        self.client_peer = client_peer
        self._peer = client_peer or "-"
        self._tls: TlsFacts | None = None
        self._queue: deque[_Message] = deque()
        self._current: _Message | None = None  # being parsed
        self._url = bytearray()
        self._fields: list[tuple[str, str]] = []
        self._head_size = 0
        self._task: asyncio.Task[None] | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str] | None = None  # a parse error to answer once the queue is done
        self._ignore_input = False  # past a refusal or an oversized body: nothing more is parsed
        self._started = time.perf_counter()
        # Reading pauses while the queue is full or while the peer does not read
        # what we write (the transport's buffer over its high-water mark).
        self._queue_full = False
        self._write_blocked = False

    # -- the connection -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.client_peer is None:
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple) and len(peer) >= 2:
                self._peer = f"{peer[0]}:{peer[1]}"
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            # Fixed for the connection: renegotiation is off (server/tls.py), so
            # tls-unique (RFC 5929 §3.1, the first handshake's Finished) never changes.
            self._tls = TlsFacts(sslobj.version(), sslobj.get_channel_binding("tls-unique"),
                                 sslobj.getpeercert(binary_form=True) or None)
        # The first request's header must arrive within header_timeout of the handshake.
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timers()
        self.table.drop(self.conn)
        self.transport = None
        for m in self._queue:
            m.wake(ConnectionResetError("connection lost"))

    def data_received(self, data: bytes) -> None:
        if self._ignore_input:
            return
        if self._task is None and not self._queue and self._header_timer is None:
            # A request starts on a kept-alive connection: its header must be
            # complete within header_timeout (the idle timer stops meanwhile).
            self._arm_header_timer()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade or CONNECT: answered like any request, then closed; what
            # follows is another protocol's.
            self._ignore_input = True
            if self._queue:
                self._queue[-1].keep_alive = False
        except httptools.HttpParserError as exc:
            self._refuse(*_parse_reason(exc))

    def pause_writing(self) -> None:
        # The peer does not read its responses: stop reading its requests.
        self._write_blocked = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_blocked = False
        self._update_reading()

    def _update_reading(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self._queue_full or self._write_blocked:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        return None  # close; a response in progress is written before the transport goes

    # -- parser callbacks (httptools) ---------------------------------------------------

    def on_message_begin(self) -> None:
        self._current = _Message()
        self._url.clear()
        self._fields = []
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_FIELD:
            raise _Refused(431, "request line or header field too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._head_size += size + 4
        if size > MAX_FIELD:
            raise _Refused(431, "request line or header field too long")
        if self._head_size > MAX_HEAD:
            raise _Refused(431, "request header too large")
        self._fields.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        m = self._current
        assert m is not None
        p = self._parser
        m.method = p.get_method().decode("ascii", "replace")
        major, _, minor = p.get_http_version().partition(".")
        m.version = (int(major or 0), int(minor or 0))
        m.keep_alive = p.should_keep_alive()
        m.target = self._url.decode("utf-8", "surrogateescape")
        m.headers = CIMultiDictProxy(CIMultiDict(self._fields))
        m.expect_continue = m.headers.get("Expect", "").lower() == "100-continue"
        self._cancel_header_timer()
        self.table.busy(self.conn)
        self._queue.append(m)
        if len(self._queue) >= _QUEUE_HIGH and not self._queue_full:
            self._queue_full = True
            self._update_reading()
        if self._task is None:
            self._task = self._loop.create_task(self._serve())

    def on_body(self, body: bytes) -> None:
        m = self._current
        if m is None or m.too_large:
            return
        m.body += body
        if len(m.body) > self.server.max_body:
            # 413 and close (server/app.py): the rest is neither kept nor parsed.
            m.too_large = True
            m.body = bytearray()
            self._ignore_input = True
            m.wake(PayloadTooLarge(f"request body over {self.server.max_body} bytes"))

    def on_message_complete(self) -> None:
        m = self._current
        if m is not None:
            m.complete = True
            m.wake()
        self._current = None

    # -- serving ----------------------------------------------------------------------

    async def _serve(self) -> None:
        """Answer the queued requests one after another."""
        try:
            while self._queue and self.transport is not None:
                m = self._queue[0]
                resp = await self.server.handle(self._request(m))
                self._queue.popleft()
                if self._queue_full and len(self._queue) < _QUEUE_HIGH // 2:
                    self._queue_full = False
                    self._update_reading()
                close = resp.close or not m.keep_alive or not m.complete or m.too_large
                self._respond(m, resp, close)
                if close:
                    self._close()
                    return
            if self._refusal is not None:
                self._send_refusal(*self._refusal)
                return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._task = None
        if self.transport is None:
            return
        self.table.rest(self.conn)
        if self._current is not None:
            self._arm_header_timer()  # the next request has begun arriving
        else:
            self._idle_timer = self._loop.call_later(self.limits.keepalive_timeout, self._idle_timed_out)

    def _request(self, m: _Message) -> HttpRequest:
        async def read_body() -> bytes:
            if m.error is not None:
                raise m.error
            if m.too_large:
                raise PayloadTooLarge(f"request body over {self.server.max_body} bytes")
            if not m.complete:
                if m.expect_continue and self.transport is not None:
                    m.expect_continue = False  # RFC 9110 §10.1.1: the client waits for this before sending
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                # Waited for only when it has not all arrived with the header
                # (the usual case: no task, no timer); 408 after body_timeout.
                m.waiter = waiter = self._loop.create_future()
                timer = self._loop.call_later(self.server.body_timeout, m.wake,
                                              EstError("request body not received in time", status=408))
                try:
                    await waiter
                finally:
                    timer.cancel()
            return bytes(m.body)

        path = m.target.partition("?")[0]
        return HttpRequest(method=m.method, target=m.target, path=unquote(path, errors="surrogateescape"),
                           version=m.version, headers=m.headers, peer=self._peer, tls=self._tls,
                           read_body=read_body)

    def _respond(self, m: _Message, resp: HttpResponse, close: bool) -> None:
        self._write(resp, close, version=m.version, head_only=m.method == "HEAD")

    def _write(self, resp: HttpResponse, close: bool, *, version: tuple[int, int] = (1, 1),
               head_only: bool = False) -> None:
        """The one place a response is framed (RFC 9112 §6: Content-Length
        always, none for 204 and 304; RFC 9110 §6.6.1 Date; Server)."""
        if self.transport is None or self.transport.is_closing():
            return
        # RFC 9112 §2.3: answer HTTP/1.0 as 1.0; anything else we answer (1.1,
        # and the 505 to an unsupported version) is HTTP/1.1.
        line = b"HTTP/1.0" if version == (1, 0) else b"HTTP/1.1"
        head = [b"%s %d %s\r\n" % (line, resp.status, resp.reason.encode())]
        head += [f"{k}: {v}\r\n".encode("utf-8", "surrogateescape") for k, v in resp.headers]
        body = resp.body
        if resp.status in _NO_BODY:
            body = b""
        else:
            head.append(b"Content-Length: %d\r\n" % len(body))
        if head_only:
            body = b""
        head.append(f"Date: {http_date()}\r\nServer: {SERVER_HEADER}\r\n".encode())
        if close:
            head.append(b"Connection: close\r\n")
        elif version == (1, 0):
            head.append(b"Connection: keep-alive\r\n")
        head.append(b"\r\n")
        head.append(body)
        self.transport.write(b"".join(head))

    def _refuse(self, status: int, reason: str) -> None:
        """A request the parser refused: answered once the ones before it are."""
        self._ignore_input = True
        self._cancel_header_timer()
        m = self._current
        if m is not None and m in self._queue:
            # The body of a request being served is malformed (a bad chunk):
            # that request is answered with the refusal, then the connection closes.
            m.error = EstError(reason, status=status)
            m.wake(m.error)
        elif self._task is None:
            self._send_refusal(status, reason)
        else:
            self._refusal = (status, reason)

    def _send_refusal(self, status: int, reason: str) -> None:
        """One estkit line for the peer and one access-log line; never the parser's words."""
        self._write(text_response(status, reason), close=True)
        refusal_log("%s - - - %d %.1fms", self._peer, status, (time.perf_counter() - self._started) * 1000)
        self._close()

    def _close(self) -> None:
        self._ignore_input = True
        self._cancel_timers()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close at once (the connection table's eviction, a stop's end)."""
        if self.transport is not None:
            self.transport.abort()

    # -- timers -------------------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        self._cancel_timers()
        self._started = time.perf_counter()
        self._header_timer = self._loop.call_later(self.limits.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_header_timer()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._task is not None or self.transport is None:
            return
        # RFC 9110 §15.5.9: 408 and close.
        self._ignore_input = True
        self._send_refusal(408, "request header not received in time")

    def _idle_timed_out(self) -> None:
        self._idle_timer = None
        if self._task is None and not self._queue:
            self._close()
