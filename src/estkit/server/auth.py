"""Authentication on the transport: HTTP Basic and TLS client certificates.

The handshake already verified a client certificate against our CAs and the
bootstrap anchors; here it is mapped to an identity by the CA (store lookup:
issued here and not revoked).  Credentials are only ever accepted over TLS.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from cryptography import x509

from estkit.server.ports import EstAuthority
from estkit.ca.identity import ANONYMOUS, Identity, RequestContext
from estkit.errors import BadRequest, EstError, ServiceUnavailable, Unauthorized
from estkit.server.authaudit import AuthFailureLog
from estkit.server.http import HttpRequest
from estkit.server.throttle import FailureThrottle, Rule, address_of

__all__ = ["CLIENT_PEER", "FORWARDED_TLS", "basic_credentials", "Authenticator", "Presented",
           "ExtraAuth", "ChallengeHook"]

# A hook that can authenticate a request by other means (HTTP Digest), given the
# request and its CA label: an identity, None when the request carries no such
# credentials, or Unauthorized (whose challenges, if any, replace the hook's usual ones).
ExtraAuth = Callable[[HttpRequest, str | None], Awaitable[Identity | None]]
# More WWW-Authenticate challenges for a label (Digest), sent before Basic's: a
# label that turns Digest on prefers it, and clients that read only the first
# challenge (Bouncy Castle) then use it.
ChallengeHook = Callable[[str | None], list[str]]


# Set on a request by the proxy listener (server/proxied.py): the client's ip:port,
# and the client's TLS facts as the TLS-terminating proxy forwarded them.
CLIENT_PEER = "estkit.client_peer"
FORWARDED_TLS = "estkit.forwarded_tls"


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
    # The Basic attempt took its throttle tokens in advance (given back if it verifies).
    reserved: bool = False


class Authenticator:
    """Turns a request's credentials into a :class:`RequestContext`."""

    def __init__(self, ca: EstAuthority, realm: str, throttle: FailureThrottle | None = None) -> None:
        self.ca = ca
        self.realm = realm
        self.extra: list[ExtraAuth] = []
        self.challenges: list[str] = [f'Basic realm="{realm}", charset="UTF-8"']
        self.challenge_hooks: list[ChallengeHook] = []
        self.throttle = throttle or FailureThrottle(Rule("auth_address_failures_per_minute", 10),
                                                    Rule("auth_user_failures_per_minute", 30))
        self.failures = AuthFailureLog(ca.record)
        self._flusher: asyncio.Task[None] | None = None

    # -- failed authentication: throttle and audit ------------------------------------------

    def check_password_attempt(self, peer: str, user: str, label: str | None, *, reserve: bool = False) -> None:
        """429 before any verification while the address or the user name is
        throttled; with ``reserve`` the attempt takes its tokens now (see
        FailureThrottle.attempt)."""
        blocked = self.throttle.attempt(peer, user) if reserve else self.throttle.check(peer, user)
        if blocked is not None:
            self.failures.record(blocked.who, address_of(peer), f"throttled by server.{blocked.rule.key}", label)
            raise blocked.error()

    def password_failed(self, peer: str, user: str, reason: str, label: str | None, *, counted: bool = False) -> None:
        """Count a wrong password (Basic or Digest) for the throttle (unless its
        attempt was ``counted`` in advance) and the audit trail."""
        if not counted:
            self.throttle.failed(peer, user)
        self.failures.record(f"user:{user}", address_of(peer), reason, label)

    def certificate_refused(self, peer: str, der: bytes, reason: str, label: str | None) -> None:
        """Audit a client certificate the CA refused (not ours, revoked, expired...)."""
        try:
            who = "cert:" + x509.load_der_x509_certificate(der).subject.rfc4514_string()
        except ValueError:
            who = "cert:?"
        self.failures.record(who, address_of(peer), reason, label)

    async def on_startup(self, _app: web.Application) -> None:
        """Write the aggregated auth-failed events once a minute (aiohttp startup signal)."""
        self._flusher = asyncio.create_task(self._flush_every_minute())

    async def on_cleanup(self, _app: web.Application) -> None:
        """Stop the writer and write what is left (aiohttp cleanup signal)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await asyncio.get_running_loop().run_in_executor(None, lambda: self.failures.flush(everything=True))

    async def _flush_every_minute(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(61 - time.time() % 60)  # just after each minute ends
            await loop.run_in_executor(None, self.failures.flush)

    def challenges_for(self, label: str | None) -> tuple[str, ...]:
        """Every WWW-Authenticate value for a label: the hooks' (Digest), then Basic."""
        return (*(ch for hook in self.challenge_hooks for ch in hook(label)), *self.challenges)

    def presented(self, request: HttpRequest, label: str | None = None) -> Presented:
        """What the request presents, read on the event loop (no store access)."""
        tls = request.tls  # the connection's, or what a trusted TLS-terminating proxy forwarded
        p = Presented(peer=request.peer, label=label, tls=tls is not None)
        if tls is not None:
            p.tls_version, p.tls_unique, p.cert_der = tls.version, tls.unique, tls.cert_der
        p.basic = basic_credentials(request.headers.get("Authorization"))
        if p.basic is not None and not p.tls:
            raise Unauthorized("credentials are accepted only over TLS", challenges=self.challenges_for(label))
        if p.basic is not None:
            # Credentials this process verified lately are a known device's: not
            # counted.  Others take their tokens now, so that a burst of guesses
            # cannot start more verifications (16 MiB, 0.2-0.4 s each) than the limit.
            p.reserved = not self.ca.recently_verified(*p.basic)
            self.check_password_attempt(p.peer, p.basic[0], label, reserve=p.reserved)
        return p

    def deferrable(self, p: Presented) -> bool:
        """True when only the store decides (a client certificate, Basic
        credentials, no Digest hook to run): the server then authenticates in
        the thread that runs the operation, one hand-over instead of two."""
        return (p.cert_der is not None or p.basic is not None) and (p.basic is not None or not self.extra)

    def verify(self, p: Presented) -> tuple[Identity | None, Identity | None]:
        """Blocking (store): the client certificate's identity, then the Basic user's."""
        cert_identity: Identity | None = None
        if p.cert_der is not None:
            try:
                cert_identity = self.ca.identify_certificate(p.cert_der)
            except EstError as exc:
                self.certificate_refused(p.peer, p.cert_der, exc.reason, p.label)
                raise
        user: Identity | None = None
        if p.basic is not None:
            try:
                user = self.ca.authenticate_user(*p.basic)
            except Unauthorized as exc:
                self.password_failed(p.peer, p.basic[0], exc.reason, p.label, counted=p.reserved)
                raise Unauthorized(exc.reason, challenges=self.challenges_for(p.label)) from None
            except ServiceUnavailable:
                if p.reserved:  # not verified at all (the store is down): not a failure
                    self.throttle.refund(p.peer, p.basic[0])
                raise
            if p.reserved:
                self.throttle.refund(p.peer, p.basic[0])
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

    async def context(self, request: HttpRequest, *, require: bool, label: str | None = None,
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
