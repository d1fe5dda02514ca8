"""Bootstrap distribution of CA certificates (RFC 7030 §4.1.1).

Without trust anchors, ``/cacerts`` may be fetched over an unauthenticated
TLS connection; the answer is accepted only when a person (or a value they
provisioned) confirms the CA's SHA-256 fingerprint, and then becomes the
Explicit trust anchor.  No credentials are sent meanwhile.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = ["BootstrapOffer", "Confirm", "sha256_fingerprint", "confirm_fingerprint", "normalise_fingerprint"]


def sha256_fingerprint(cert: x509.Certificate) -> str:
    """``AB:CD:...``: SHA-256 of the DER certificate, as ``openssl x509 -fingerprint -sha256`` prints it."""
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def normalise_fingerprint(text: str) -> str:
    """A fingerprint as bare upper-case hex (``sha256:``/``SHA256=`` prefixes, colons and spaces dropped)."""
    t = text.strip()
    for prefix in ("sha256:", "sha256=", "sha256 fingerprint="):
        if t.lower().startswith(prefix):
            t = t[len(prefix):]
    return "".join(ch for ch in t if ch not in ": \t").upper()


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
        return True
    except Exception:  # any failure: not self-signed
        return False


@dataclass(frozen=True)
class BootstrapOffer:
    """What an unauthenticated /cacerts returned: every certificate, and the
    trust anchors among them (the self-signed ones; all of them if none is)."""

    certificates: tuple[x509.Certificate, ...]

    @property
    def anchors(self) -> tuple[x509.Certificate, ...]:
        roots = tuple(c for c in self.certificates if _self_signed(c))
        return roots or self.certificates

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """SHA-256 fingerprints of the anchors, to show to a person."""
        return tuple(sha256_fingerprint(c) for c in self.anchors)


Confirm = Callable[[BootstrapOffer], bool]


def confirm_fingerprint(expected: str | Sequence[str]) -> Confirm:
    """A confirmation that accepts the offer when an anchor has one of the expected fingerprints."""
    want = {normalise_fingerprint(e) for e in ([expected] if isinstance(expected, str) else expected)}

    def confirm(offer: BootstrapOffer) -> bool:
        return any(normalise_fingerprint(f) in want for f in offer.fingerprints)

    return confirm
