"""Issuance profiles: what a CA label issues.  One per label, from the config."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from estkit.protocol.constants import OID_KP_CMC_RA

__all__ = ["Profile", "KEY_USAGE_NAMES", "EKU_NAMES", "eku_oid", "key_usage_extension", "DIGEST_ALGORITHMS"]

# RFC 7616 §3.1 algorithms offered for HTTP Digest (strongest first).
DIGEST_ALGORITHMS = ("SHA-256", "MD5")

KEY_USAGE_NAMES = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                   "key_agreement", "key_cert_sign", "crl_sign")

EKU_NAMES: dict[str, ObjectIdentifier] = {
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timeStamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "OCSPSigning": ExtendedKeyUsageOID.OCSP_SIGNING,
    "ipsecIKE": ExtendedKeyUsageOID.IPSEC_IKE,
    "cmcRA": OID_KP_CMC_RA,
}


def eku_oid(name: str) -> ObjectIdentifier:
    """An EKU by name (``clientAuth``) or dotted OID."""
    if name in EKU_NAMES:
        return EKU_NAMES[name]
    try:
        return ObjectIdentifier(name)
    except ValueError:
        raise ValueError(f"unknown extended key usage {name!r}") from None


def key_usage_extension(names: tuple[str, ...]) -> x509.KeyUsage:
    """A KeyUsage extension with the named bits set."""
    for n in names:
        if n not in KEY_USAGE_NAMES:
            raise ValueError(f"unknown key usage {n!r} (one of {', '.join(KEY_USAGE_NAMES)})")
    flags = {n: n in names for n in KEY_USAGE_NAMES}
    return x509.KeyUsage(encipher_only=False, decipher_only=False, **flags)


@dataclass(frozen=True)
class Profile:
    """What one CA label issues and how it treats requests."""

    label: str
    ca: str
    validity_days: int = 365
    key_usage: tuple[str, ...] = ("digital_signature",)
    extended_key_usage: tuple[str, ...] = ("clientAuth",)
    honour_san: bool = True
    allowed_key_types: tuple[str, ...] = ("ec:P-256", "ec:P-384", "rsa:2048", "rsa:3072", "rsa:4096",
                                          "ed25519")
    require_linking: bool = False
    # Registration authorities (id-kp-cmcRA) may be exempt from linking (RFC 7030 §3.7).
    ra_waives_linking: bool = False
    serverkeygen: bool = False
    serverkeygen_key_type: str | None = None
    serverkeygen_encrypt: bool = False
    manual_approval: bool = False
    pending_retry_after: int = 60
    pending_expiry_hours: int = 72
    crl_url: str | None = None
    # The OCSP responder's URL, put in issued certificates' Authority Information
    # Access (RFC 5280 §4.2.2.1, RFC 6960 Appendix A), e.g. "http://HOST:PORT/ocsp".
    ocsp_url: str | None = None
    # identityProofV2 shared secrets (RFC 5272 §6.2): a file of "identification:secret"
    # lines ("":secret for requests without identification), relative to DIR.
    cmc_secrets_file: str | None = None
    # RFC 7616 HTTP Digest offered on this label besides Basic, e.g. ["SHA-256", "MD5"] (off when empty).
    digest_auth: tuple[str, ...] = ()
    # A renewal revokes the certificate it renews (reason superseded) once the new one is recorded.
    revoke_superseded: bool = False

    @property
    def issues_ra(self) -> bool:
        """Its certificates make their holders registration authorities
        (id-kp-cmcRA, RFC 7030 §3.7): only identities a policy lists it for may use it."""
        return any(eku_oid(e) == OID_KP_CMC_RA for e in self.extended_key_usage)
