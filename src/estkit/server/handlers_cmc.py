"""/fullcmc (RFC 7030 §4.3): every outcome, success or failure, is a signed
CMC response (``application/pkcs7-mime; smime-type=CMC-response``) with its
HTTP status, so the body is decoded by the CA service, not by the dispatcher."""

from __future__ import annotations

import asyncio

from aiohttp import web

from estkit.ca.cmc import CmcOutcome, CmcService
from estkit.ca.identity import RequestContext
from estkit.errors import EstError
from estkit.protocol import constants as c
from estkit.protocol.framing import encode_b64
from estkit.server.app import EstRequest, EstServer, Operation
from estkit.server.auth import peer_of

__all__ = ["register_cmc"]


def register_cmc(server: EstServer, cmc: CmcService) -> None:
    """Register /fullcmc.  Authentication may come from the transport (HTTP
    Basic, TLS client certificate) or from the CMC message itself (a signing
    certificate of this CA, identityProofV2), so it is not required up front."""

    async def fullcmc(srv: EstServer, req: EstRequest) -> web.StreamResponse:
        try:  # a peer trickling its body must not hold the request forever
            body = await asyncio.wait_for(req.http.read(), srv.body_timeout)
        except TimeoutError:
            raise EstError("request body not received in time", status=408) from None
        auth_error: EstError | None = None
        try:
            ctx = await srv.auth.context(req.http, require=False, label=req.label)
        except EstError as exc:  # wrong Basic password, revoked TLS certificate...
            ctx, auth_error = RequestContext(peer=peer_of(req.http)), exc
        out: CmcOutcome = await srv.run_ca(cmc.fullcmc, req.label, body, req.http.headers.get("Content-Type"),
                                           ctx, auth_error)
        headers = {"Content-Type": c.CT_CMC_RESPONSE, c.HDR_CTE: "base64"}
        if out.status == 401:
            headers[c.HDR_WWW_AUTHENTICATE] = srv.auth.challenges[0]
        if out.retry_after is not None:
            headers[c.HDR_RETRY_AFTER] = str(out.retry_after)
        return web.Response(status=out.status, body=encode_b64(out.der), headers=headers)

    server.register(Operation(c.OP_FULLCMC, "POST", fullcmc))
