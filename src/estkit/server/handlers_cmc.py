"""/fullcmc (RFC 7030 §4.3): every outcome, success or failure, is a signed
CMC response (``application/pkcs7-mime; smime-type=CMC-response``) with its
HTTP status, so the media type and the body are checked here rather than by
the dispatcher: a request that cannot be decoded still gets a CMC answer."""

from __future__ import annotations

from estkit.ca.cmc import CmcOutcome, CmcService
from estkit.ca.identity import RequestContext
from estkit.errors import EstError
from estkit.protocol import constants as c
from estkit.protocol.cmc_request import decode_full_cmc
from estkit.protocol.framing import decode_b64, encode_b64, media_params, media_type
from estkit.server.app import EstRequest, EstServer, Operation
from estkit.server.http import HttpResponse

__all__ = ["register_cmc"]


def register_cmc(server: EstServer, cmc: CmcService) -> None:
    """Register /fullcmc.  Authentication may come from the transport (HTTP
    Basic, TLS client certificate) or from the CMC message itself (a signing
    certificate of this CA, identityProofV2), so it is not required up front."""

    def answer(label: str | None, body: bytes, content_type: str | None, ctx: RequestContext,
               auth_error: EstError | None) -> CmcOutcome:
        """Decode (RFC 8951 §3 base64, RFC 5272 §3.2.1) and hand the typed request to the CA."""
        try:
            smime = media_params(content_type).get("smime-type", "").lower()
            if media_type(content_type) != c.CT_PKCS7 or smime not in ("cmc-request", ""):
                raise EstError(f"fullcmc takes {c.CT_CMC_REQUEST}", status=415)
            request = decode_full_cmc(decode_b64(body, "request body"))
        except EstError as exc:
            return cmc.failure(label, exc)
        return cmc.fullcmc(label, request, ctx, auth_error)

    async def fullcmc(srv: EstServer, req: EstRequest) -> HttpResponse:
        body = await srv.read_body(req.http)  # a peer trickling its body must not hold the request forever
        auth_error: EstError | None = None
        try:
            ctx = await srv.auth.context(req.http, require=False, label=req.label)
        except EstError as exc:  # wrong Basic password, revoked TLS certificate...
            ctx, auth_error = RequestContext(peer=req.http.peer), exc
        out: CmcOutcome = await srv.run_ca(answer, req.label, body, req.http.headers.get("Content-Type"), ctx,
                                           auth_error)
        headers = [("Content-Type", c.CT_CMC_RESPONSE), (c.HDR_CTE, "base64")]
        if out.status == 401:
            headers.append((c.HDR_WWW_AUTHENTICATE, srv.auth.challenges[0]))
        if out.retry_after is not None:
            headers.append((c.HDR_RETRY_AFTER, str(out.retry_after)))
        return HttpResponse(out.status, encode_b64(out.der), headers)

    server.register(Operation(c.OP_FULLCMC, "POST", fullcmc))
