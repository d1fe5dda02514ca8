"""Authentication on the transport: HTTP Basic and TLS client certificates.

The handshake already verified a client certificate against our CAs and the
bootstrap anchors; here it is mapped to an identity by the CA (store lookup:
issued here and not revoked).  Credentials are only ever accepted over TLS.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from estkit.ca.authority import CertificateAuthority
from estkit.ca.identity import ANONYMOUS, Identity, RequestContext
from estkit.errors import BadRequest, Unauthorized

__all__ = ["ssl_object", "peer_of", "basic_credentials", "Authenticator", "Presented", "ExtraAuth", "ChallengeHook"]

# A hook that can authenticate a request by other means (HTTP Digest), given the
# request and its CA label: an identity, None when the request carries no such
# credentials, or Unauthorized (whose challenges, if any, replace the hook's usual ones).
ExtraAuth = Callable[[web.Request, str | None], Awaitable[Identity | None]]
# More WWW-Authenticate challenges for a label (Digest), sent before Basic's: a
# label that turns Digest on prefers it, and clients that read only the first
# challenge (Bouncy Castle) then use it.
ChallengeHook = Callable[[str | None], list[str]]


def ssl_object(request: web.Request) -> ssl.SSLObject | None:
    """The request's TLS object (None on a plain connection)."""
    transport = request.transport
    return transport.get_extra_info("ssl_object") if transport is not None else None


def peer_of(request: web.Request) -> str:
    """The peer's address, ``ip:port``."""
    transport = request.transport
    peer: Any = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "-"


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` from an ``Authorization: Basic`` header, None if
    there is no Basic header; BadRequest when it is malformed."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("malformed Basic Authorization header") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise BadRequest("malformed Basic Authorization header")
    return user, password


@dataclass
class Presented:
    """A request's credentials as read from the connection and headers."""

    peer: str
    label: str | None
    tls: bool
    tls_version: str | None = None
    tls_unique: bytes | None = None
    cert_der: bytes | None = None
    basic: tuple[str, str] | None = None


class Authenticator:
    """Turns a request's credentials into a :class:`RequestContext`."""

    def __init__(self, ca: CertificateAuthority, realm: str) -> None:
        self.ca = ca
        self.realm = realm
        self.extra: list[ExtraAuth] = []
        self.challenges: list[str] = [f'Basic realm="{realm}", charset="UTF-8"']
        self.challenge_hooks: list[ChallengeHook] = []

    def challenges_for(self, label: str | None) -> tuple[str, ...]:
        """Every WWW-Authenticate value for a label: the hooks' (Digest), then Basic."""
        return (*(ch for hook in self.challenge_hooks for ch in hook(label)), *self.challenges)

    def presented(self, request: web.Request, label: str | None = None) -> Presented:
        """What the request presents, read on the event loop (no store access)."""
        sslobj = ssl_object(request)
        p = Presented(peer=peer_of(request), label=label, tls=sslobj is not None)
        if sslobj is not None:
            p.tls_version = sslobj.version()
            p.tls_unique = sslobj.get_channel_binding("tls-unique")
            p.cert_der = sslobj.getpeercert(binary_form=True) or None
        p.basic = basic_credentials(request.headers.get("Authorization"))
        if p.basic is not None and sslobj is None:
            raise Unauthorized("credentials are accepted only over TLS", challenges=self.challenges_for(label))
        return p

    def deferrable(self, p: Presented) -> bool:
        """True when only the store decides (a client certificate, Basic
        credentials, no Digest hook to run): the server then authenticates in
        the thread that runs the operation, one hand-over instead of two."""
        return (p.cert_der is not None or p.basic is not None) and (p.basic is not None or not self.extra)

    def verify(self, p: Presented) -> tuple[Identity | None, Identity | None]:
        """Blocking (store): the client certificate's identity, then the Basic user's."""
        cert_identity = self.ca.identify_certificate(p.cert_der) if p.cert_der is not None else None
        user: Identity | None = None
        if p.basic is not None:
            try:
                user = self.ca.authenticate_user(*p.basic)
            except Unauthorized as exc:
                raise Unauthorized(exc.reason, challenges=self.challenges_for(p.label)) from None
        return cert_identity, user

    def decide(self, p: Presented, cert_identity: Identity | None, user: Identity | None, *,
               require: bool) -> RequestContext:
        """The context; with ``require``, 401 and the challenges when nobody is authenticated."""
        primary = user or cert_identity or ANONYMOUS
        if require and primary is ANONYMOUS:
            raise Unauthorized("authentication required: HTTP Basic or a TLS client certificate",
                               challenges=self.challenges_for(p.label), empty_body=True)
        return RequestContext(identity=primary, client_cert=cert_identity, peer=p.peer,
                              tls_unique=p.tls_unique, tls_version=p.tls_version)

    def context_blocking(self, p: Presented, *, require: bool) -> RequestContext:
        """``context`` for a ``deferrable`` request, in a worker thread."""
        cert_identity, user = self.verify(p)
        return self.decide(p, cert_identity, user, require=require)

    async def context(self, request: web.Request, *, require: bool, label: str | None = None,
                      presented: Presented | None = None) -> RequestContext:
        """Authenticate.  With ``require``, a request with neither credentials
        nor a client certificate gets 401 and the challenges."""
        p = presented if presented is not None else self.presented(request, label)
        cert_identity: Identity | None = None
        user: Identity | None = None
        if p.cert_der is not None or p.basic is not None:
            cert_identity, user = await asyncio.get_running_loop().run_in_executor(None, self.verify, p)
        if p.basic is None and p.tls:
            for hook in self.extra:
                try:
                    user = await hook(request, label)
                except Unauthorized as exc:
                    challenges = (*exc.challenges, *self.challenges) if exc.challenges else self.challenges_for(label)
                    raise Unauthorized(exc.reason, challenges=challenges) from None
                if user is not None:
                    break
        return self.decide(p, cert_identity, user, require=require)
