"""Errors that carry their HTTP status.

The server turns an :class:`EstError` into its status and a one-line
``text/plain`` reason; the client rebuilds the same type from a response
(see :func:`error_for_status`).  Anything that is not an ``EstError`` is a bug
and becomes a logged 500 with no detail.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "FailInfo",
    "EstError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "MethodNotAllowed",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "Pending",
    "TooManyRequests",
    "InternalError",
    "ServiceUnavailable",
    "error_for_status",
]


class FailInfo(IntEnum):
    """RFC 5272 §6.1.4 CMCFailInfo: how a full CMC response (RFC 7030 §4.3)
    names the reason of a failure."""

    BAD_ALG = 0
    BAD_MESSAGE_CHECK = 1
    BAD_REQUEST = 2
    BAD_TIME = 3
    BAD_CERT_ID = 4
    UNSUPPORTED_EXT = 5
    MUST_ARCHIVE_KEYS = 6
    BAD_IDENTITY = 7
    POP_REQUIRED = 8
    POP_FAILED = 9
    NO_KEY_REUSE = 10
    INTERNAL_CA_ERROR = 11
    TRY_LATER = 12
    AUTH_DATA_FAIL = 13

    @property
    def rfc_name(self) -> str:
        """The name RFC 5272 gives it: ``badIdentity``."""
        head, *rest = self.name.lower().split("_")
        return head + "".join(w.upper() if w == "ca" else w.capitalize() for w in rest)


class EstError(Exception):
    """Base of every error estkit reports to a peer.

    ``status`` is the HTTP status, ``reason`` a one-line human-readable text
    (RFC 8951 §5: error bodies are ``text/plain``), ``retry_after`` seconds
    where the status wants a ``Retry-After`` header.  ``fail_info`` is what a
    full CMC response reports for it (each class has its default; a rule that
    RFC 5272 names more precisely, e.g. popFailed, sets its own), and
    ``body_parts`` the bodyPartIDs of the CMC request it is about.
    """

    status: int = 500
    fail_info: FailInfo = FailInfo.INTERNAL_CA_ERROR

    def __init__(self, reason: str, *, retry_after: int | None = None, status: int | None = None,
                 fail_info: FailInfo | None = None, body_parts: tuple[int, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = " ".join(reason.split()) or "error"
        self.retry_after = retry_after
        if status is not None:
            self.status = status
        if fail_info is not None:
            self.fail_info = fail_info
        elif status is not None and 400 <= status < 500:
            self.fail_info = FailInfo.BAD_REQUEST
        self.body_parts = body_parts

    def in_parts(self, *body_parts: int) -> EstError:
        """This error, about these CMC body parts (when it names none yet)."""
        if not self.body_parts:
            self.body_parts = body_parts
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.reason!r})"


class BadRequest(EstError):
    """400: the request's data is malformed or breaks a rule of the RFC."""

    status = 400
    fail_info = FailInfo.BAD_REQUEST


class Unauthorized(EstError):
    """401: no credentials, or wrong ones.  ``challenges`` are the
    ``WWW-Authenticate`` values the server sends with it; ``empty_body`` marks
    the bare challenge to a request that sent no credentials (Bouncy Castle
    fails on a 401 with a body, interop-notes)."""

    status = 401
    fail_info = FailInfo.BAD_IDENTITY

    def __init__(self, reason: str, *, challenges: tuple[str, ...] = (), empty_body: bool = False,
                 fail_info: FailInfo | None = None, body_parts: tuple[int, ...] = ()) -> None:
        super().__init__(reason, fail_info=fail_info, body_parts=body_parts)
        self.challenges = challenges
        self.empty_body = empty_body


class Forbidden(EstError):
    """403: authenticated, but not allowed to do this."""

    status = 403
    fail_info = FailInfo.BAD_IDENTITY


class NotFound(EstError):
    """404: unknown path, operation or CA label."""

    status = 404
    fail_info = FailInfo.BAD_REQUEST


class MethodNotAllowed(EstError):
    """405: the operation exists but not with this HTTP method."""

    status = 405
    fail_info = FailInfo.BAD_REQUEST

    def __init__(self, reason: str, *, allowed: tuple[str, ...] = ()) -> None:
        super().__init__(reason, fail_info=FailInfo.BAD_REQUEST)
        self.allowed = allowed


class PayloadTooLarge(EstError):
    """413: the request body is over the configured limit."""

    status = 413
    fail_info = FailInfo.BAD_REQUEST


class UnsupportedMediaType(EstError):
    """415: the request's Content-Type is not the one the operation takes."""

    status = 415
    fail_info = FailInfo.BAD_REQUEST


class Pending(EstError):
    """202: accepted but not yet decided (RFC 7030 §4.2.3); the client
    retries after ``retry_after`` seconds with the same request."""

    status = 202
    fail_info = FailInfo.TRY_LATER

    def __init__(self, reason: str, *, retry_after: int, body_parts: tuple[int, ...] = ()) -> None:
        super().__init__(reason, retry_after=retry_after, body_parts=body_parts)


class TooManyRequests(EstError):
    """429 (RFC 6585 §4): too many failed authentications from this address or
    for this user name; ``retry_after`` seconds until the next attempt is heard.
    The reason names the rule (the configuration key)."""

    status = 429

    def __init__(self, reason: str, *, retry_after: int | None = None) -> None:
        super().__init__(reason, retry_after=retry_after)


class InternalError(EstError):
    """500: the server failed (e.g. the store could not record a certificate)."""

    status = 500


class ServiceUnavailable(EstError):
    """503: temporarily unable; may carry ``Retry-After``."""

    status = 503
    fail_info = FailInfo.TRY_LATER


_BY_STATUS: dict[int, type[EstError]] = {
    cls.status: cls
    for cls in (BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed,
                PayloadTooLarge, UnsupportedMediaType, TooManyRequests, InternalError, ServiceUnavailable)
}


def error_for_status(status: int, reason: str, retry_after: int | None = None) -> EstError:
    """Rebuild the error type for an HTTP status received from a server."""
    if status == 202:
        return Pending(reason, retry_after=retry_after if retry_after is not None else 0)
    cls = _BY_STATUS.get(status)
    if cls is None:
        return EstError(reason, retry_after=retry_after, status=status)
    if cls in (Unauthorized, MethodNotAllowed):
        return cls(reason)
    return cls(reason, retry_after=retry_after)
