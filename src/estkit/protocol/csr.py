"""PKCS#10 certification requests: load, check, build (RFC 2986, RFC 7030 §4.2)."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.types import (CertificateIssuerPrivateKeyTypes,
                                                               CertificatePublicKeyTypes)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from estkit.errors import BadRequest
from estkit.protocol.asn1strings import OCTET_STRING, PRINTABLE_STRING
from estkit.protocol.constants import OID_CHALLENGE_PASSWORD
from estkit.protocol.keys import key_type_of
from estkit.protocol.malformed import reason

__all__ = ["CsrInfo", "load_csr", "build_csr", "general_names_text", "csr_fingerprint", "request_fingerprint"]


@dataclass(frozen=True)
class CsrInfo:
    """A parsed PKCS#10 request and the facts policy looks at, all read once
    by :func:`load_csr` (each access to the underlying request would parse its
    DER again, and a malformed part must fail there, as a 400).

    ``request_fingerprint`` is SHA-256 of what the request asks for (public
    key, subject, requested extensions), without its attributes or signature:
    RFC 7030 §3.5 and §4.2.3, a client retrying a held request on a new TLS
    connection rebuilds a linked CSR with that connection's tls-unique, so the
    CSR's bytes change while the request stays the same."""

    csr: x509.CertificateSigningRequest
    der: bytes
    key_type: str
    signature_valid: bool
    challenge_password: bytes | None
    subject: x509.Name
    san: x509.SubjectAlternativeName | None
    public_key: CertificatePublicKeyTypes
    fingerprint: str
    request_fingerprint: str
    # The subject as RFC 4514 text and the SANs as general_names_text: decoded here
    # (a malformed value is a 400 here), and what the CA records, not computed twice.
    subject_text: str = ""
    san_names: tuple[str, ...] = ()


def request_fingerprint(public_key: CertificatePublicKeyTypes, subject: x509.Name,
                        extensions: Iterable[tuple[x509.ObjectIdentifier, x509.ExtensionType]]) -> str:
    """SHA-256 over a request's public key, subject and requested extensions,
    hex (PKCS#10 and CRMF alike: estkit.protocol.request)."""
    h = hashlib.sha256()
    for part in (public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo), subject.public_bytes(),
                 *(oid.dotted_string.encode() + value.public_bytes() for oid, value in extensions)):
        h.update(len(part).to_bytes(4, "big") + part)
    return h.hexdigest()


def csr_fingerprint(der: bytes) -> str:
    """SHA-256 of a request's DER, hex: how a request is named in logs and the store."""
    return hashlib.sha256(der).hexdigest()


# What cryptography raises for malformed or unsupported input: ValueError
# (bad DER, bad names), TypeError (a name attribute of the wrong string type),
# InvalidVersion (an Exception of its own: a `version` other than 0) and
# UnsupportedAlgorithm (a key type or curve it does not know, explicit EC
# parameters that are not a named curve), DuplicateExtension (RFC 5280
# §4.2: an extension at most once) and UnsupportedGeneralNameType.
_MALFORMED = (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm, x509.DuplicateExtension,
              x509.UnsupportedGeneralNameType)


def load_csr(der: bytes) -> CsrInfo:
    """Parse a DER PKCS#10 request.  The signature is checked and reported in
    ``signature_valid`` (the caller decides: /serverkeygen ignores it, RFC 7030
    §4.4.1).  Malformed input raises BadRequest.

    Everything policy later reads (subject, SANs, public key, the request
    fingerprint) is parsed here, so a malformed part is a 400 here and never a
    failure further on."""
    try:
        csr = x509.load_der_x509_csr(der)
    except _MALFORMED as exc:
        raise BadRequest(f"not a PKCS#10 certification request: {_short(exc)}") from None
    try:
        key = csr.public_key()
    except _MALFORMED as exc:
        raise BadRequest(f"unsupported public key in the request: {_short(exc)}") from None
    try:
        valid = csr.is_signature_valid
    except Exception:  # an unsupported algorithm is an invalid signature to us
        valid = False
    try:
        # The first challengePassword, as Attributes.get_attribute_for_oid finds it,
        # without the AttributeNotFound it raises for the usual request that has none.
        challenge: bytes | None = next((a.value for a in csr.attributes if a.oid == OID_CHALLENGE_PASSWORD), None)
    except _MALFORMED as exc:
        raise BadRequest(f"malformed request attributes: {_short(exc)}") from None
    try:
        subject = csr.subject
        subject_text = subject.rfc4514_string()  # decodes every attribute value
        try:
            san: x509.SubjectAlternativeName | None = csr.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        san_names = tuple(general_names_text(san))
        wanted = request_fingerprint(key, subject, ((ext.oid, ext.value) for ext in csr.extensions))
    except _MALFORMED as exc:
        raise BadRequest(f"malformed subject or extensions in the request: {_short(exc)}") from None
    info = CsrInfo(csr=csr, der=der, key_type=key_type_of(key), signature_valid=valid, challenge_password=challenge,
                   subject=subject, san=san, public_key=key, fingerprint=csr_fingerprint(der),
                   request_fingerprint=wanted, subject_text=subject_text, san_names=san_names)
    return info


def build_csr(
    key: CertificateIssuerPrivateKeyTypes,
    *,
    subject: x509.Name | None = None,
    cn: str | None = None,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    challenge_password: str | None = None,
    extra_attributes: Sequence[tuple[x509.ObjectIdentifier, bytes]] = (),
    octet_attributes: Sequence[tuple[x509.ObjectIdentifier, bytes]] = (),
) -> bytes:
    """DER of a PKCS#10 request signed by ``key``.  ``challenge_password`` is
    encoded as a PrintableString (RFC 7030 Appendix A.3); ``octet_attributes``
    as OCTET STRINGs (the key identifiers of RFC 7030 §4.4.1.1 and §4.4.1.2)."""
    name = subject if subject is not None else x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    gns: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    gns += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if gns:
        builder = builder.add_extension(x509.SubjectAlternativeName(gns), critical=False)
    if challenge_password is not None:
        builder = builder.add_attribute(OID_CHALLENGE_PASSWORD, challenge_password.encode(),
                                        _tag=PRINTABLE_STRING)
    for oid, value in extra_attributes:
        builder = builder.add_attribute(oid, value)
    for oid, value in octet_attributes:
        builder = builder.add_attribute(oid, value, _tag=OCTET_STRING)
    algo = None if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()
    return builder.sign(key, algo).public_bytes(Encoding.DER)


def general_names_text(san: x509.SubjectAlternativeName | None) -> list[str]:
    """SAN entries as ``DNS:x``, ``IP:x``, ``email:x``, ``URI:x`` strings, sorted."""
    if san is None:
        return []
    out: list[str] = []
    for gn in san:
        if isinstance(gn, x509.DNSName):
            out.append(f"DNS:{gn.value}")
        elif isinstance(gn, x509.IPAddress):
            out.append(f"IP:{gn.value}")
        elif isinstance(gn, x509.RFC822Name):
            out.append(f"email:{gn.value}")
        elif isinstance(gn, x509.UniformResourceIdentifier):
            out.append(f"URI:{gn.value}")
        elif isinstance(gn, x509.DirectoryName):
            out.append(f"dirName:{gn.value.rfc4514_string()}")
        else:
            out.append(f"other:{gn.value!r}")
    return sorted(out)


def _short(exc: BaseException) -> str:
    return reason(exc)


