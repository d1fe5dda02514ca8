"""One certification request, whatever the wire format it came in.

PKCS#10 (RFC 2986, the body of /simpleenroll, /simplereenroll and
/serverkeygen, and a ``tcr`` of full CMC) and CRMF (RFC 4211, a ``crm`` of
full CMC) ask for the same things.  protocol/ turns either into a
:class:`CertRequest`, and the CA's policy reads only that: it never learns
which format a request came in.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from estkit.protocol.cmc_crmf import CrmfRequest
from estkit.protocol.csr import CsrInfo, csr_fingerprint, load_csr, request_fingerprint
from estkit.protocol.keys import key_type_of

__all__ = ["CertRequest", "ProofOfPossession", "decode_pkcs10", "from_pkcs10", "from_crmf"]


class ProofOfPossession(StrEnum):
    """How a request proves that its sender holds the private key."""

    VERIFIED = "verified"        # a signature with the key, checked (RFC 2986; RFC 4211 §4.1 POPOSigningKey)
    FAILED = "failed"            # a signature that does not verify, or no usable proof
    RA_VERIFIED = "raVerified"   # RFC 4211 §4.1: an RA vouches for it (acceptable from an RA only)


@dataclass(frozen=True)
class CertRequest:
    """What a client asks to be certified, as the CA's policy steps see it.

    ``pop`` is the proof of possession as the request carries it (RFC 7030
    §3.4: the PKCS#10 signature; RFC 4211 §4: the CRMF POPOSigningKey or
    raVerified); whether it is enough is the CA's rule.  ``fingerprint`` names the request's bytes in logs
    and the store; ``request_fingerprint`` names what is asked for (public key,
    subject, requested extensions), which stays the same when a client re-signs
    a linked request on a new connection (RFC 7030 §3.5, §4.2.3)."""

    subject: x509.Name
    san: x509.SubjectAlternativeName | None
    public_key: CertificatePublicKeyTypes
    key_type: str
    pop: ProofOfPossession
    challenge_password: bytes | None
    der: bytes
    fingerprint: str
    request_fingerprint: str
    # The PKCS#10 request itself, for the attributes only /serverkeygen reads
    # (RFC 7030 §4.4.1.1-2 DecryptKeyIdentifier); None for CRMF.
    pkcs10: x509.CertificateSigningRequest | None = None
    # The subject as RFC 4514 text and the SANs as general_names_text, when the
    # decoder already made them (PKCS#10: load_csr); None: not made yet (CRMF).
    subject_text: str | None = None
    san_names: tuple[str, ...] | None = None

    def __repr__(self) -> str:
        return f"CertRequest({self.subject.rfc4514_string()!r}, {self.key_type}, {self.fingerprint[:16]})"


def decode_pkcs10(der: bytes) -> CertRequest:
    """The request of a DER PKCS#10 body (/simpleenroll, /simplereenroll,
    /serverkeygen); BadRequest when it is not one (RFC 7030 §4.2.1)."""
    return from_pkcs10(load_csr(der))


def from_pkcs10(info: CsrInfo) -> CertRequest:
    """The request of a parsed PKCS#10 (its signature is its proof of possession)."""
    return CertRequest(subject=info.subject, san=info.san, public_key=info.public_key, key_type=info.key_type,
                       pop=ProofOfPossession.VERIFIED if info.signature_valid else ProofOfPossession.FAILED,
                       challenge_password=info.challenge_password, der=info.der,
                       fingerprint=info.fingerprint, request_fingerprint=info.request_fingerprint, pkcs10=info.csr,
                       subject_text=info.subject_text, san_names=info.san_names)


def from_crmf(crmf: CrmfRequest, der: bytes) -> CertRequest:
    """The request of a CRMF CertReqMsg (a ``crm`` of full CMC)."""
    pop = (ProofOfPossession.VERIFIED if crmf.pop == "signature" and crmf.pop_valid else
           ProofOfPossession.RA_VERIFIED if crmf.pop == "raVerified" else ProofOfPossession.FAILED)
    exts = [(x509.SubjectAlternativeName.oid, crmf.san)] if crmf.san is not None else []
    return CertRequest(subject=crmf.subject, san=crmf.san, public_key=crmf.public_key,
                       key_type=key_type_of(crmf.public_key), pop=pop, challenge_password=None,
                       der=der, fingerprint=csr_fingerprint(der),
                       request_fingerprint=request_fingerprint(crmf.public_key, crmf.subject, exts))

