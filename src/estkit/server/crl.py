"""The CRL over plain HTTP (RFC 5280 §4.2.1.13, RFC 2585 §4.2): ``GET
/crl/<ca>.crl`` answers the CA's current CRL as DER ``application/pkix-crl``.

Plain HTTP on purpose: relying parties fetch CRLs without TLS (the CRL is
signed), and ``openssl verify -crl_download`` and friends speak only HTTP.
A background task regenerates each CRL before it nears its nextUpdate.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from estkit.ca.revocation import Revocation
from estkit.errors import EstError
from estkit.protocol import constants as c
from estkit.server.periodic import every
from estkit.server.transport import server_header

__all__ = ["crl_app", "crl_url"]

log = logging.getLogger("estkit.crl")


def crl_url(base: str, ca: str) -> str:
    """The URL of a CA's CRL under ``http://host:port``."""
    return f"{base.rstrip('/')}{c.CRL_PATH}/{ca}.crl"


def crl_app(revocation: Revocation, *, refresh_every: float = 600.0) -> web.Application:
    """The CRL application (one per worker process)."""

    async def get_crl(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        loop = asyncio.get_running_loop()
        try:
            rec = await loop.run_in_executor(None, revocation.current, name)
        except EstError as exc:
            return web.Response(status=exc.status, text=exc.reason + "\n", content_type="text/plain")
        return web.Response(body=rec.der, headers={
            "Content-Type": c.CT_PKIX_CRL,
            "Last-Modified": rec.this_update.strftime("%a, %d %b %Y %H:%M:%S GMT"),
            "Expires": rec.next_update.strftime("%a, %d %b %Y %H:%M:%S GMT")})

    app = web.Application()
    app.on_response_prepare.append(server_header)
    app.router.add_get(c.CRL_PATH + "/{name}.crl", get_crl)
    app.cleanup_ctx.append(every(refresh_every, revocation.refresh, "CRL refresh", first_now=True))
    return app
