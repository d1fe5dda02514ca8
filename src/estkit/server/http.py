"""The HTTP request and response as the EST application sees them, whatever
carries them: estkit's own HTTP/1.1 protocol on the TLS listener
(server/h1.py) or aiohttp on the plain-HTTP proxy listener (server/app.py
``EstServer.app``).  Typed values, so that dispatch, authentication and the
handlers are written once and know nothing of the transport.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

from multidict import CIMultiDictProxy

__all__ = ["TlsFacts", "HttpRequest", "HttpResponse", "http_date", "SERVER_HEADER", "SUPPORTED_VERSIONS"]

# RFC 9110 §10.2.4: the Server header is optional; a fixed one names no versions.
SERVER_HEADER = "estkit"
# EST is HTTP/1.1 (RFC 7030 §3.2); 1.0 is answered too, anything else is 505.
SUPPORTED_VERSIONS = ((1, 0), (1, 1))


@dataclass(frozen=True)
class TlsFacts:
    """The client's TLS connection: protocol version, tls-unique (RFC 5929; the
    RFC 7030 §3.5 linking value, TLS 1.2 only) and the certificate it presented
    (DER).  From the connection itself, or as a trusted TLS-terminating proxy
    forwarded them (server/proxied.py)."""

    version: str | None
    unique: bytes | None
    cert_der: bytes | None


@dataclass(frozen=True)
class HttpRequest:
    """One request's head, and how to read its body.

    ``read_body`` is called at most once, by the operation, after it has
    authenticated the requester: an unknown peer's body is never waited for."""

    method: str
    target: str                  # the request target as sent (path and query, percent-encoded)
    path: str                    # its path, percent-decoded
    version: tuple[int, int]
    headers: CIMultiDictProxy[str]
    peer: str                    # the client's ip:port (the one a trusted proxy named, else the socket's)
    tls: TlsFacts | None         # None: not a TLS connection (nor one a proxy vouched for)
    read_body: Callable[[], Awaitable[bytes]]

    @property
    def content_length(self) -> int | None:
        """The Content-Length header's value; None when absent (the parser
        already refused a malformed one)."""
        v = self.headers.get("Content-Length")
        return int(v) if v is not None and v.isdigit() else None


@dataclass
class HttpResponse:
    """A response: status, headers other than the framing ones (Content-Length,
    Connection, Date and Server are the transport's), body; ``close``: close
    the connection after it."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False

    @property
    def reason(self) -> str:
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return "Unknown"


_date: tuple[int, str] = (0, "")


def http_date() -> str:
    """RFC 9110 §6.6.1: the Date header, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True))
    return _date[1]
