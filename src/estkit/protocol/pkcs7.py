"""PKCS#7 / CMS certs-only SignedData (RFC 7030 §4.1.3, §4.2.3)."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from estkit.errors import BadRequest
from estkit.protocol.malformed import reason

__all__ = ["certs_only", "parse_certs_only"]


def certs_only(certs: Sequence[x509.Certificate]) -> bytes:
    """DER of a degenerate SignedData: no signers, no content, only ``certs``."""
    return pkcs7.serialize_certificates(list(certs), Encoding.DER)


def parse_certs_only(der: bytes) -> list[x509.Certificate]:
    """The certificates of a certs-only SignedData (CRLs, if any, are ignored)."""
    try:
        certs = pkcs7.load_der_pkcs7_certificates(der)
    except ValueError as exc:
        raise BadRequest(f"not a PKCS#7 certs-only structure: {reason(exc)}") from None
    if not certs:
        raise BadRequest("PKCS#7 structure holds no certificates")
    return list(certs)
