"""What to ask for: a CSR the client builds (and can link, RFC 7030 §3.5) or
one the caller brings."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from estkit.errors import BadRequest
from estkit.protocol.constants import OID_ASYMM_DECRYPT_KEY_ID
from estkit.protocol.csr import build_csr
from estkit.protocol.framing import decode_b64

__all__ = ["CsrSpec", "CsrInput", "load_csr_input", "spec_from_certificate"]


@dataclass(frozen=True)
class CsrSpec:
    """The subject and SANs of a request the client signs with ``key`` (a key
    following /csrattrs is generated when it is None).  Signing happens per
    connection, so a linked request carries that connection's tls-unique."""

    key: CertificateIssuerPrivateKeyTypes | None = None
    cn: str | None = None
    subject: x509.Name | None = None
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()

    def build(self, key: CertificateIssuerPrivateKeyTypes, tls_unique: bytes | None = None, *,
              decrypt_key_id: bytes | None = None) -> bytes:
        """DER PKCS#10; with ``tls_unique`` its challengePassword is base64(tls-unique)
        (RFC 7030 §3.5); with ``decrypt_key_id`` an AsymmetricDecryptKeyIdentifier (§4.4.1.2)."""
        return build_csr(key, subject=self.subject, cn=self.cn, dns=self.dns, ips=self.ips,
                         challenge_password=base64.b64encode(tls_unique).decode() if tls_unique else None,
                         octet_attributes=[(OID_ASYMM_DECRYPT_KEY_ID, decrypt_key_id)] if decrypt_key_id else [])


CsrInput = CsrSpec | x509.CertificateSigningRequest | bytes


def load_csr_input(data: bytes) -> x509.CertificateSigningRequest:
    """A CSR given as DER, PEM or base64."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data if data[:1] == b"\x30" else decode_b64(data, "CSR"))
    except (ValueError, BadRequest) as exc:
        raise ValueError(f"not a PKCS#10 request: {exc}") from None


def spec_from_certificate(cert: x509.Certificate, key: CertificateIssuerPrivateKeyTypes | None = None) -> CsrSpec:
    """A request with the subject and DNS/IP SANs of ``cert``, for re-enrollment
    (RFC 7030 §4.2.2: subject and subjectAltName must not change)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(i) for i in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    return CsrSpec(key=key, subject=cert.subject, dns=dns, ips=ips)
