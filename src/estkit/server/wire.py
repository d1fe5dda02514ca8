"""Responses as the wire rules want them (interop-notes): base64 on one line
plus a newline, ``Content-Transfer-Encoding: base64``, a Content-Length (aiohttp
sets it for a bytes body), one-line ``text/plain`` errors."""

from __future__ import annotations

from aiohttp import web

from estkit.errors import EstError, MethodNotAllowed, Unauthorized
from estkit.protocol.constants import CT_TEXT, HDR_CTE, HDR_RETRY_AFTER, HDR_WWW_AUTHENTICATE
from estkit.protocol.framing import encode_b64

__all__ = ["b64_response", "error_response", "text_response"]


def b64_response(der: bytes, content_type: str, status: int = 200) -> web.Response:
    """An EST payload response (RFC 8951 §3: base64 whatever the CTE says; we say base64)."""
    return web.Response(status=status, body=encode_b64(der),
                        headers={"Content-Type": content_type, HDR_CTE: "base64"})


def text_response(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    """A one-line ``text/plain`` response (RFC 8951 §5)."""
    h = {"Content-Type": CT_TEXT}
    if headers:
        h.update(headers)
    return web.Response(status=status, body=(reason + "\n").encode(), headers=h)


def error_response(exc: EstError, realm: str) -> web.Response:
    """The response for an estkit error: its status, one line of reason, and
    WWW-Authenticate / Allow / Retry-After where they belong."""
    headers: dict[str, str] = {}
    if exc.retry_after is not None:
        headers[HDR_RETRY_AFTER] = str(int(exc.retry_after))  # delta-seconds: strongSwan parses only these
    if isinstance(exc, Unauthorized):
        challenges = exc.challenges or (f'Basic realm="{realm}", charset="UTF-8"',)
        resp = web.Response(status=401, body=b"", headers={"Content-Type": CT_TEXT})
        for ch in challenges:
            resp.headers.add(HDR_WWW_AUTHENTICATE, ch)
        if not exc.empty_body:
            resp.body = (exc.reason + "\n").encode()
        return resp
    if isinstance(exc, MethodNotAllowed) and exc.allowed:
        headers["Allow"] = ", ".join(exc.allowed)
    return text_response(exc.status, exc.reason, headers)
