"""CRMF certificate requests inside CMC (``crm [1]``, RFC 4211, RFC 5272 §3.2.1.2.2).

Encoded and read as plain DER: the pyasn1-modules CertTemplate marks
``subject [5] Name`` IMPLICIT although Name is a CHOICE (X.680 makes that tag
EXPLICIT), so the wire form is spelled out here and checked both ways.

A CertReqMsg here carries a template with subject and publicKey (and
optionally a subjectAltName extension) and a POPOSigningKey whose signature
covers the DER of ``certReq`` (RFC 4211 §4.1, poposkInput absent).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, CertificatePublicKeyTypes
from cryptography.x509.oid import ExtensionOID
from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ

from estkit.protocol import constants as c
from estkit.protocol.asn1strings import string_type
from estkit.protocol.cmc import CmcError, read_tlvs
from estkit.protocol.der import der_tlv
from estkit.protocol.malformed import reason

__all__ = ["CrmfRequest", "build_crmf", "parse_crmf", "name_from_der"]

_SIG_OIDS = {"rsa": c.OID_SHA256_RSA.dotted_string, "ec": c.OID_ECDSA_SHA256.dotted_string,
             "ed25519": c.OID_ED25519.dotted_string}
_STRING_CODECS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x14: "latin-1", 0x1A: "ascii",
                  0x1E: "utf-16-be", 0x1C: "utf-32-be", 0x12: "ascii"}


@dataclass(frozen=True)
class CrmfRequest:
    """What the CA needs from a CertReqMsg."""

    cert_req_id: int
    subject: x509.Name
    public_key: CertificatePublicKeyTypes
    san: x509.SubjectAlternativeName | None
    pop: str  # "signature" (verified below), "raVerified" or "none"
    pop_valid: bool


def _sign(key: CertificateIssuerPrivateKeyTypes, data: bytes) -> tuple[str, bytes]:
    if isinstance(key, rsa.RSAPrivateKey):
        return _SIG_OIDS["rsa"], key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return _SIG_OIDS["ec"], key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return _SIG_OIDS["ed25519"], key.sign(data)
    raise ValueError(f"unsupported key type {type(key).__name__}")


def _alg_der(oid: str) -> bytes:
    return der_tlv(0x30, encoder.encode(univ.ObjectIdentifier(oid)))


def build_crmf(key: CertificateIssuerPrivateKeyTypes, *, cert_req_id: int, subject: x509.Name,
               dns: Sequence[str] = ()) -> bytes:
    """DER of a CertReqMsg for ``key`` with a signature proof of possession."""
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    template = der_tlv(0xA5, subject.public_bytes()) + der_tlv(0xA6, read_tlvs(spki)[0][1])
    if dns:
        san = x509.SubjectAlternativeName([x509.DNSName(d) for d in dns])
        ext = der_tlv(0x30, encoder.encode(univ.ObjectIdentifier(ExtensionOID.SUBJECT_ALTERNATIVE_NAME.dotted_string))
                   + der_tlv(0x04, san.public_bytes()))
        template += der_tlv(0xA9, ext)
    cert_req = der_tlv(0x30, encoder.encode(univ.Integer(cert_req_id)) + der_tlv(0x30, template))
    alg, sig = _sign(key, cert_req)
    popo = der_tlv(0xA1, _alg_der(alg) + der_tlv(0x03, b"\x00" + sig))
    return der_tlv(0x30, cert_req + popo)


def name_from_der(der: bytes) -> x509.Name:
    """An ``x509.Name`` from its DER, keeping each value's string type."""
    top = read_tlvs(der)
    if len(top) != 1 or top[0][0] != 0x30:
        raise CmcError("malformed Name")
    rdns: list[x509.RelativeDistinguishedName] = []
    for tag, rdn, _w in read_tlvs(top[0][1]):
        if tag != 0x31:
            raise CmcError("malformed RelativeDistinguishedName")
        attrs: list[x509.NameAttribute[str]] = []
        for _t, atv, _w2 in read_tlvs(rdn):
            parts = read_tlvs(atv)
            if len(parts) != 2 or parts[0][0] != 0x06:
                raise CmcError("malformed AttributeTypeAndValue")
            oid = str(decoder.decode(parts[0][2], asn1Spec=univ.ObjectIdentifier())[0])
            vtag, value, _w3 = parts[1]
            codec = _STRING_CODECS.get(vtag)
            if codec is None:
                raise CmcError(f"unsupported string type {vtag:#x} in a Name")
            try:
                text = value.decode(codec)
            except UnicodeDecodeError:
                raise CmcError("undecodable string in a Name") from None
            attrs.append(x509.NameAttribute(x509.ObjectIdentifier(oid), text, _type=string_type(vtag)))
        if not attrs:
            raise CmcError("empty RelativeDistinguishedName")
        rdns.append(x509.RelativeDistinguishedName(attrs))
    return x509.Name(rdns)


def _general_names(der: bytes) -> x509.SubjectAlternativeName:
    out: list[x509.GeneralName] = []
    top = read_tlvs(der)
    if len(top) != 1 or top[0][0] != 0x30:
        raise CmcError("malformed subjectAltName")
    for tag, value, _w in read_tlvs(top[0][1]):
        if tag == 0x82:
            out.append(x509.DNSName(value.decode("ascii")))
        elif tag == 0x81:
            out.append(x509.RFC822Name(value.decode("ascii")))
        elif tag == 0x86:
            out.append(x509.UniformResourceIdentifier(value.decode("ascii")))
        elif tag == 0x87:
            out.append(x509.IPAddress(ipaddress.ip_address(value)))
        else:
            raise CmcError(f"unsupported subjectAltName entry (tag {tag:#x})")
    return x509.SubjectAlternativeName(out)


def parse_crmf(der: bytes) -> CrmfRequest:
    """Read a CertReqMsg; the POP signature is verified (``pop_valid``).
    Raises CmcError when it is malformed or lacks subject or publicKey."""
    try:
        msg = read_tlvs(der)
        if len(msg) != 1 or msg[0][0] != 0x30:
            raise CmcError("CertReqMsg is not a SEQUENCE")
        parts = read_tlvs(msg[0][1])
        cert_req_tag, cert_req_body, cert_req_der = parts[0]
        req_parts = read_tlvs(cert_req_body)
        if cert_req_tag != 0x30 or len(req_parts) < 2 or req_parts[0][0] != 0x02:
            raise CmcError("malformed CertRequest")
        cert_req_id = int.from_bytes(req_parts[0][1], "big", signed=True)
        fields = {t: (body, whole) for t, body, whole in read_tlvs(req_parts[1][1])}
        if 0xA5 not in fields or 0xA6 not in fields:
            raise CmcError("the CRMF certTemplate must carry subject and publicKey (RFC 5272 §3.2.1.2.2)")
        subject = name_from_der(fields[0xA5][0])
        public_key = serialization.load_der_public_key(der_tlv(0x30, fields[0xA6][0]))
        san = None
        if 0xA9 in fields:
            for _t, ext, _w in read_tlvs(fields[0xA9][0]):
                ext_parts = read_tlvs(ext)
                oid = str(decoder.decode(ext_parts[0][2], asn1Spec=univ.ObjectIdentifier())[0])
                if oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME.dotted_string:
                    san = _general_names(ext_parts[-1][1])
        pop, valid = "none", False
        if len(parts) > 1:
            ptag, pbody, _pw = parts[1]
            if ptag == 0x80:
                pop = "raVerified"
            elif ptag == 0xA1:
                pop = "signature"
                pp = read_tlvs(pbody)
                if pp[0][0] == 0xA0:
                    raise CmcError("POPOSigningKey with poposkInput is not supported (use the certReq form)")
                alg = str(decoder.decode(read_tlvs(pp[0][1])[0][2], asn1Spec=univ.ObjectIdentifier())[0])
                sig = pp[1][1][1:]
                valid = _verify(public_key, alg, sig, cert_req_der)
            else:
                pop = f"unsupported({ptag:#x})"
    except (IndexError, ValueError, PyAsn1Error, UnsupportedAlgorithm) as exc:
        if isinstance(exc, CmcError):
            raise
        raise CmcError(f"malformed CertReqMsg: {reason(exc)}") \
            from None
    return CrmfRequest(cert_req_id=cert_req_id, subject=subject, public_key=public_key,  # type: ignore[arg-type]
                       san=san, pop=pop, pop_valid=valid)


def _verify(key: object, alg: str, sig: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, rsa.RSAPublicKey) and alg == _SIG_OIDS["rsa"]:
            key.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePublicKey) and alg in (c.OID_ECDSA_SHA256.dotted_string,
                                                                     c.OID_ECDSA_SHA384.dotted_string):
            h = hashes.SHA256() if alg == c.OID_ECDSA_SHA256.dotted_string else hashes.SHA384()
            key.verify(sig, data, ec.ECDSA(h))
        elif isinstance(key, ed25519.Ed25519PublicKey) and alg == _SIG_OIDS["ed25519"]:
            key.verify(sig, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True
