"""Starting and stopping the EST-coaps listener in a worker's event loop.

The UDP socket is bound by the parent before the workers fork (a taken port
is reported at start, like HTTPS); one worker serves it.  DTLS sessions live
in one process's memory: several processes reading one UDP socket would each
see only some of a session's datagrams, so EST-coaps is served by worker 0
alone (a restarted worker 0 takes over the socket; sessions then handshake
again).  docs/architecture.md explains the choice.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from OpenSSL import SSL

from estkit.ca.keygen import ServerKeyGen
from estkit.server.app import EstServer
from estkit.server.coap.dtls import DtlsEndpoint, DtlsLimits
from estkit.server.coap.exchange import CoapExchange
from estkit.server.coap.resources import EstResources

__all__ = ["bind_udp", "CoapService"]

log = logging.getLogger("estkit.server")

Stop = Callable[[], Awaitable[None]]


def bind_udp(host: str, port: int) -> socket.socket:
    """The EST-coaps UDP socket (IPv6 when the host is an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class CoapService:
    """A service for ``estkit.server.run.serve`` (called in worker 0's loop, it
    serves EST-coaps on ``sock`` and returns the coroutine that stops it), and
    ``reload`` for SIGHUP: a new DTLS context from the certificate files."""

    def __init__(self, server: EstServer, keygen: ServerKeyGen | None, sock: socket.socket,
                 make_context: Callable[[], SSL.Context], limits: DtlsLimits, max_body: int) -> None:
        self.server, self.keygen, self.sock = server, keygen, sock
        self.make_context, self.limits, self.max_body = make_context, limits, max_body
        self.endpoint: DtlsEndpoint | None = None  # in the worker that serves it

    async def __call__(self) -> Stop:
        resources = EstResources(self.server, self.keygen)
        exchange = CoapExchange(resources.render, max_body=self.max_body)
        endpoint = DtlsEndpoint(self.make_context(), self.limits, exchange.on_message, exchange.closed)
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: endpoint, sock=self.sock)
        self.endpoint = endpoint

        async def stop() -> None:
            for s in list(endpoint.sessions.values()):
                s.close("server stopping", notify=True)
            transport.close()
            if exchange.tasks:
                await asyncio.wait(list(exchange.tasks), timeout=2.0)

        return stop

    def reload(self) -> None:
        """SIGHUP in the serving worker: new handshakes get the certificate and key now on disk."""
        if self.endpoint is None:
            return
        try:
            self.endpoint.set_context(self.make_context())
        except (OSError, SSL.Error) as exc:
            log.error("SIGHUP: cannot reload the DTLS certificate (%s); EST-coaps still serves the old one", exc)
            return
        log.info("reloaded the DTLS certificate of EST-coaps")
