"""The OCSP responder over plain HTTP (RFC 6960 Appendix A.1): ``POST /ocsp``
with an ``application/ocsp-request`` body, or ``GET /ocsp/<url-encoded
base64 request>``; answers ``application/ocsp-response``.

Plain HTTP as for CRLs: the response is signed, and relying parties (``openssl
ocsp``, browsers, strongSwan) fetch it without TLS.  Bad OCSP requests get an
OCSP ``malformedRequest`` response (200, RFC 6960 §2.3); only HTTP-level
mistakes (wrong media type, oversized body) get a text/plain 4xx.
"""

from __future__ import annotations

import asyncio
import binascii
import base64
import hashlib
import logging
import urllib.parse
from collections.abc import Callable
from datetime import datetime
from email.utils import format_datetime

from aiohttp import web
from cryptography.x509 import ExtensionNotFound, OCSPNonce, ocsp

from estkit.ca.ports import utc_now

from estkit.ca.ocsp import OcspResponder
from estkit.protocol import constants as c
from estkit.server.periodic import every
from estkit.server.transport import server_header

__all__ = ["ocsp_app", "add_ocsp", "ocsp_url", "cache_headers", "MAX_REQUEST"]

log = logging.getLogger("estkit.ocsp")

# A single-request OCSPRequest with a nonce is ~100 bytes; a signed one with
# certificates a few KiB.
MAX_REQUEST = 16384


def ocsp_url(base: str) -> str:
    """The responder's URL under ``http://host:port`` (for AIA, RFC 5280 §4.2.2.1)."""
    return base.rstrip("/") + c.OCSP_PATH


def _plain(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n", content_type="text/plain")


def cache_headers(der: bytes, now: datetime | None = None) -> dict[str, str]:
    """HTTP caching of a response to a GET (RFC 5019 §6.2): a successful answer
    is fresh until its nextUpdate, for any cache on the way; an answer to a
    request with a nonce, or an error (tryLater above all), is for that request
    only and never stored."""
    try:
        resp = ocsp.load_der_ocsp_response(der)
    except ValueError:
        return {"Cache-Control": "no-store"}
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL or resp.next_update_utc is None:
        return {"Cache-Control": "no-store"}
    try:
        resp.extensions.get_extension_for_class(OCSPNonce)
        return {"Cache-Control": "no-store"}
    except ExtensionNotFound:  # no nonce: the answer is the same for everybody
        pass
    now = now or utc_now()
    max_age = max(0, int((resp.next_update_utc - now).total_seconds()))
    return {
        "Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate",
        "Last-Modified": format_datetime(resp.this_update_utc, usegmt=True),
        "Expires": format_datetime(resp.next_update_utc, usegmt=True),
        "ETag": '"' + hashlib.sha256(der).hexdigest()[:32] + '"',
    }


def add_ocsp(app: web.Application, responder: OcspResponder, refresh: Callable[[], None], *,
             refresh_every: float = 600.0) -> web.Application:
    """Add the OCSP routes and the responder-certificate check to an app
    (its own, or the CRL app when both share a listener)."""

    async def answer(der: bytes, *, cacheable: bool = False) -> web.Response:
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(None, responder.respond, der)
        headers = {"Content-Type": c.CT_OCSP_RESPONSE}
        if cacheable:  # a GET: caches on the way may keep it (RFC 5019 §6.2); a POST they do not store
            headers.update(cache_headers(body))
        return web.Response(body=body, headers=headers)

    async def post(request: web.Request) -> web.StreamResponse:
        if request.content_type != c.CT_OCSP_REQUEST:
            return _plain(415, f"expected Content-Type {c.CT_OCSP_REQUEST} (RFC 6960 Appendix A.1.1)")
        if request.content_length is not None and request.content_length > MAX_REQUEST:
            return _plain(413, f"an OCSP request is at most {MAX_REQUEST} bytes here")
        der = b""
        while len(der) <= MAX_REQUEST:
            chunk = await request.content.read(MAX_REQUEST + 1 - len(der))
            if not chunk:
                break
            der += chunk
        if len(der) > MAX_REQUEST:
            return _plain(413, f"an OCSP request is at most {MAX_REQUEST} bytes here")
        return await answer(der)

    async def get(request: web.Request) -> web.StreamResponse:
        # RFC 6960 Appendix A.1: "{url}/{url-encoding of base-64 encoding of the DER
        # encoding of the OCSPRequest}"; the raw path keeps an encoded '/' (%2F) intact.
        raw = request.raw_path.split("?", 1)[0][len(c.OCSP_PATH) + 1:]
        text = urllib.parse.unquote(raw)
        if len(text) > MAX_REQUEST * 2:
            return _plain(414, "the OCSP request in the URL is too long")
        try:
            der = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            der = b""  # answered as malformedRequest, like any other unreadable request
        return await answer(der, cacheable=True)

    app.router.add_post(c.OCSP_PATH, post)
    app.router.add_post(c.OCSP_PATH + "/", post)
    app.router.add_get(c.OCSP_PATH + "/{request:.*}", get)
    app.cleanup_ctx.append(every(refresh_every, refresh, "OCSP responder certificate check"))
    return app


def ocsp_app(responder: OcspResponder, refresh: Callable[[], None]) -> web.Application:
    """The OCSP application on its own listener (one per worker process)."""
    app = web.Application(client_max_size=MAX_REQUEST)
    app.on_response_prepare.append(server_header)
    return add_ocsp(app, responder, refresh)
