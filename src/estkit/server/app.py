"""Routes, dispatch and the error and access-log handling of every request.

Every operation is reachable as ``/.well-known/est/<op>`` and
``/.well-known/est/<label>/<op>`` (RFC 7030 §3.2.2).  Handlers are thin:
decode, one call into the CA (in a worker thread: it signs and writes the
store), encode.  They see an :class:`~estkit.server.http.HttpRequest`, not a
transport: the TLS listener speaks HTTP/1.1 itself (server/h1.py), the
plain-HTTP proxy listener through aiohttp (:meth:`EstServer.app`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from estkit.server.ports import EstAuthority
from estkit.ca.identity import ANONYMOUS, RequestContext
from estkit.errors import (BadRequest, EstError, MethodNotAllowed, NotFound, PayloadTooLarge, TooManyRequests,
                           UnsupportedMediaType)
from estkit.protocol import constants as c
from estkit.protocol.framing import decode_b64, media_type
from estkit.server import drain
from estkit.server.auth import CLIENT_PEER, FORWARDED_TLS, Authenticator, Presented
from estkit.server.health import HEALTHZ, READYZ, Readiness, healthz
from estkit.server.http import SUPPORTED_VERSIONS, HttpRequest, HttpResponse, TlsFacts
from estkit.server.transport import server_header
from estkit.server.wire import error_response, text_response

__all__ = ["AccessInfo", "EstRequest", "Operation", "EstServer", "EST_SERVER"]

log = logging.getLogger("estkit.server")
access = logging.getLogger("estkit.access")



@dataclass
class AccessInfo:
    """What the access log and the metrics say of one request, filled in as
    dispatch learns it (the operation, the label, then who asked)."""

    op: str = "-"
    label: str = ""
    identity: str = str(ANONYMOUS)


# Seconds a 429 is held before it is sent: a closed-loop guesser then costs a
# handshake a second, not hundreds (it holds one idle connection meanwhile).
THROTTLE_PAUSE = 1.0


@dataclass
class EstRequest:
    """A routed EST request: the label (None: default), the operation, the
    authenticated context (after auth) and the decoded body (for POSTs)."""

    http: HttpRequest
    label: str | None
    operation: str
    ctx: RequestContext
    info: AccessInfo
    der: bytes = b""
    # Credentials still to be checked against the store (see run_authenticated);
    # until then ``ctx`` is anonymous.
    presented: Presented | None = None


Handler = Callable[["EstServer", EstRequest], Awaitable[HttpResponse]]


@dataclass(frozen=True)
class Operation:
    """An EST operation: its method, the request media types it takes (empty
    for a GET), whether it needs an authenticated requester, and its handler."""

    name: str
    method: str
    handler: Handler
    content_types: tuple[str, ...] = ()
    require_auth: bool = False


# The EstServer behind an aiohttp application (server/run.py serves its TLS
# listener with server/h1.py rather than with aiohttp).
EST_SERVER: web.AppKey[EstServer] = web.AppKey("estkit.est_server")


class EstServer:
    """The EST application around the CA (any EstAuthority)."""

    def __init__(self, ca: EstAuthority, *, realm: str = "estkit", max_body: int = 65536,
                 access_log: bool = True, body_timeout: float = 30.0, readiness: Readiness | None = None) -> None:
        self.ca = ca
        self.realm = realm
        self.max_body = max_body
        self.access_log = access_log
        self.body_timeout = body_timeout  # a peer trickling its body must not hold a request forever
        self.auth = Authenticator(ca, realm)
        self.operations: dict[str, Operation] = {}
        # /readyz's checks (estkit.server.health), built by the wiring around the concrete CA;
        # without them /readyz is not served.
        self.readiness = readiness
        # Called once per answered request, where the access log is written:
        # (operation, label, status, seconds); estkit.server.metrics counts there.
        self.on_request: Callable[[str, str, int, float], None] | None = None

    def register(self, op: Operation) -> None:
        """Add (or replace) an operation."""
        if op.name not in c.OPERATIONS:
            raise ValueError(f"not an EST operation: {op.name}")
        self.operations[op.name] = op

    async def run_ca(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking CA call (signing, store I/O) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def run_authenticated(self, req: EstRequest, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args, ctx)`` off the event loop, with the request's
        authenticated context.  Credentials the store must check are checked
        first, in the same worker thread: one hand-over per request, where each
        costs more than the Python work it moves (docs/benchmark.md)."""
        presented = req.presented
        if presented is None:
            return await self.run_ca(fn, *args, req.ctx)
        info = req.info

        def job() -> Any:
            ctx = self.auth.context_blocking(presented, require=True)
            info.identity = str(ctx.identity)
            return fn(*args, ctx)

        return await self.run_ca(job)

    async def read_body(self, req: HttpRequest) -> bytes:
        """The request's body; the transport bounds the wait by ``body_timeout``
        (408), so that a peer trickling its body cannot hold the request forever."""
        return await req.read_body()

    # -- one request -------------------------------------------------------------

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """Answer one request: route, authenticate, run the operation; every
        estkit error becomes its status and one line; the access log and the
        metrics hear of it."""
        start = time.perf_counter()
        info = AccessInfo()
        try:
            if request.version not in SUPPORTED_VERSIONS:
                # RFC 9110 §15.6.6: EST is HTTP/1.1 (RFC 7030 §3.2); 0.9 or 2.0 on an
                # HTTP/1.x connection is refused, not answered as if it were 1.1.
                raise EstError("HTTP version not supported: use HTTP/1.1", status=505)
            resp = await self._route(request, info)
        except EstError as exc:
            if isinstance(exc, TooManyRequests):  # a guesser ignoring Retry-After must not spin on refusals
                await asyncio.sleep(min(THROTTLE_PAUSE, exc.retry_after or 0))
            resp = error_response(exc, self.realm)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            resp = text_response(500, "internal server error")
        if resp.status in (413, 505) or drain.STATE.draining:
            # Draining (server/drain.py): the client's next request goes, through
            # the balancer, to a node that is not stopping.
            # The rest of an oversized body is not read, and a 505 peer speaks
            # something else: close rather than parse what follows.
            resp.close = True
        elapsed = time.perf_counter() - start
        if self.access_log:
            access.info("%s %s %s %s %d %.1fms", request.peer, info.identity, info.op,
                        info.label or "-", resp.status, elapsed * 1000)
        if self.on_request is not None:
            self.on_request(info.op, info.label, resp.status, elapsed)
        return resp

    async def _route(self, request: HttpRequest, info: AccessInfo) -> HttpResponse:
        path = request.path
        if path == HEALTHZ or (path == READYZ and self.readiness is not None):
            # Probes for load balancers (estkit.server.health), outside /.well-known/est.
            info.op = path[1:]
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{path} takes GET, not {request.method}", allowed=("GET", "HEAD"))
            return await (healthz() if path == HEALTHZ else self.readiness.readyz())  # type: ignore[union-attr]
        if path.startswith(c.WELL_KNOWN + "/"):
            tail = path[len(c.WELL_KNOWN) + 1:]
        else:
            # Alias for clients that cannot put a CA label after /.well-known/est
            # (strongSwan 5.9.8's pki has no --label; it appends the path to --url):
            # /<label>/.well-known/est/<op>.
            prefix, sep, rest = path[1:].partition(c.WELL_KNOWN + "/")
            if not sep or not prefix or "/" in prefix or not rest or "/" in rest:
                raise NotFound("not found")
            tail = prefix + "/" + rest
        return await self._dispatch(request, tail, info)

    def _split(self, tail: str) -> tuple[str | None, str]:
        parts = tail.split("/")
        if parts and parts[-1] == "":
            parts.pop()
        if len(parts) == 1:
            return None, parts[0]
        if len(parts) == 2 and parts[0]:
            if len(parts[0]) > 64 or not parts[0].isprintable():
                raise NotFound("unknown CA label")  # not echoed: it is not a name we could have
            return parts[0], parts[1]
        raise NotFound("no such EST path")

    async def _dispatch(self, request: HttpRequest, tail: str, info: AccessInfo) -> HttpResponse:
        label, opname = self._split(tail)
        info.op, info.label = opname, label or ""
        op = self.operations.get(opname)
        if op is None:
            raise NotFound(f"unknown EST operation {opname!r}")
        self.ca.profile(label)  # 404 for an unknown label
        if request.method != op.method:
            raise MethodNotAllowed(f"{opname} takes {op.method}, not {request.method}", allowed=(op.method,))
        length = request.content_length
        if length is not None and length > self.max_body:
            raise PayloadTooLarge(f"request body over {self.max_body} bytes")
        # Authenticate before looking at what an unknown peer sent; when only
        # the store can tell (a password, a client certificate), that happens
        # in the operation's worker thread (run_authenticated), before it acts.
        ctx = RequestContext(peer=request.peer)
        presented: Presented | None = None
        if op.require_auth:
            presented = self.auth.presented(request, label)
            if not self.auth.deferrable(presented):
                ctx = await self.auth.context(request, require=True, label=label, presented=presented)
                presented = None
        info.identity = str(ctx.identity)
        der = b""
        if op.content_types:
            mt = media_type(request.headers.get("Content-Type"))
            if mt not in op.content_types:
                raise UnsupportedMediaType(f"{opname} takes {' or '.join(op.content_types)}, not {mt or 'nothing'}")
            # RFC 8951 §3: base64 whatever Content-Transfer-Encoding says.
            der = decode_b64(await self.read_body(request), "request body")
        return await op.handler(self, EstRequest(request, label, opname, ctx, info, der, presented))

    # -- the aiohttp application (the plain-HTTP proxy listener) -----------------

    def app(self) -> web.Application:
        """An aiohttp application answering every path through :meth:`handle`
        (server/proxied.py puts its guard in front).  Its startup and cleanup
        hooks are the worker's, whichever protocol serves the TLS listener."""
        app = web.Application(client_max_size=self.max_body)
        app[EST_SERVER] = self
        app.on_response_prepare.append(server_header)
        app.on_startup.append(self.auth.on_startup)  # failed authentications to the audit trail
        app.on_cleanup.append(self.auth.on_cleanup)
        app.router.add_route("*", "/{tail:.*}", self._aiohttp)
        return app

    async def _aiohttp(self, request: web.Request) -> web.StreamResponse:
        fwd: TlsFacts | None = request.get(FORWARDED_TLS)
        sslobj = request.transport.get_extra_info("ssl_object") if request.transport is not None else None
        tls = fwd if fwd is not None and fwd.version is not None else None
        if sslobj is not None:
            tls = TlsFacts(sslobj.version(), sslobj.get_channel_binding("tls-unique"),
                           sslobj.getpeercert(binary_form=True) or None)

        async def read_body() -> bytes:
            try:
                return await asyncio.wait_for(request.read(), self.body_timeout)
            except TimeoutError:
                raise EstError("request body not received in time", status=408) from None
            except web.HTTPRequestEntityTooLarge:
                raise PayloadTooLarge(f"request body over {self.max_body} bytes") from None
            except web.RequestPayloadError:
                raise BadRequest("malformed request body framing") from None

        req = HttpRequest(method=request.method, target=request.raw_path, path=request.path,
                          version=(request.version.major, request.version.minor),
                          headers=request.headers, peer=_peer(request), tls=tls, read_body=read_body)
        resp = await self.handle(req)
        out = web.Response(status=resp.status, body=resp.body, headers=CIMultiDict(resp.headers))
        if resp.close:
            out.force_close()
        return out


def _peer(request: web.Request) -> str:
    """The client's ``ip:port``: the one the proxy named (server/proxied.py), else the socket's."""
    client = request.get(CLIENT_PEER)
    if isinstance(client, str):
        return client
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "-"
