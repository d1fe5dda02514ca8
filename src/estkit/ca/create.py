"""Creating CA certificates and the server's TLS certificate (``estkit init``)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from estkit.ca.signer import Signer

__all__ = ["make_ca_certificate", "make_tls_certificate", "ca_name"]


def ca_name(common_name: str, organization: str | None = None) -> x509.Name:
    """A CA's distinguished name."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def make_ca_certificate(subject: x509.Name, public_key: CertificateIssuerPublicKeyTypes, signer: Signer, *,
                        issuer: x509.Certificate | None = None, days: int = 3650,
                        path_length: int | None = None) -> x509.Certificate:
    """A CA certificate: self-signed root when ``issuer`` is None, else an
    intermediate signed by ``signer`` (the issuer's key)."""
    now = datetime.now(UTC)
    not_after = now + timedelta(days=days)
    if issuer is not None and not_after > issuer.not_valid_after_utc:
        not_after = issuer.not_valid_after_utc
    b = (x509.CertificateBuilder()
         .subject_name(subject)
         .issuer_name(issuer.subject if issuer is not None else subject)
         .public_key(public_key)
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - timedelta(minutes=5))
         .not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                      crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    aki_key = issuer.public_key() if issuer is not None else public_key
    b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(aki_key), critical=False)  # type: ignore[arg-type]
    return signer.sign_certificate(b)


def make_tls_certificate(key: CertificateIssuerPrivateKeyTypes, issuer: x509.Certificate, signer: Signer,
                         hostnames: Sequence[str], *, days: int = 825, crl_url: str | None = None,
                         ocsp_url: str | None = None, now: datetime | None = None) -> x509.Certificate:
    """The EST server's TLS certificate: serverAuth, names as DNS or IP SANs,
    and where its revocation status is published when given (RFC 5280 §4.2.1.13, §4.2.2.1);
    valid from ``now`` (default: the clock's now)."""
    now = now or datetime.now(UTC)
    sans: list[x509.GeneralName] = []
    for h in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    not_after = min(now + timedelta(days=days), issuer.not_valid_after_utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
         .issuer_name(issuer.subject)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - timedelta(minutes=5))
         .not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                      crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
         .add_extension(x509.SubjectAlternativeName(sans), critical=False)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
                        critical=False))
    if crl_url:
        b = b.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url)], relative_name=None, reasons=None,
            crl_issuer=None)]), critical=False)
    if ocsp_url:
        b = b.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))]), critical=False)
    return signer.sign_certificate(b)
