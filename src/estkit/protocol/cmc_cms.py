"""CMS SignedData with any content type (RFC 5652 §5), built with pyasn1.

cryptography's PKCS#7 builder signs only ``id-data``; CMC needs
``id-cct-PKIData`` / ``id-cct-PKIResponse`` (RFC 5272 §3.2) and the
server-generated key needs ``id-ct-KP-aKeyPackage`` (RFC 7030 §4.4.2), so the
structure is built here and only the signature primitive comes from
cryptography.  Signing takes a callback so a CA key never leaves its signer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import tag, univ, useful
from pyasn1_modules import rfc5280, rfc5652

from estkit.errors import BadRequest
from estkit.protocol import constants as c
from estkit.protocol.malformed import reason

__all__ = ["SignerId", "SignedContent", "sign_content", "parse_signed", "verify_signed", "signer_id_for",
           "key_identifier", "key_identifiers", "CmsError", "content_info", "unwrap_content_info", "raw_signer"]

_HASHES: dict[str, tuple[str, Callable[[], hashes.HashAlgorithm]]] = {
    c.OID_SHA256.dotted_string: ("sha256", hashes.SHA256),
    c.OID_SHA384.dotted_string: ("sha384", hashes.SHA384),
    c.OID_SHA512.dotted_string: ("sha512", hashes.SHA512),
}
_HASH_OID = {"sha256": c.OID_SHA256, "sha384": c.OID_SHA384, "sha512": c.OID_SHA512}
_ECDSA_OID = {"sha256": c.OID_ECDSA_SHA256, "sha384": c.OID_ECDSA_SHA384, "sha512": c.OID_ECDSA_SHA512}
_RSA_SIG = {"sha256": "1.2.840.113549.1.1.11", "sha384": "1.2.840.113549.1.1.12", "sha512": "1.2.840.113549.1.1.13"}
_ECDSA_BY_OID = {v.dotted_string: k for k, v in _ECDSA_OID.items()}
_RSA_BY_OID = {v: k for k, v in _RSA_SIG.items()}


class CmsError(BadRequest):
    """A CMS structure is malformed or its signature does not verify."""


@dataclass(frozen=True)
class SignerId:
    """Who signed: an issuer and serial number, or a subject key identifier."""

    issuer: bytes | None = None  # DER of the issuer Name
    serial: int | None = None
    ski: bytes | None = None

    def matches(self, cert: x509.Certificate) -> bool:
        """True if ``cert`` is the one this identifier names."""
        if self.ski is not None:
            return self.ski in key_identifiers(cert.public_key(), cert)
        return self.serial == cert.serial_number and self.issuer == cert.issuer.public_bytes()


@dataclass(frozen=True)
class SignedContent:
    """A parsed (not yet verified) SignedData."""

    content_type: str
    content: bytes
    certificates: tuple[x509.Certificate, ...]
    signer: SignerId | None
    digest_alg: str
    signature_alg: str
    signed_attrs: bytes | None  # DER as SET OF, what the signature covers
    signature: bytes


def key_identifier(public_key: CertificatePublicKeyTypes) -> bytes:
    """RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits."""
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest


def key_identifiers(public_key: CertificatePublicKeyTypes, cert: x509.Certificate | None = None) -> set[bytes]:
    """Every identifier a peer may use for this key: the computed one and the certificate's SKI."""
    out = {key_identifier(public_key)}
    if cert is not None:
        try:
            out.add(cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest)
        except x509.ExtensionNotFound:
            pass
    return out


def signer_id_for(cert: x509.Certificate | None, public_key: CertificatePublicKeyTypes) -> SignerId:
    """issuerAndSerialNumber for a certificate, else the key's subjectKeyIdentifier
    (RFC 5272 §3.2.1.3.1: an initial request is signed by the key being certified)."""
    if cert is not None:
        return SignerId(issuer=cert.issuer.public_bytes(), serial=cert.serial_number)
    return SignerId(ski=key_identifier(public_key))


def _hash_name(public_key: CertificatePublicKeyTypes) -> str:
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "sha512"  # RFC 8419 §3: Ed25519 with SHA-512 message digests
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {521: "sha512", 384: "sha384"}.get(public_key.curve.key_size, "sha256")
    return "sha256"


def raw_signer(key: CertificateIssuerPrivateKeyTypes) -> Callable[[bytes], bytes]:
    """The ``sign`` callback :func:`sign_content` wants, for a private key held here
    (the hash matches what :func:`sign_content` declares for the key)."""
    hname = _hash_name(key.public_key())
    h = _HASHES[_HASH_OID[hname].dotted_string][1]()

    def sign(data: bytes) -> bytes:
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), h)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(h))
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        raise CmsError(f"unsupported signing key type {type(key).__name__}")
    return sign


def _alg(oid: str, null_params: bool = False) -> rfc5280.AlgorithmIdentifier:
    a = rfc5280.AlgorithmIdentifier()
    a["algorithm"] = univ.ObjectIdentifier(oid)
    if null_params:
        a["parameters"] = univ.Any(encoder.encode(univ.Null()))
    return a


def _sig_alg(public_key: CertificatePublicKeyTypes, hname: str) -> rfc5280.AlgorithmIdentifier:
    if isinstance(public_key, rsa.RSAPublicKey):
        return _alg(_RSA_SIG[hname], null_params=True)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return _alg(_ECDSA_OID[hname].dotted_string)
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return _alg(c.OID_ED25519.dotted_string)
    raise CmsError(f"unsupported signing key type {type(public_key).__name__}")


def _attr(oid: str, value: object) -> rfc5652.Attribute:
    a = rfc5652.Attribute()
    a["attrType"] = univ.ObjectIdentifier(oid)
    a["attrValues"][0] = univ.Any(encoder.encode(value))
    return a


def content_info(content_type: str, content_der: bytes) -> bytes:
    """DER of ``ContentInfo { contentType, [0] EXPLICIT content }``."""
    ci = rfc5652.ContentInfo()
    ci["contentType"] = univ.ObjectIdentifier(content_type)
    ci["content"] = univ.Any(content_der)
    return bytes(encoder.encode(ci))


def unwrap_content_info(der: bytes, expected: str | None = None) -> tuple[str, bytes]:
    """``(contentType, content DER)`` of a ContentInfo; CmsError if it is not one."""
    try:
        ci, rest = decoder.decode(der, asn1Spec=rfc5652.ContentInfo())
    except PyAsn1Error as exc:
        raise CmsError(f"not a CMS ContentInfo: {_first_line(exc)}") from None
    if rest:
        raise CmsError("trailing data after the CMS ContentInfo")
    ctype = str(ci["contentType"])
    if expected is not None and ctype != expected:
        raise CmsError(f"CMS content type is {ctype}, expected {expected}")
    return ctype, bytes(ci["content"])


def sign_content(content_type: str, content: bytes, *, sign: Callable[[bytes], bytes],
                 public_key: CertificatePublicKeyTypes, signer_cert: x509.Certificate | None = None,
                 certificates: Sequence[x509.Certificate] = (), signing_time: datetime | None = None) -> bytes:
    """DER ContentInfo of a SignedData over ``content`` (RFC 5652 §5) with the
    signed attributes contentType, messageDigest and signingTime.

    ``sign`` returns a raw signature over its argument with ``public_key``'s
    private half (SHA-256/384/512 as fits the key, PKCS#1 v1.5 for RSA)."""
    hname = _hash_name(public_key)
    digest = hashlib.new(hname, content).digest()
    sid = signer_id_for(signer_cert, public_key)
    when = (signing_time or datetime.now(UTC)).strftime("%y%m%d%H%M%SZ")

    attrs = rfc5652.SignedAttributes().subtype(implicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatConstructed, 0))
    attrs[0] = _attr(c.OID_ATTR_CONTENT_TYPE.dotted_string, univ.ObjectIdentifier(content_type))
    attrs[1] = _attr(c.OID_ATTR_MESSAGE_DIGEST.dotted_string, univ.OctetString(digest))
    attrs[2] = _attr(c.OID_ATTR_SIGNING_TIME.dotted_string, useful.UTCTime(when))
    # RFC 5652 §5.4: the signature covers the attributes DER-encoded as a SET OF.
    to_sign = b"\x31" + encoder.encode(attrs)[1:]

    si = rfc5652.SignerInfo()
    sid_choice = si["sid"]
    if sid.ski is not None:
        si["version"] = 3
        sid_choice["subjectKeyIdentifier"] = rfc5652.SubjectKeyIdentifier(sid.ski).subtype(
            implicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatSimple, 0))
    else:
        si["version"] = 1
        ias = sid_choice["issuerAndSerialNumber"]
        ias["issuer"] = decoder.decode(sid.issuer or b"", asn1Spec=rfc5280.Name())[0]
        ias["serialNumber"] = sid.serial
    si["digestAlgorithm"] = _alg(_HASH_OID[hname].dotted_string)
    si["signedAttrs"] = attrs
    si["signatureAlgorithm"] = _sig_alg(public_key, hname)
    si["signature"] = sign(to_sign)

    sd = rfc5652.SignedData()
    # RFC 5652 §5.1: version 3 when the content is not id-data or a signer uses a SKI.
    sd["version"] = 3 if (content_type != c.OID_DATA.dotted_string or sid.ski is not None) else 1
    sd["digestAlgorithms"][0] = _alg(_HASH_OID[hname].dotted_string)
    sd["encapContentInfo"]["eContentType"] = univ.ObjectIdentifier(content_type)
    sd["encapContentInfo"]["eContent"] = univ.OctetString(content).subtype(
        explicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatSimple, 0))
    for i, cert in enumerate(certificates):
        choice = sd["certificates"][i]
        choice["certificate"] = decoder.decode(cert.public_bytes(Encoding.DER), asn1Spec=rfc5280.Certificate())[0]
    sd["signerInfos"][0] = si
    return content_info(c.OID_SIGNED_DATA.dotted_string, encoder.encode(sd))


def parse_signed(der: bytes, *, expected_type: str | None = None) -> SignedContent:
    """Parse a ContentInfo holding a SignedData with exactly one signer.
    Raises CmsError on anything malformed (the signature is not checked here)."""
    try:
        return _parse_signed(der, expected_type)
    except CmsError:
        raise
    except (PyAsn1Error, ValueError, TypeError, IndexError, KeyError) as exc:
        # pyasn1 decodes lazily: an absent or mistyped component inside a
        # structure that decoded fails only when read (Empty substrate,
        # operation on a schema object).
        raise CmsError(f"malformed CMS SignedData: {_first_line(exc)}") from None


def _parse_signed(der: bytes, expected_type: str | None) -> SignedContent:
    _ctype, inner = unwrap_content_info(der, c.OID_SIGNED_DATA.dotted_string)
    try:
        sd, _ = decoder.decode(inner, asn1Spec=rfc5652.SignedData())
    except PyAsn1Error as exc:
        raise CmsError(f"not a CMS SignedData: {_first_line(exc)}") from None
    eci = sd["encapContentInfo"]
    ctype = str(eci["eContentType"])
    if expected_type is not None and ctype != expected_type:
        raise CmsError(f"SignedData carries {ctype}, expected {expected_type}")
    if not eci["eContent"].isValue:
        raise CmsError("SignedData has no encapsulated content")
    content = bytes(eci["eContent"])
    certs: list[x509.Certificate] = []
    if sd["certificates"].isValue:
        for choice in sd["certificates"]:
            if choice.getName() == "certificate":
                try:
                    certs.append(x509.load_der_x509_certificate(encoder.encode(choice["certificate"])))
                except ValueError as exc:
                    raise CmsError(f"unreadable certificate in SignedData: {_first_line(exc)}") from None
    if len(sd["signerInfos"]) != 1:
        raise CmsError(f"SignedData must have exactly one signer, has {len(sd['signerInfos'])}")
    si = sd["signerInfos"][0]
    sid = si["sid"]
    if sid.getName() == "subjectKeyIdentifier":
        signer = SignerId(ski=bytes(sid["subjectKeyIdentifier"]))
    else:
        ias = sid["issuerAndSerialNumber"]
        signer = SignerId(issuer=encoder.encode(ias["issuer"]), serial=int(ias["serialNumber"]))
    signed_attrs = None
    if si["signedAttrs"].isValue:
        signed_attrs = b"\x31" + encoder.encode(si["signedAttrs"])[1:]
        _check_attrs(si["signedAttrs"], ctype, content, str(si["digestAlgorithm"]["algorithm"]))
    return SignedContent(content_type=ctype, content=content, certificates=tuple(certs), signer=signer,
                         digest_alg=str(si["digestAlgorithm"]["algorithm"]),
                         signature_alg=str(si["signatureAlgorithm"]["algorithm"]),
                         signed_attrs=signed_attrs, signature=bytes(si["signature"]))


def _check_attrs(attrs: rfc5652.SignedAttributes, ctype: str, content: bytes, digest_oid: str) -> None:
    got: dict[str, bytes] = {str(a["attrType"]): bytes(a["attrValues"][0]) for a in attrs}
    # RFC 5652 §5.3: with signed attributes, contentType and messageDigest MUST be present.
    ct = got.get(c.OID_ATTR_CONTENT_TYPE.dotted_string)
    md = got.get(c.OID_ATTR_MESSAGE_DIGEST.dotted_string)
    if ct is None or md is None:
        raise CmsError("SignedData signed attributes lack contentType or messageDigest")
    if str(decoder.decode(ct, asn1Spec=univ.ObjectIdentifier())[0]) != ctype:
        raise CmsError("the contentType signed attribute does not match the content")
    hname = _HASHES.get(digest_oid)
    if hname is None:
        raise CmsError(f"unsupported digest algorithm {digest_oid}")
    if bytes(decoder.decode(md, asn1Spec=univ.OctetString())[0]) != hashlib.new(hname[0], content).digest():
        raise CmsError("the messageDigest signed attribute does not match the content")


def verify_signed(sc: SignedContent, public_key: CertificatePublicKeyTypes) -> bool:
    """True if the SignedData's one signature verifies with ``public_key``."""
    data = sc.signed_attrs if sc.signed_attrs is not None else sc.content
    hname = _HASHES.get(sc.digest_alg, ("sha256", hashes.SHA256))[1]()
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            h = _RSA_BY_OID.get(sc.signature_alg)
            algo = _HASHES[_HASH_OID[h].dotted_string][1]() if h else hname
            public_key.verify(sc.signature, data, padding.PKCS1v15(), algo)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            h = _ECDSA_BY_OID.get(sc.signature_alg)
            algo = _HASHES[_HASH_OID[h].dotted_string][1]() if h else hname
            public_key.verify(sc.signature, data, ec.ECDSA(algo))
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(sc.signature, data)
        else:
            return False
    except (InvalidSignature, ValueError, KeyError):
        return False
    return True


def _first_line(exc: BaseException) -> str:
    return reason(exc)
