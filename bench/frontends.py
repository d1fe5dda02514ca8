#!/usr/bin/env python3
"""Prototype front ends for issue 17 (performance, second design), measured
by ``bench/bench.py --designs``: the same CA, store, TLS context and
authentication objects ``estkit serve`` builds (estkit.cli.wiring), behind a
different HTTP layer.  They serve only what the benchmark sends (``POST
/.well-known/est/simpleenroll`` with HTTP Basic, ``GET
/.well-known/est/cacerts``) and are not the server: no CMC, no Digest, no
draining, no access log.  They exist to tell which design is worth building.

Designs (``--design``):

- ``lean``: uvloop, an asyncio ``Protocol`` over ``loop.create_server(ssl=)``
  with httptools' C parser; the CA call in the default executor (one
  hand-over per request, as in estkit serve).
- ``lean-inline``: the same, with the CA call on the event loop (no hand-over).
- ``threads``: no event loop; each connection on a thread of a bounded pool
  with a blocking TLS socket (the handshake, ``recv`` and ``send`` release the
  GIL), the same httptools parser, the CA call in the same thread.

    python bench/frontends.py --dir DIR --listen 127.0.0.1:8443 --design threads --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httptools

from estkit.cli.common import config_for
from estkit.cli.wiring import build_authority, build_server, build_store
from estkit.errors import EstError
from estkit.protocol import constants as c
from estkit.protocol.framing import decode_b64, encode_b64
from estkit.protocol.pkcs7 import certs_only
from estkit.protocol.request import decode_pkcs10
from estkit.server.app import EstServer
from estkit.server.auth import Presented, basic_credentials
from estkit.server.run import _worker_sockets, bind
from estkit.server.tls import server_context

ENROLL = b"/.well-known/est/simpleenroll"
CACERTS = b"/.well-known/est/cacerts"


def _reply(status: int, body: bytes, ctype: str, keep: bool, extra: str = "") -> bytes:
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Server: estkit\r\nConnection: {'keep-alive' if keep else 'close'}\r\n\r\n").encode() + body


class Core:
    """The EST work of a request, the same calls as estkit.server.handlers."""

    def __init__(self, server: EstServer) -> None:
        self.server = server
        self.cacerts = encode_b64(server.ca.cacerts(None))

    def enroll(self, auth: str | None, peer: str, tls_version: str | None, tls_unique: bytes | None,
               cert_der: bytes | None, body: bytes) -> tuple[int, bytes, str]:
        srv = self.server
        try:
            p = Presented(peer=peer, label=None, tls=True, tls_version=tls_version, tls_unique=tls_unique,
                          cert_der=cert_der, basic=basic_credentials(auth))
            if p.basic is not None:
                p.reserved = not srv.ca.recently_verified(*p.basic)
                srv.auth.check_password_attempt(p.peer, p.basic[0], None, reserve=p.reserved)
            ctx = srv.auth.context_blocking(p, require=True)
            cert = srv.ca.simpleenroll(None, decode_pkcs10(decode_b64(body, "request body")), ctx)
            return 200, encode_b64(certs_only([cert])), c.CT_CERTS_ONLY
        except EstError as exc:
            return exc.status, (exc.reason + "\n").encode(), "text/plain"


class _Parsed:
    """httptools callbacks: one request's URL, two headers and body."""

    def __init__(self) -> None:
        self.url = b""
        self.auth: str | None = None
        self.body = bytearray()
        self.done: list[tuple[bytes, str | None, bytes, bool]] = []
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.auth = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done.append((self.url, self.auth, bytes(self.body), self.parser.should_keep_alive()))
        self.url, self.auth, self.body = b"", None, bytearray()


def _answer(core: Core, url: bytes, auth: str | None, body: bytes, keep: bool, peer: str,
            tls: Any) -> bytes:
    if url.startswith(ENROLL):
        st, out, ct = core.enroll(auth, peer, tls.version(), tls.get_channel_binding("tls-unique"),
                                  tls.getpeercert(binary_form=True) or None, body)
        extra = 'WWW-Authenticate: Basic realm="estkit"\r\n' if st == 401 else ""
        return _reply(st, out, ct, keep, (c.HDR_CTE + ": base64\r\n" if st == 200 else "") + extra)
    if url.startswith(CACERTS):
        return _reply(200, core.cacerts, c.CT_PKCS7, keep, c.HDR_CTE + ": base64\r\n")
    return _reply(404, b"not found\n", "text/plain", keep)


# -- design 1: asyncio Protocol + httptools ---------------------------------------------------------


class LeanProtocol(asyncio.Protocol):
    def __init__(self, core: Core, inline: bool) -> None:
        self.core, self.inline = core, inline
        self.p = _Parsed()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}"

    def data_received(self, data: bytes) -> None:
        try:
            self.p.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(_reply(400, b"malformed HTTP request\n", "text/plain", False))
            self.transport.close()
            return
        while self.p.done:
            url, auth, body, keep = self.p.done.pop(0)
            if self.inline or not url.startswith(ENROLL):
                self._send(_answer(self.core, url, auth, body, keep, self.peer,
                                   self.transport.get_extra_info("ssl_object")), keep)  # type: ignore[union-attr]
            else:
                asyncio.ensure_future(self._threaded(url, auth, body, keep))

    async def _threaded(self, url: bytes, auth: str | None, body: bytes, keep: bool) -> None:
        assert self.transport is not None
        tls = self.transport.get_extra_info("ssl_object")
        out = await asyncio.get_running_loop().run_in_executor(None, _answer, self.core, url, auth, body, keep,
                                                                self.peer, tls)
        self._send(out, keep)

    def _send(self, out: bytes, keep: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(out)
        if not keep:
            self.transport.close()


def run_lean(core: Core, sock: socket.socket, ctx: ssl.SSLContext, inline: bool) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        sock.setblocking(False)
        srv = await loop.create_server(lambda: LeanProtocol(core, inline), sock=sock, ssl=ctx,
                                       ssl_handshake_timeout=10)
        await stop.wait()
        srv.close()

    uvloop.run(main())


# -- design 2: blocking TLS sockets on a bounded thread pool ------------------------------------------


def _serve_conn(core: Core, raw: socket.socket, addr: Any, ctx: ssl.SSLContext) -> None:
    peer = f"{addr[0]}:{addr[1]}"
    try:
        raw.settimeout(10)  # the handshake and each read: a silent peer frees its thread
        tls = ctx.wrap_socket(raw, server_side=True)
    except (OSError, ssl.SSLError):
        raw.close()
        return
    p = _Parsed()
    try:
        while True:
            data = tls.recv(65536)
            if not data:
                return
            try:
                p.parser.feed_data(data)
            except httptools.HttpParserError:
                tls.sendall(_reply(400, b"malformed HTTP request\n", "text/plain", False))
                return
            while p.done:
                url, auth, body, keep = p.done.pop(0)
                tls.sendall(_answer(core, url, auth, body, keep, peer, tls))
                if not keep:
                    return
    except (OSError, ssl.SSLError):
        return
    finally:
        tls.close()


def run_threads(core: Core, sock: socket.socket, ctx: ssl.SSLContext, threads: int) -> None:
    pool = ThreadPoolExecutor(max_workers=threads)
    bound = threading.BoundedSemaphore(threads)  # accept no more connections than threads
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    sock.settimeout(0.5)

    def job(raw: socket.socket, addr: Any) -> None:
        try:
            _serve_conn(core, raw, addr, ctx)
        finally:
            bound.release()

    while not stopping.is_set():
        bound.acquire()
        try:
            raw, addr = sock.accept()
        except TimeoutError:
            bound.release()
            continue
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pool.submit(job, raw, addr)
    pool.shutdown(wait=False, cancel_futures=True)


# -- processes ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--listen", default="127.0.0.1:8443")
    ap.add_argument("--design", choices=["lean", "lean-inline", "threads"], required=True)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--threads", type=int, default=16, help="threads: connections served at once per worker")
    a = ap.parse_args(argv)
    cfg = config_for(a.dir)
    store = build_store(cfg)
    ca = build_authority(cfg, store, workers=a.workers)
    server = build_server(cfg, ca)
    ctx = server_context(cfg.path(cfg.server.tls_cert), cfg.path(cfg.server.tls_key), ca.trust_anchors())
    host, port = a.listen.rsplit(":", 1)
    sock = bind(host, int(port), reuse_port=a.workers > 1)
    store.close()
    core = Core(server)
    run: Callable[[socket.socket], None]
    if a.design == "threads":
        run = lambda s: run_threads(core, s, ctx, a.threads)  # noqa: E731
    else:
        run = lambda s: run_lean(core, s, ctx, a.design == "lean-inline")  # noqa: E731
    pids = []
    for s in _worker_sockets(sock, a.workers):
        pid = os.fork()
        if pid == 0:
            try:
                run(s)
            finally:
                os._exit(0)
        pids.append(pid)
    signal.signal(signal.SIGTERM, lambda *_: [os.kill(p, signal.SIGTERM) for p in pids])
    for pid in pids:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    return 0


if __name__ == "__main__":
    sys.exit(main())
