"""Handlers of the mandatory operations and /csrattrs (RFC 7030 §4.1, §4.2, §4.5)."""

from __future__ import annotations

from cryptography import x509

from estkit.protocol import constants as c
from estkit.ca.identity import RequestContext
from estkit.protocol.pkcs7 import certs_only
from estkit.protocol.request import decode_pkcs10
from estkit.server.app import EstRequest, EstServer, Operation
from estkit.server.http import HttpResponse
from estkit.server.wire import b64_response

__all__ = ["register_core"]


async def cacerts(server: EstServer, req: EstRequest) -> HttpResponse:
    """RFC 7030 §4.1: no authentication; 200 with the chain as certs-only."""
    return b64_response(server.ca.cacerts(req.label), c.CT_PKCS7)


async def csrattrs(server: EstServer, req: EstRequest) -> HttpResponse:
    """RFC 7030 §4.5.2: 200 with CsrAttrs, or 204 when there are none."""
    der = server.ca.csrattrs(req.label)
    if der is None:
        return HttpResponse(204)
    return b64_response(der, c.CT_CSRATTRS)


async def simpleenroll(server: EstServer, req: EstRequest) -> HttpResponse:
    """RFC 7030 §4.2.1 / §4.2.3: a certs-only response with the one new certificate."""
    def enroll(ctx: RequestContext) -> x509.Certificate:
        # Decoded once the requester is authenticated: an unknown peer's body is not read.
        return server.ca.simpleenroll(req.label, decode_pkcs10(req.der), ctx)
    cert = await server.run_authenticated(req, enroll)
    return b64_response(certs_only([cert]), c.CT_CERTS_ONLY)


async def simplereenroll(server: EstServer, req: EstRequest) -> HttpResponse:
    """RFC 7030 §4.2.2: renew or rekey the TLS client certificate."""
    def reenroll(ctx: RequestContext) -> x509.Certificate:
        return server.ca.simplereenroll(req.label, decode_pkcs10(req.der), ctx)
    cert = await server.run_authenticated(req, reenroll)
    return b64_response(certs_only([cert]), c.CT_CERTS_ONLY)


def register_core(server: EstServer) -> None:
    """Register /cacerts, /csrattrs, /simpleenroll and /simplereenroll."""
    server.register(Operation(c.OP_CACERTS, "GET", cacerts))
    server.register(Operation(c.OP_CSRATTRS, "GET", csrattrs))
    server.register(Operation(c.OP_SIMPLEENROLL, "POST", simpleenroll, (c.CT_PKCS10,), require_auth=True))
    server.register(Operation(c.OP_SIMPLEREENROLL, "POST", simplereenroll, (c.CT_PKCS10,), require_auth=True))


