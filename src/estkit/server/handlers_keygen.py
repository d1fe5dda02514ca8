"""/serverkeygen (RFC 7030 §4.4): decode, one CA call, encode the multipart."""

from __future__ import annotations

from estkit.ca.identity import RequestContext
from estkit.ca.keygen import GeneratedKey, ServerKeyGen
from estkit.protocol import constants as c
from estkit.protocol.multipart import build_serverkeygen
from estkit.protocol.pkcs7 import certs_only
from estkit.protocol.request import decode_pkcs10
from estkit.server.app import EstRequest, EstServer, Operation
from estkit.server.http import HttpResponse

__all__ = ["register_keygen"]


def register_keygen(server: EstServer, keygen: ServerKeyGen) -> None:
    """Register /serverkeygen: same authentication and request as /simpleenroll."""

    async def serverkeygen(srv: EstServer, req: EstRequest) -> HttpResponse:
        def generate(ctx: RequestContext) -> GeneratedKey:
            # RFC 7030 §4.4.1: the CSR's signature is not checked (the key is new), so
            # decode_pkcs10 reports it in ``pop`` and serverkeygen ignores it.
            return keygen.serverkeygen(req.label, decode_pkcs10(req.der), ctx)
        result: GeneratedKey = await srv.run_authenticated(req, generate)
        body, ctype = build_serverkeygen(result.key_der, certs_only([result.certificate]),
                                         encrypted=result.encrypted)
        # One write with Content-Length, never chunked (interop-notes).
        return HttpResponse(200, body, [("Content-Type", ctype), ("Cache-Control", "no-store")])

    server.register(Operation(c.OP_SERVERKEYGEN, "POST", serverkeygen, (c.CT_PKCS10,), require_auth=True))
