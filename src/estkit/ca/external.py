"""Certificates, CRLs and OCSP responses signed by a key cryptography cannot hold.

cryptography's builders sign only with its own key objects, and a token's key
never leaves the token.  So the builder signs once with a *stand-in* key of the
same algorithm (made in memory, once per process, never stored): that yields
the exact DER to-be-signed structure (TBSCertificate, TBSCertList,
ResponseData) with the right signatureAlgorithm inside and out, encoded by
cryptography.  The real key signs those TBS bytes, and asn1crypto replaces the
stand-in's signature in the outer SEQUENCE, keeping every other byte as it was
(asn1crypto re-encodes only what is changed).  Finally the result is loaded by
cryptography and its signature verified with the CA's public key, so nothing a
token got wrong is ever handed out or stored.  docs/architecture.md explains the
choice.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from collections.abc import Callable
from dataclasses import dataclass

from asn1crypto import crl as a_crl
from asn1crypto import ocsp as a_ocsp
from asn1crypto import x509 as a_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.x509 import ocsp

__all__ = ["BadSignature", "Scheme", "scheme_for", "sign_certificate", "sign_crl", "sign_ocsp", "verify_raw"]

RawSign = Callable[[bytes, "Scheme"], bytes]
"""Signs TBS bytes with the real key under a scheme: DER ECDSA-Sig-Value for EC, the RSA signature for RSA."""


class BadSignature(ValueError):
    """The outside signer's signature does not verify with the CA's public key."""


@dataclass(frozen=True)
class Scheme:
    """How a CA key signs: its hash, and for RSA whether RSASSA-PSS (RFC 4055) or PKCS#1 v1.5."""

    hash: hashes.HashAlgorithm
    pss: bool = False

    def padding(self) -> padding.PSS | padding.PKCS1v15:
        """The RSA padding: PSS with MGF1 over the same hash and a salt as long as the
        hash (RFC 4055 §3.1, the usual choice), else PKCS#1 v1.5."""
        if self.pss:
            return padding.PSS(mgf=padding.MGF1(self.hash), salt_length=self.hash.digest_size)
        return padding.PKCS1v15()


def scheme_for(public_key: CertificateIssuerPublicKeyTypes, *, pss: bool = False) -> Scheme:
    """The scheme for a CA's public key (EC P-256/P-384/P-521 or RSA)."""
    from estkit.ca.signer import hash_for
    if not isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise ValueError("a key held outside cryptography must be EC or RSA")
    h = hash_for(public_key)
    assert h is not None  # EC and RSA always sign with a hash
    return Scheme(h, pss and isinstance(public_key, rsa.RSAPublicKey))


_lock = threading.Lock()
_stand_ins: dict[str, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey] = {}


def _stand_in(public_key: CertificateIssuerPublicKeyTypes) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """An in-memory key of the same algorithm, whose signature is thrown away.
    Any RSA size serves (the signatureAlgorithm does not carry it); 2048 bits
    leave room for a PSS salt as long as SHA-512."""
    name = public_key.curve.name if isinstance(public_key, ec.EllipticCurvePublicKey) else "rsa"
    with _lock:
        key = _stand_ins.get(name)
        if key is None:
            key = (ec.generate_private_key(public_key.curve) if isinstance(public_key, ec.EllipticCurvePublicKey)
                   else rsa.generate_private_key(65537, 2048))
            _stand_ins[name] = key
        return key


def verify_raw(public_key: CertificateIssuerPublicKeyTypes, scheme: Scheme, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` over ``data`` verifies under the public key and scheme."""
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, scheme.padding(), scheme.hash)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(scheme.hash))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _checked(public_key: CertificateIssuerPublicKeyTypes, scheme: Scheme, signature: bytes, tbs: bytes) -> None:
    if not verify_raw(public_key, scheme, signature, tbs):
        # The token signed with another key or returned garbage: refuse rather than issue it.
        raise BadSignature("the token's signature does not verify with the CA certificate's public key")


def sign_certificate(builder: x509.CertificateBuilder, public_key: CertificateIssuerPublicKeyTypes,
                     scheme: Scheme, raw_sign: RawSign) -> x509.Certificate:
    """RFC 5280 §4.1: Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }."""
    draft = builder.sign(_stand_in(public_key), scheme.hash,  # type: ignore[arg-type]
                         rsa_padding=scheme.padding() if isinstance(public_key, rsa.RSAPublicKey) else None)
    tbs = draft.tbs_certificate_bytes
    sig = raw_sign(tbs, scheme)
    _checked(public_key, scheme, sig, tbs)
    doc = a_x509.Certificate.load(draft.public_bytes(serialization.Encoding.DER))
    doc["signature_value"] = sig
    return x509.load_der_x509_certificate(doc.dump())


def sign_crl(builder: x509.CertificateRevocationListBuilder, public_key: CertificateIssuerPublicKeyTypes,
             scheme: Scheme, raw_sign: RawSign) -> x509.CertificateRevocationList:
    """RFC 5280 §5.1: CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue }."""
    draft = builder.sign(_stand_in(public_key), scheme.hash,  # type: ignore[arg-type]
                         rsa_padding=scheme.padding() if isinstance(public_key, rsa.RSAPublicKey) else None)
    tbs = draft.tbs_certlist_bytes
    sig = raw_sign(tbs, scheme)
    _checked(public_key, scheme, sig, tbs)
    doc = a_crl.CertificateList.load(draft.public_bytes(serialization.Encoding.DER))
    doc["signature"] = sig
    return x509.load_der_x509_crl(doc.dump())


def _stand_in_responder(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> x509.Certificate:
    """A throwaway certificate of the stand-in key: cryptography's OCSP builder signs
    only with the key of the responder certificate it names."""
    name = x509.Name([])
    now = datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))


def sign_ocsp(builder: ocsp.OCSPResponseBuilder, public_key: CertificateIssuerPublicKeyTypes,
              scheme: Scheme, raw_sign: RawSign) -> ocsp.OCSPResponse:
    """RFC 6960 §4.2.1: BasicOCSPResponse ::= SEQUENCE { tbsResponseData, signatureAlgorithm,
    signature, certs }, inside OCSPResponse.responseBytes.  The builder has no responder ID
    yet; the response names the real key by its hash (ResponderID byKey: the SHA-1 of the
    subjectPublicKey BIT STRING, as the SubjectKeyIdentifier's method 1).  cryptography's
    OCSP builder signs RSA with PKCS#1 v1.5 only, so OCSP responses do (whatever ``scheme.pss`` says)."""
    scheme = Scheme(scheme.hash)
    stand_in = _stand_in(public_key)
    draft = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, _stand_in_responder(stand_in)).sign(
        stand_in, scheme.hash)
    outer = a_ocsp.OCSPResponse.load(draft.public_bytes(serialization.Encoding.DER))
    basic = a_ocsp.BasicOCSPResponse.load(outer["response_bytes"]["response"].parsed.dump())
    tbs_doc = basic["tbs_response_data"]
    tbs_doc["responder_id"] = a_ocsp.ResponderId(
        name="by_key", value=x509.SubjectKeyIdentifier.from_public_key(public_key).digest)
    tbs = tbs_doc.dump(force=True)
    sig = raw_sign(tbs, scheme)
    _checked(public_key, scheme, sig, tbs)
    basic["tbs_response_data"] = a_ocsp.ResponseData.load(tbs)
    basic["signature"] = sig
    out = a_ocsp.OCSPResponse({"response_status": "successful", "response_bytes": {
        "response_type": "basic_ocsp_response", "response": basic}})
    return ocsp.load_der_ocsp_response(out.dump())
