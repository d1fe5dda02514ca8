"""Who is asking: the identity the server authenticated, as the CA sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from cryptography import x509

__all__ = ["IdentityKind", "Identity", "RequestContext", "ANONYMOUS"]


class IdentityKind(str, Enum):
    """How the requester authenticated."""

    ANONYMOUS = "anonymous"
    USER = "user"            # HTTP Basic (or Digest) user of the store
    CERT = "cert"            # TLS client certificate issued by this CA, not revoked
    BOOTSTRAP = "bootstrap"  # TLS client certificate from a configured bootstrap trust anchor


@dataclass(frozen=True)
class Identity:
    """An authenticated requester.

    ``name`` is the user name, or the certificate subject (RFC 4514) for
    certificate identities; ``is_ra`` marks an RA certificate (EKU id-kp-cmcRA
    issued by this CA, RFC 7030 §3.7)."""

    kind: IdentityKind
    name: str
    certificate: x509.Certificate | None = field(default=None, compare=False)
    is_ra: bool = False
    policy: dict[str, object] | None = field(default=None, compare=False)
    one_time: bool = False

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.name}" if self.kind != IdentityKind.ANONYMOUS else "-"


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
