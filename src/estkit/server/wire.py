"""Responses as the wire rules want them (interop-notes): base64 on one line
plus a newline, ``Content-Transfer-Encoding: base64``, a Content-Length (the
transport always sends one), one-line ``text/plain`` errors."""

from __future__ import annotations

from estkit.errors import EstError, MethodNotAllowed, Unauthorized
from estkit.protocol.constants import CT_TEXT, HDR_CTE, HDR_RETRY_AFTER, HDR_WWW_AUTHENTICATE
from estkit.protocol.framing import encode_b64
from estkit.server.http import HttpResponse

__all__ = ["b64_response", "error_response", "text_response"]


def b64_response(der: bytes, content_type: str, status: int = 200) -> HttpResponse:
    """An EST payload response (RFC 8951 §3: base64 whatever the CTE says; we say base64)."""
    return HttpResponse(status, encode_b64(der), [("Content-Type", content_type), (HDR_CTE, "base64")])


def text_response(status: int, reason: str, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    """A one-line ``text/plain`` response (RFC 8951 §5)."""
    return HttpResponse(status, (reason + "\n").encode(), [("Content-Type", CT_TEXT), *(headers or ())])


def error_response(exc: EstError, realm: str) -> HttpResponse:
    """The response for an estkit error: its status, one line of reason, and
    WWW-Authenticate / Allow / Retry-After where they belong."""
    headers: list[tuple[str, str]] = []
    if exc.retry_after is not None:
        headers.append((HDR_RETRY_AFTER, str(int(exc.retry_after))))  # delta-seconds: strongSwan parses only these
    if isinstance(exc, Unauthorized):
        challenges = exc.challenges or (f'Basic realm="{realm}", charset="UTF-8"',)
        headers += [(HDR_WWW_AUTHENTICATE, ch) for ch in challenges]
        body = b"" if exc.empty_body else (exc.reason + "\n").encode()
        return HttpResponse(401, body, [("Content-Type", CT_TEXT), *headers])
    if isinstance(exc, MethodNotAllowed) and exc.allowed:
        headers.append(("Allow", ", ".join(exc.allowed)))
    return text_response(exc.status, exc.reason, headers)
