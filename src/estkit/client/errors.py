"""The client's exception family.

Every failure of an EST operation is an :class:`estkit.errors.EstError`: a
refusal by the server is rebuilt as the same type the server raised
(``BadRequest`` for 400, ``Unauthorized`` for 401, ``Pending`` for a 202 that
outlived the caller's retry limit, ...) carrying the HTTP ``status``, the
server's one-line text as ``reason`` and ``retry_after``.  Failures that have
no HTTP status (the network, the server's identity, a malformed answer) are
:class:`ClientError` subclasses with ``status`` 0.
"""

from __future__ import annotations

from estkit.errors import EstError

__all__ = ["ClientError", "NetworkError", "TrustError", "ProtocolError", "CsrAttrsWarning"]


class ClientError(EstError):
    """A failure found by the client itself; ``status`` is 0 (no HTTP status)."""

    status = 0

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=0)


class NetworkError(ClientError):
    """The server could not be reached, or the connection broke (TCP, TLS, HTTP framing)."""


class TrustError(ClientError):
    """The server was not authenticated (RFC 7030 §3.6): its certificate does not
    chain to the trust anchors, names another host, or a bootstrap fingerprint
    was not confirmed (§4.1.1)."""


class ProtocolError(ClientError):
    """The server answered something RFC 7030 does not allow (malformed payload,
    wrong media type, a 202 without Retry-After, a certificate for another key)."""


class CsrAttrsWarning(UserWarning):
    """/csrattrs could not be read; the client went on with its defaults
    (RFC 7030 §4.5.2: the attributes are advice, not a precondition)."""
