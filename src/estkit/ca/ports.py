"""What the CA needs from storage, declared here and implemented in ``estkit.store``.

The CA never imports SQL: it talks to these protocols only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from estkit.errors import ServiceUnavailable

__all__ = ["IssuedCert", "StoredCert", "UserRecord", "AuditEvent", "PendingRequest", "CrlRecord", "CertStore",
           "UserStore", "AuditLog", "PendingStore", "CrlStore", "ClaimStore", "Store", "StoreError", "StoreUnavailable", "Conflict",
           "IssueGuard", "GuardFailed", "Claim", "PendingStatus", "utc_now", "CertStatus", "CertQuery",
           "AuditEventType"]


def utc_now() -> datetime:
    """The system clock in UTC.  The CA and the store take a clock; wire the
    same one into both (estkit.cli.wiring), so a fake clock in a test moves
    expiry, rate windows and recorded times together."""
    return datetime.now(UTC)


class StoreError(Exception):
    """The store failed to read or write: the caller must not go on as if it had."""


class StoreUnavailable(StoreError, ServiceUnavailable):
    """The database cannot be reached now (down, restarting, every pooled
    connection busy): a 503 with Retry-After, not a 500; nothing was recorded
    as far as the caller knows, so nothing may be handed out."""

    def __init__(self, reason: str, *, retry_after: int = 2) -> None:
        ServiceUnavailable.__init__(self, reason, retry_after=retry_after)


class Conflict(StoreError):
    """A write collided with an existing row (e.g. duplicate serial or user)."""


class GuardFailed(StoreError):
    """An :class:`IssueGuard` refused the issuance; ``rule`` names what failed
    (``one-time``, ``once`` or ``rate``).  Nothing was recorded."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.rule = rule
        self.reason = reason


@dataclass(frozen=True)
class IssueGuard:
    """Conditions checked in the transaction that records a certificate (see
    ``estkit.ca.authz``), so concurrent requests on any number of processes or
    nodes cannot get around them."""

    consume_user: str | None = None   # a one-time user, marked used by this issuance
    claim: str | None = None          # a once-only claim key, taken by this issuance
    rate_count: int | None = None     # at most this many certificates of the requester ...
    rate_seconds: int = 0             # ... issued within this many seconds (this one included)
    policy: str = ""                  # the policy that asked (for the refusal's reason)


@dataclass(frozen=True)
class Claim:
    """A once-only enrollment that has been used (e.g. a bootstrap certificate)."""

    key: str
    identity: str
    at: datetime
    serial: int | None = None


@dataclass(frozen=True)
class IssuedCert:
    """What is recorded for every issued certificate, before it is returned."""

    serial: int
    ca: str
    label: str
    subject: str
    sans: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    requester: str
    key_type: str
    csr_fingerprint: str
    der: bytes
    # Who obtained the first certificate of this one's chain of renewals
    # (Identity.enrollee_name): its authority bounds this certificate's.
    enrollee: str = ""


@dataclass(frozen=True)
class StoredCert:
    """A certificate as the store has it, with its revocation state."""

    serial: int
    ca: str
    label: str
    subject: str
    sans: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    requester: str
    der: bytes
    issued_at: datetime
    revoked_at: datetime | None = None
    revocation_reason: str | None = None
    enrollee: str = ""  # "" when unknown (issued before estkit recorded it)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class UserRecord:
    """An HTTP Basic identity: a salted slow hash, never the password.

    ``one_time`` users authenticate one successful enrollment (``used_at`` set
    afterwards); ``policy`` is the identity's authorization rules as a JSON-able
    mapping (see ``estkit.ca.authz``)."""

    name: str
    password_hash: str
    created_at: datetime
    one_time: bool = False
    expires_at: datetime | None = None
    used_at: datetime | None = None
    disabled: bool = False
    policy: dict[str, object] | None = None
    # RFC 7616 HTTP Digest: H(user:realm:password) per algorithm, stored only when
    # Digest is wanted for the user (it is password-equivalent for Digest).
    digest_ha1: dict[str, str] | None = None


class AuditEventType(StrEnum):
    """Every kind of audit event, named once (``estkit audit --event`` offers these)."""

    ISSUED = "issued"
    REFUSED = "refused"
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    REVOKED = "revoked"
    UNREVOKED = "unrevoked"  # a certificateHold released (RFC 5280 §5.3.1)
    ROLLOVER = "rollover"
    # Failed logins and refused client certificates, aggregated per identity,
    # reason and minute (estkit.server.authaudit).
    AUTH_FAILED = "auth-failed"


@dataclass(frozen=True)
class AuditEvent:
    """One recorded decision (issued, refused, pending, approved, rejected, revoked...)."""

    event: str  # an AuditEventType value
    identity: str
    peer: str
    label: str
    csr_fingerprint: str | None = None
    serial: int | None = None
    detail: str = ""
    at: datetime | None = None
    id: int | None = None


class PendingStatus(StrEnum):
    """Where a request held for manual approval (RFC 7030 §4.2.3) stands."""

    PENDING = "pending"      # waiting for an operator
    APPROVED = "approved"    # the next retry issues it
    REJECTED = "rejected"    # every retry gets 403 with the operator's reason
    ISSUING = "issuing"      # a retry claimed it and is issuing (concurrent retries wait)
    ISSUED = "issued"        # a retry gets the same certificate again
    EXPIRED = "expired"      # not decided in time; the next retry opens a new request


@dataclass(frozen=True)
class PendingRequest:
    """An enrollment waiting for an operator (RFC 7030 §4.2.3)."""

    id: int
    identity: str
    label: str
    operation: str
    csr_fingerprint: str
    csr_der: bytes
    status: PendingStatus
    created_at: datetime
    decided_at: datetime | None = None
    reason: str = ""
    serial: int | None = None
    # What is asked for (CsrInfo.request_fingerprint): how retries find the request.
    request_key: str | None = None


@dataclass(frozen=True)
class CrlRecord:
    """The current CRL of one CA: its CRL number, validity and DER."""

    ca: str
    number: int
    this_update: datetime
    next_update: datetime
    der: bytes


class CertStatus(StrEnum):
    """A certificate's state for the inventory."""

    VALID = "valid"      # not revoked, not expired
    REVOKED = "revoked"
    EXPIRED = "expired"  # past notAfter (revoked or not)


@dataclass(frozen=True)
class CertQuery:
    """Which certificates to list (every field that is set must match)."""

    label: str | None = None
    requester: str | None = None
    status: CertStatus | None = None
    expiring_before: datetime | None = None  # valid, with notAfter before this


class CertStore(Protocol):
    """Issued certificates."""

    def record_issued(self, cert: IssuedCert, audit: AuditEvent | None = None,
                      guard: IssueGuard | None = None) -> None:
        """Write the certificate (and its audit event, in the same transaction)
        durably; raise StoreError if that failed, Conflict on a duplicate serial,
        GuardFailed (nothing written) when ``guard`` refuses."""

    def get_certificate(self, serial: int) -> StoredCert | None:
        """The certificate with this serial, or None."""

    def serial_exists(self, serial: int) -> bool:
        """True if a certificate with this serial was ever recorded."""

    def revoke(self, serial: int, reason: str, at: datetime) -> StoredCert | None:
        """Mark revoked (first revocation wins); None if there is no such serial."""

    def change_revocation(self, serial: int, *, expected_reason: str, reason: str | None) -> StoredCert | None:
        """Compare-and-set a revoked certificate's reason (the revocation time stays);
        ``reason`` None makes it valid again.  None when its reason was not ``expected_reason``."""

    def list_revoked(self, ca: str) -> list[StoredCert]:
        """Every revoked certificate of one CA (for its CRL)."""

    def list_certificates(self, *, limit: int | None = 100, offset: int = 0,
                          query: CertQuery | None = None) -> list[StoredCert]:
        """Issued certificates, newest first, those ``query`` selects (all when None)."""

    def count_certificates(self) -> int:
        """How many certificates the store holds."""


class UserStore(Protocol):
    """HTTP Basic identities."""

    def add_user(self, user: UserRecord) -> None:
        """Add a user; Conflict if the name exists."""

    def get_user(self, name: str) -> UserRecord | None:
        """The user, or None."""

    def list_users(self) -> list[UserRecord]:
        """Every user, by name."""

    def update_user(self, user: UserRecord) -> None:
        """Replace a user's record."""

    def remove_user(self, name: str) -> bool:
        """Remove; False if there was no such user."""

    def consume_one_time(self, name: str, at: datetime) -> bool:
        """Atomically mark a one-time user used; False if it already was."""

    def replace_password_hash(self, name: str, old: str, new: str) -> bool:
        """Set the user's password hash to ``new`` only if it is still ``old``
        (nothing else of the row is touched); False otherwise."""


class AuditLog(Protocol):
    """The decision record."""

    def audit(self, event: AuditEvent) -> None:
        """Append one event."""

    def list_audit(self, *, limit: int = 100, event: str | None = None, identity: str | None = None,
                   label: str | None = None, since: datetime | None = None,
                   serial: int | None = None) -> list[AuditEvent]:
        """Recent events, newest first, optionally filtered."""


class ClaimStore(Protocol):
    """Once-only enrollments that were used (``IssueGuard.claim``)."""

    def list_claims(self) -> list[Claim]:
        """Every taken claim, newest first."""

    def remove_claim(self, key: str) -> bool:
        """Allow the claim's enrollment again; False if there was none."""


class PendingStore(Protocol):
    """Requests held for manual approval."""

    def add_pending(self, identity: str, label: str, operation: str, fingerprint: str,
                    csr_der: bytes, at: datetime, request_key: str | None = None) -> PendingRequest:
        """Store a new pending request, or return the pending one for the same
        identity, label and request (``request_key``, else CSR fingerprint)."""

    def find_pending(self, identity: str, label: str, fingerprint: str,
                     request_key: str | None = None) -> PendingRequest | None:
        """The latest request for this identity, label and request: same
        ``request_key`` (a row stored without one: same CSR fingerprint)."""

    def get_pending(self, id: int) -> PendingRequest | None:
        """By id."""

    def list_pending(self, status: PendingStatus | None = None) -> list[PendingRequest]:
        """All, or those in one status."""

    def decide_pending(self, id: int, status: PendingStatus, reason: str, at: datetime,
                       serial: int | None = None, expected: PendingStatus | None = None) -> bool:
        """Set a request's status (only if it is ``expected`` when given)."""


class CrlStore(Protocol):
    """The published CRL of each CA (RFC 5280 §5), with its persisted CRL number."""

    def get_crl(self, ca: str) -> CrlRecord | None:
        """The current CRL of a CA, or None if none was made yet."""

    def put_crl(self, crl: CrlRecord, previous_number: int | None) -> bool:
        """Replace the CA's CRL only if the stored number is still ``previous_number``
        (None: no CRL yet).  False when another process got there first."""

    def publish_crl(self, ca: str, build: Callable[[int], CrlRecord]) -> CrlRecord:
        """One signer at a time, across processes and nodes: holding the CA's
        CRL lock, ``build`` the CRL with the next number and store it.  A CRL
        built after a revocation was committed lists it, and is published
        after every CRL built before it."""


class Store(CertStore, UserStore, AuditLog, PendingStore, CrlStore, ClaimStore, Protocol):
    """Everything the CA and the server need from storage."""
