"""Routes, dispatch and the error and access-log middleware.

Every operation is reachable as ``/.well-known/est/<op>`` and
``/.well-known/est/<label>/<op>`` (RFC 7030 §3.2.2).  Handlers are thin:
decode, one call into the CA (in a worker thread: it signs and writes the
store), encode.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from estkit.server.ports import EstAuthority
from estkit.ca.identity import ANONYMOUS, RequestContext
from estkit.errors import (BadRequest, EstError, MethodNotAllowed, NotFound, PayloadTooLarge, TooManyRequests,
                           UnsupportedMediaType)
from estkit.protocol import constants as c
from estkit.protocol.framing import decode_b64, media_type
from estkit.server import drain
from estkit.server.auth import Authenticator, Presented, peer_of
from estkit.server.health import HEALTHZ, READYZ, Readiness, healthz
from estkit.server.transport import SUPPORTED_VERSIONS, server_header
from estkit.server.wire import error_response, text_response

__all__ = ["AccessInfo", "EstRequest", "Operation", "EstServer"]

log = logging.getLogger("estkit.server")
access = logging.getLogger("estkit.access")



@dataclass
class AccessInfo:
    """What the access log and the metrics say of one request, filled in as
    dispatch learns it (the operation, the label, then who asked)."""

    op: str = "-"
    label: str = ""
    identity: str = str(ANONYMOUS)


_INFO = web.RequestKey("estkit.info", AccessInfo)
# Seconds a 429 is held before it is sent: a closed-loop guesser then costs a
# handshake a second, not hundreds (it holds one idle connection meanwhile).
THROTTLE_PAUSE = 1.0


@dataclass
class EstRequest:
    """A routed EST request: the label (None: default), the operation, the
    authenticated context (after auth) and the decoded body (for POSTs)."""

    http: web.Request
    label: str | None
    operation: str
    ctx: RequestContext
    der: bytes = b""
    # Credentials still to be checked against the store (see run_authenticated);
    # until then ``ctx`` is anonymous.
    presented: Presented | None = None


Handler = Callable[["EstServer", EstRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Operation:
    """An EST operation: its method, the request media types it takes (empty
    for a GET), whether it needs an authenticated requester, and its handler."""

    name: str
    method: str
    handler: Handler
    content_types: tuple[str, ...] = ()
    require_auth: bool = False


class EstServer:
    """The aiohttp application around the CA (any EstAuthority)."""

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
        info = req.http[_INFO]

        def job() -> Any:
            ctx = self.auth.context_blocking(presented, require=True)
            info.identity = str(ctx.identity)
            return fn(*args, ctx)

        return await self.run_ca(job)

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=self.max_body, middlewares=[self._middleware])
        app.on_response_prepare.append(server_header)
        app.on_startup.append(self.auth.on_startup)  # failed authentications to the audit trail
        app.on_cleanup.append(self.auth.on_cleanup)
        # Probes for load balancers (estkit.server.health), outside /.well-known/est.
        app.router.add_get(HEALTHZ, self._probe(healthz, "healthz"))
        if self.readiness is not None:
            app.router.add_get(READYZ, self._probe(self.readiness.readyz, "readyz"))
        app.router.add_route("*", c.WELL_KNOWN + "/{tail:.*}", self._dispatch)
        # Alias for clients that cannot put a CA label after /.well-known/est
        # (strongSwan 5.9.8's pki has no --label; it appends the path to --url).
        app.router.add_route("*", "/{prefix}" + c.WELL_KNOWN + "/{tail:[^/]+}", self._dispatch)
        return app

    @staticmethod
    def _probe(handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
               name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def probe(request: web.Request) -> web.StreamResponse:
            request[_INFO].op = name
            return await handler(request)
        return probe

    # -- dispatch ----------------------------------------------------------------

    def _route(self, tail: str) -> tuple[str | None, str]:
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

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        if "prefix" in request.match_info:
            tail = request.match_info["prefix"] + "/" + tail
        label, opname = self._route(tail)
        info = request[_INFO]
        info.op, info.label = opname, label or ""
        op = self.operations.get(opname)
        if op is None:
            raise NotFound(f"unknown EST operation {opname!r}")
        self.ca.profile(label)  # 404 for an unknown label
        if request.method != op.method:
            raise MethodNotAllowed(f"{opname} takes {op.method}, not {request.method}", allowed=(op.method,))
        if request.content_length is not None and request.content_length > self.max_body:
            raise PayloadTooLarge(f"request body over {self.max_body} bytes")
        # Authenticate before looking at what an unknown peer sent; when only
        # the store can tell (a password, a client certificate), that happens
        # in the operation's worker thread (run_authenticated), before it acts.
        ctx = RequestContext(peer=peer_of(request))
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
            try:
                body = await asyncio.wait_for(request.read(), self.body_timeout)
            except TimeoutError:
                raise EstError("request body not received in time", status=408) from None
            except web.RequestPayloadError:
                raise BadRequest("malformed request body framing") from None
            der = decode_b64(body, "request body")
        return await op.handler(self, EstRequest(request, label, opname, ctx, der, presented))

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        start = time.perf_counter()
        started = getattr(request.protocol, "request_started", None)
        if started is not None:
            started()  # the header is complete: no header timeout from here (server/transport.py)
        info = AccessInfo()
        request[_INFO] = info
        try:
            if request.version not in SUPPORTED_VERSIONS:
                # RFC 9110 §15.6.6: EST is HTTP/1.1 (RFC 7030 §3.2); 0.9 or 2.0 on an
                # HTTP/1.x connection is refused, not answered as if it were 1.1.
                raise EstError("HTTP version not supported: use HTTP/1.1", status=505)
            resp = await handler(request)
        except EstError as exc:
            if isinstance(exc, TooManyRequests):  # a guesser ignoring Retry-After must not spin on refusals
                await asyncio.sleep(min(THROTTLE_PAUSE, exc.retry_after or 0))
            resp = error_response(exc, self.realm)
        except web.HTTPRequestEntityTooLarge:
            resp = error_response(PayloadTooLarge(f"request body over {self.max_body} bytes"), self.realm)
        except web.HTTPException as exc:
            resp = text_response(exc.status, exc.reason)
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
            resp.force_close()
        elapsed = time.perf_counter() - start
        if self.access_log:
            access.info("%s %s %s %s %d %.1fms", peer_of(request), info.identity, info.op,
                        info.label or "-", resp.status, elapsed * 1000)
        if self.on_request is not None:
            self.on_request(info.op, info.label, resp.status, elapsed)
        return resp
