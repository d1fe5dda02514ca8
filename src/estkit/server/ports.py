"""What the HTTP server needs of the certificate authority, declared where it
is consumed (as smallstep's ``scep/authority.go`` does): one method per EST
operation it serves itself, and authentication.  ``CertificateAuthority``
implements it; a test may hand the server anything else that does (tests/fakeca.py)."""

from __future__ import annotations

from typing import Protocol

from cryptography import x509

from estkit.ca.identity import Identity, RequestContext
from estkit.ca.ports import AuditEvent, UserRecord
from estkit.ca.profile import Profile
from estkit.protocol.request import CertRequest

__all__ = ["EstAuthority"]


class EstAuthority(Protocol):
    """The CA as the server sees it."""

    def profile(self, label: str | None) -> Profile:
        """The label's profile; NotFound for an unknown label (RFC 7030 §3.2.2)."""

    def cacerts(self, label: str | None) -> bytes:
        """RFC 7030 §4.1: the certs-only DER."""

    def csrattrs(self, label: str | None) -> bytes | None:
        """RFC 7030 §4.5: the CsrAttrs DER, None when empty (204)."""

    def simpleenroll(self, label: str | None, request: CertRequest, ctx: RequestContext) -> x509.Certificate:
        """RFC 7030 §4.2.1: the request as the server decoded it."""

    def simplereenroll(self, label: str | None, request: CertRequest, ctx: RequestContext) -> x509.Certificate:
        """RFC 7030 §4.2.2."""

    def identify_certificate(self, der: bytes) -> Identity:
        """A TLS client certificate's identity (the handshake verified its chain)."""

    def authenticate_user(self, name: str, password: str) -> Identity:
        """HTTP Basic; Unauthorized when wrong."""

    def recently_verified(self, name: str, password: str) -> bool:
        """These credentials verified in this process a moment ago."""

    def user_identity(self, user: UserRecord) -> Identity:
        """The identity of a user whose credentials another scheme (Digest) verified."""

    def find_user(self, name: str) -> UserRecord | None:
        """A user's record (HTTP Digest needs its stored HA1)."""

    def record(self, event: AuditEvent) -> None:
        """Append to the audit trail (failed authentications)."""
