"""Who is asking: the identity the server authenticated, as the CA sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from cryptography import x509

from estkit.ca.rules import Policy

__all__ = ["IdentityKind", "Identity", "Enrollee", "RequestContext", "ANONYMOUS"]


class IdentityKind(str, Enum):
    """How the requester authenticated."""

    ANONYMOUS = "anonymous"
    USER = "user"            # HTTP Basic (or Digest) user of the store
    CERT = "cert"            # TLS client certificate issued by this CA, not revoked
    BOOTSTRAP = "bootstrap"  # TLS client certificate from a configured bootstrap trust anchor
    CMC = "cmc"              # full CMC identityProofV2 with a label's shared secret (RFC 5272 §6.2)


@dataclass(frozen=True)
class Enrollee:
    """Who obtained a certificate: the identity at the start of its chain of
    renewals, as the store knows it now.  A certificate carries its enrollee's
    authority, never more (docs/policy.md).

    ``name`` is ``user:NAME``, ``bootstrap:SUBJECT`` or ``cmc:ID``, or "" when
    unknown (issued before estkit recorded it); ``user`` is that user as it
    would authenticate now (its policy bounds the certificate); ``lost`` says
    why the enrollee's certificates may no longer enroll (the user was
    disabled, removed or has expired), None when they may."""

    name: str
    user: Identity | None = None
    lost: str | None = None


@dataclass(frozen=True)
class Identity:
    """An authenticated requester.

    ``name`` is the user name, or the certificate subject (RFC 4514) for
    certificate identities.  For a certificate issued here, ``label`` is the
    label it was issued under and ``enrollee`` who obtained it; ``ra_eku``
    marks the extended key usage id-kp-cmcRA (RFC 7030 §3.7), and ``is_ra``
    whether a policy grants that certificate RA powers (the EKU alone never
    does).  A user's ``policy`` is its own, from the store."""

    kind: IdentityKind
    name: str
    certificate: x509.Certificate | None = field(default=None, compare=False)
    is_ra: bool = False
    policy: Policy | None = field(default=None, compare=False)
    one_time: bool = False
    ra_eku: bool = False
    label: str | None = None
    enrollee: Enrollee | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.name}" if self.kind != IdentityKind.ANONYMOUS else "-"

    @property
    def enrollee_name(self) -> str:
        """What a certificate issued at this identity's request records as its
        enrollee: the identity itself, or for a certificate (renewal, RA) the
        enrollee of that certificate, so a chain of renewals keeps the first."""
        if self.kind == IdentityKind.CERT:
            return self.enrollee.name if self.enrollee is not None else ""
        return str(self) if self.kind != IdentityKind.ANONYMOUS else ""


ANONYMOUS = Identity(IdentityKind.ANONYMOUS, "")


@dataclass(frozen=True)
class RequestContext:
    """What the transport knows about a request that the CA's policy needs.

    ``identity`` is the one enrollment is attributed to (the Basic user when
    there is one, else the client certificate); ``client_cert`` is the TLS
    client certificate's identity when one was presented (a request may prove
    both).  ``tls_unique`` is the session's tls-unique value and
    ``tls_version`` its protocol (RFC 7030 §3.5 linking)."""

    identity: Identity = ANONYMOUS
    client_cert: Identity | None = None
    peer: str = ""
    tls_unique: bytes | None = None
    tls_version: str | None = None
